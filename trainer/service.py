"""`guardstream trainer`: audit labels in, a data set in object storage, jobs on a schedule and on new labels.

Built on faust-streaming: an agent consumes `moderation.audit.labels` with a no-ack stream, and timers
flush shards and run the scheduled jobs. The agent resolves each label by seeking (`trainer/resolve.py`)
and holds it, unacknowledged, until the shard that stores it is durable (`trainer/dataset.py`); only then
are the labels acknowledged, and faust commits acknowledged offsets. A crash before that re-reads them;
the data set's dedup by event id absorbs the repeat. Faust's tables, its web server and `exactly_once`
are not used (the local broker restores tables wrongly and has no idempotent producer), and the folder faust
makes anyway lies under the data directory (`TrainerSettings.state_dir`), never the working directory; /healthz,
/metrics and /status come from the health server every service shares.

While shards cannot be written (storage down), the agent stops consuming at `2 × shard_max_examples`
waiting labels and retries the write with a backoff: labels wait on the topic, nothing is dropped.
Each label ends as an example or a counted skip (`trainer/collect.py`), so no label stops the agent; should
the agent crash anyway, faust restarts it and readiness says so until the trainer is restarted.
Jobs run one at a time, away from the agent; a trigger that comes while one runs is folded into it.
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from datetime import UTC, datetime
from typing import Any

import structlog

from runtime.backoff import backoff_s
from runtime.dependency_state import watch_brokers
from runtime.health import HealthServer
from schemas.events import SourceRef
from topics.clients import client_options
from topics.records import RecordReader
from topics.registry import TopicNames
from trainer.collect import LabelCollector
from trainer.dataset import AuditExample, DataSet
from trainer.metrics import TrainerMetrics
from trainer.pipeline import RunRecord, run_job
from trainer.resolve import Resolver
from trainer.settings import TrainerSettings

log = structlog.get_logger("guardstream.trainer")

RUNS_KEPT = 50
BACKOFF_MAX_S = 30.0


def import_faust() -> Any:
    """faust, imported without reading this process's command line: on import, faust parses sys.argv for
    its own `-L/--loop` option and fails on anything else it does not expect there (`guardstream demo --loop`)."""
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        import faust
    finally:
        sys.argv = argv
    return faust


faust = import_faust()


def faust_credentials(kafka: Any) -> Any:
    """The same TLS and SASL settings every aiokafka client gets, in faust's terms."""
    options = client_options(kafka)
    protocol = options.get("security_protocol", "PLAINTEXT")
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(username=options["sasl_plain_username"], password=options["sasl_plain_password"],
                                     mechanism=options["sasl_mechanism"], ssl_context=options.get("ssl_context"))
    if protocol == "SSL":
        return faust.SSLCredentials(options["ssl_context"])
    return None


class TrainerService:
    def __init__(self, settings: TrainerSettings) -> None:
        self.settings = settings
        self.topics = TopicNames(settings.kafka.topic_prefix)
        self.metrics = TrainerMetrics()
        self.dataset = DataSet.open(settings.dataset.uri, settings.fetch, settings.dataset)
        self.reader = RecordReader(settings.kafka, settings.dataset.resolve_timeout_s)
        self.resolver = Resolver(self.reader, settings.limits)
        self.collector = LabelCollector(self.resolver, settings.kafka, settings.labels, self.metrics)
        self.runs: deque[RunRecord] = deque(maxlen=RUNS_KEPT)
        self.health: HealthServer | None = None
        self._pending: list[tuple[Any, AuditExample | None]] = []  # faust events, in consumption order
        self._stream: Any = None
        self._flush_lock = asyncio.Lock()
        self._job_lock = asyncio.Lock()
        self._job_task: asyncio.Task[None] | None = None
        self._broker_watch: asyncio.Task[None] | None = None
        self._new_labels = 0  # stored since the last job run started
        self.examples_stored = 0  # by this process, repeats of an event included
        self._flush_failures = 0
        self._agent_crashes = 0
        self._agent_crash: str | None = None
        self._stopping = asyncio.Event()
        self._started = False
        self.app = self._build_app()

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        await self.start()
        try:
            await self._stopping.wait()
        finally:
            await self.shutdown()

    def stop(self) -> None:
        self._stopping.set()

    async def start(self) -> None:
        obs = self.settings.observability
        if obs.health_enabled:
            self.health = HealthServer(obs.health_host, obs.health_port, self.metrics.registry, lambda: self.ready,
                                       self.problems, self.status)
            await self.health.start()
        await self.reader.start()
        self._broker_watch = asyncio.create_task(watch_brokers(
            self.reader.ask_brokers, self.metrics.dependencies, self.settings.kafka.broker_check_interval_s),
            name="broker-watch")
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)  # faust makes the last folder only
        await self.app.start()
        self._started = True
        log.info("trainer_started", labels=self.topics.audit_labels, data_dir=str(self.settings.data_dir),
                 dataset=self.settings.dataset.uri, releases=self.settings.gate.release_uri,
                 jobs=self.settings.jobs.scheduled, health_port=self.health.port if self.health else None)

    async def shutdown(self) -> None:
        """Store what waits (its offsets are committed as faust stops), stop consuming, let a running job
        finish. A label consumed after that last shard stays uncommitted and is read again next time."""
        if self._pending:
            await self.flush()
        await self.app.stop()
        if self._job_task is not None:
            await asyncio.shield(self._job_task)
        if self._broker_watch is not None:
            self._broker_watch.cancel()
            await asyncio.gather(self._broker_watch, return_exceptions=True)
        await self.reader.stop()
        if self.health:
            await self.health.stop()
        self._started = False

    @property
    def ready(self) -> bool:
        return self._started and not self.problems()

    def problems(self) -> list[str]:
        out = []
        if self._flush_failures:
            out.append(f"data set writes failing ({self._flush_failures} in a row); labels wait uncommitted")
        if self.collector.problem:
            out.append(self.collector.problem)
        if self._agent_crash:
            out.append(f"the label agent crashed {self._agent_crashes} times (last: {self._agent_crash}); faust "
                       "restarted it, and the label it held stays uncommitted until the trainer restarts")
        return out + self.metrics.dependencies.problems(optional=False)

    def status(self) -> dict[str, Any]:
        return {
            "labels_topic": self.topics.audit_labels,
            "data_dir": str(self.settings.data_dir),
            "dataset": self.settings.dataset.uri,
            "pending_labels": len(self._pending),
            "new_labels_since_last_run": self._new_labels,
            "job_running": self._job_task is not None and not self._job_task.done(),
            "runs": [run.to_dict() for run in reversed(self.runs)],
        }

    # -- faust -------------------------------------------------------------------------------

    def _build_app(self) -> Any:
        s = self.settings
        app = faust.App(
            s.group_id, broker=f"kafka://{s.kafka.bootstrap_servers}", broker_credentials=faust_credentials(s.kafka),
            datadir=str(s.state_dir), web_enabled=False, topic_disable_leader=True, topic_allow_declare=False,
            store="memory://",
            autodiscover=False, stream_wait_empty=False, producer_acks=-1,
            consumer_auto_offset_reset="earliest", broker_commit_interval=s.kafka.commit_interval_ms / 1000,
            broker_session_timeout=s.kafka.session_timeout_ms / 1000,
            broker_heartbeat_interval=s.kafka.heartbeat_interval_ms / 1000,
            broker_rebalance_timeout=s.kafka.session_timeout_ms / 1000,
        )
        topic = app.topic(self.topics.audit_labels, value_serializer="raw", key_serializer="raw")
        app.agent(topic, name="collect-labels", concurrency=1)(self._collect)
        app.timer(s.dataset.flush_interval_s)(self._flush_due)
        if s.jobs.interval_s is not None:
            app.timer(s.jobs.interval_s)(self._scheduled)
        return app

    async def _collect(self, stream: Any) -> None:
        self._stream = stream
        try:
            async for event in stream.noack().events():
                await self._take(event)
        except Exception as exc:  # faust logs it and restarts the agent; readiness must say so too
            self._agent_crashes += 1
            self._agent_crash = f"{type(exc).__name__}: {exc}"
            raise

    async def _take(self, event: Any) -> None:
        """One label record: its example (or its counted skip) waits, unacknowledged, for the next shard."""
        self.metrics.labels_seen.inc()
        message = event.message
        source = SourceRef(topic=message.topic, partition=message.partition, offset=message.offset,
                           key=message.key.decode("utf-8", "replace") if message.key else None)
        example = await self.collector.example(event.value, source)
        self._pending.append((event, example))
        self.metrics.pending_labels.set(len(self._pending))
        if len(self._pending) >= self.settings.dataset.shard_max_examples:
            await self._flush_until_stored()

    async def _flush_due(self) -> None:
        if self._pending:
            await self.flush()

    async def _scheduled(self) -> None:
        self.trigger_jobs("schedule")

    # -- labels to shards ----------------------------------------------------------------------

    async def _flush_until_stored(self) -> None:
        """Backpressure: while the shard cannot be written, the agent waits here and consumes nothing."""
        while not await self.flush() and len(self._pending) >= 2 * self.settings.dataset.shard_max_examples:
            await asyncio.sleep(backoff_s(self._flush_failures, 0.5, BACKOFF_MAX_S))

    async def flush(self) -> bool:
        """Store the waiting labels' examples as one shard, then acknowledge those labels. False if the
        write failed (they stay waiting and uncommitted)."""
        async with self._flush_lock:
            pending = list(self._pending)
            if not pending:
                return True
            examples = [example for _, example in pending if example is not None]
            try:
                if examples:
                    shard = await self.dataset.append(examples)
                    log.info("shard_written", shard=shard.name, examples=len(examples), labels=len(pending))
            except Exception as exc:
                self._flush_failures += 1
                self.metrics.shard_failures.inc()
                log.error("shard_write_failed", error=f"{type(exc).__name__}: {exc}", failures=self._flush_failures)
                return False
            self._flush_failures = 0
            del self._pending[: len(pending)]
            self.metrics.pending_labels.set(len(self._pending))
            for event, _ in pending:
                await self._stream.ack(event)
            if examples:
                self.metrics.shards_written.inc()
                self.metrics.examples_written.inc(len(examples))
                self.examples_stored += len(examples)
                self._new_labels += len(examples)
        after = self.settings.jobs.after_new_labels
        if after is not None and self._new_labels >= after:
            self.trigger_jobs(f"{self._new_labels} new labels")
        return True

    # -- jobs ----------------------------------------------------------------------------------

    def trigger_jobs(self, trigger: str) -> None:
        if self._job_task is not None and not self._job_task.done():
            log.info("jobs_already_running", trigger=trigger)
            return
        self._job_task = asyncio.create_task(self.run_jobs(trigger))

    async def run_jobs(self, trigger: str) -> list[RunRecord]:
        records = []
        async with self._job_lock:
            self._new_labels = 0
            for name in self.settings.jobs.scheduled:
                record = await run_job(name, self.settings, trigger)
                self.runs.append(record)
                self.metrics.job_runs.labels(name, record.outcome).inc()
                self.metrics.last_run.labels(name).set((record.finished_at or datetime.now(UTC)).timestamp())
                records.append(record)
        return records
