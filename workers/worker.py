"""The moderation worker: poll, decode, key, cache, fetch, batch, guard, emit, commit.

Each polled record ends in exactly one answer: a verdict (ok or error) and, for input that can never be
moderated, a dead letter. Records travel in groups, not one task each: a poll's failures and cache hits
are answered together, the rest go to the micro-batcher (identical content in flight shares one item),
and each finished batch is stored and answered together, its verdicts sharing produce requests. Only an
event whose images must be fetched gets a task of its own. Only answered offsets are committed (see
commit.py), so a crash repeats work and never loses an event.

Nothing one record carries can leave its own path: every exception on it (decode, limits, key, cache,
fetch, guard, verdict) ends as that record's reason-coded answer, and an exception nobody expected is
an `internal_error` answer, logged with its traceback. What is not one record's fault (a batch the
consumer cannot read, a broker refusing answers, a task that failed anyway) is logged, counted, and
turns `/readyz` to 503 until it clears; the worker keeps running either way.

Here: start, the poll loop and shutdown. A poll goes on in admission.py, moderation.py (the guard) and answering.py,
beside flow_control.py (commits, revokes, backpressure), model_lifecycle.py and task_supervision.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from runtime.backoff import backoff_s
from runtime.dependency_state import watch_brokers
from runtime.health import HealthServer
from schemas.events import ModelRelease, Verdict
from topics.clients import client_options
from topics.registry import TopicNames
from workers.admission import Admission
from workers.answering import Answerer
from workers.cache import NoCache, RedisCache, ResultCache
from workers.commit import OffsetTracker
from workers.emit import Publisher, cut
from workers.fetch import ImageFetcher
from workers.flow_control import CommitOnRevoke, FlowControl
from workers.guard.base import GuardBackend
from workers.guard.registry import load_backend
from workers.intake import FairPoller
from workers.metrics import WorkerMetrics
from workers.model_lifecycle import ModelLifecycle
from workers.model_watch import ModelWatcher
from workers.moderation import Moderation
from workers.served_model import ServedModel
from workers.settings import WorkerSettings
from workers.task_supervision import TaskSupervisor

log = structlog.get_logger("guardstream.worker")

POLL_BACKOFF_MAX_S = 30.0


class Worker:
    def __init__(
        self,
        settings: WorkerSettings,
        *,
        backend: GuardBackend | None = None,
        cache: ResultCache | None = None,
        metrics: WorkerMetrics | None = None,
        on_verdict: Callable[[Verdict], None] | None = None,
    ) -> None:
        self.settings = settings
        self.topics = TopicNames(settings.kafka.topic_prefix)
        self.metrics = metrics or WorkerMetrics()
        self.tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        self.flow = FlowControl(settings, self.tracker, self.metrics)  # commits, revokes, backpressure
        self.answers = Answerer(settings, self.metrics, self.flow.answered, on_verdict)
        self.tasks = TaskSupervisor(self.tracker, self.metrics)
        self.models = ModelLifecycle(settings, self.metrics, self.tasks)
        self._backend = backend
        self._cache = cache
        self._fetcher = ImageFetcher(settings.fetch)
        self._stopping = asyncio.Event()
        self._started = False
        self._closers: list[Callable[[], Coroutine[Any, Any, Any]]] = []
        self._event_decoder = ThreadPoolExecutor(1, thread_name_prefix="decode-events")  # big records: off the loop
        self._poll_failures = 0  # polls in a row that raised
        self._shutdown_deadline = float("inf")
        self.health: HealthServer | None = None

    @property
    def served(self) -> ServedModel:
        """The model newly admitted events are bound to."""
        return self.models.current

    @property
    def on_verdict(self) -> Callable[[Verdict], None] | None:
        """The embedding application's hook, given each verdict once it is on the topic."""
        return self.answers.on_verdict

    @on_verdict.setter
    def on_verdict(self, hook: Callable[[Verdict], None] | None) -> None:
        self.answers.on_verdict = hook

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._started and not self._stopping.is_set() and not self.problems()

    def problems(self) -> list[str]:
        """What keeps this worker from answering its partitions (reported by /readyz)."""
        found = []
        if self._poll_failures:
            found.append(f"polling failed {self._poll_failures} times in a row")
        publisher = getattr(self, "publisher", None)
        if publisher is not None and publisher.stalled:
            found.append(f"{publisher.stalled} answers refused by the broker")
        stalled = self.tasks.stalled()
        if stalled:
            found.append(f"{stalled} records left unanswered by failed tasks (their partitions stop committing)")
        return found + self.metrics.dependencies.problems(optional=False)

    def degraded(self) -> list[str]:
        """What is failing that the worker answers without (the cache): listed by /readyz, still ready."""
        return self.metrics.dependencies.problems(optional=True)

    def stop(self) -> None:
        """Ask the worker to stop polling, drain and commit (safe from a signal handler)."""
        self._stopping.set()
        self.flow.room.set()

    async def run(self) -> None:
        try:
            await self.start()
            while not self._stopping.is_set():
                await self._poll_iteration()
        finally:
            await asyncio.shield(self._shutdown())

    async def start(self) -> None:
        s = self.settings
        owned = self._backend is None  # what the worker creates it closes; what it is given, its owner closes
        if self._backend is None:
            self._backend = await asyncio.to_thread(load_backend, s.guard)
        if self._cache is None:
            self._cache = RedisCache(s.cache, self.metrics) if s.cache.enabled else NoCache()
            self._closers.insert(0, self._cache.close)
        self.models.serve_first(self._backend, owned)
        self._closers.insert(0, self._close_served)
        self.moderation = Moderation(self._cache, self.metrics, self.answers, self.tasks,
                                     self.models.batch_shape(self._backend), s.batch.dispatch_when_idle)
        self.batcher = self.moderation.batcher
        self.admission = Admission(s, self.metrics, self.answers, self.moderation, self.tasks, self._fetcher,
                                   self._event_decoder)
        kafka = client_options(s.kafka)  # brokers, client id, TLS and SASL
        self.producer = AIOKafkaProducer(**kafka, acks="all", linger_ms=s.kafka.linger_ms,
                                         max_batch_size=s.kafka.produce_batch_bytes)
        self._closers.insert(0, self.producer.stop)  # before start: a start that fails still closes the client
        await self.producer.start()
        self.publisher = self.answers.publisher = Publisher(self.producer, self.topics, s.kafka, self.metrics)
        self.consumer = self.flow.consumer = AIOKafkaConsumer(
            **kafka,
            group_id=s.kafka.group_id,
            enable_auto_commit=False,
            auto_offset_reset=s.kafka.auto_offset_reset,
            session_timeout_ms=s.kafka.session_timeout_ms,
            heartbeat_interval_ms=s.kafka.heartbeat_interval_ms,
            fetch_max_wait_ms=s.kafka.fetch_max_wait_ms,
        )
        self._poller = FairPoller(self.consumer)
        self._closers.insert(0, self.consumer.stop)
        await self.consumer.start()
        self.consumer.subscribe([self.topics.events], listener=CommitOnRevoke(self))
        self.batcher.start()
        self._closers.insert(0, self._close_batcher)
        brokers = asyncio.create_task(watch_brokers(self.consumer.topics, self.metrics.dependencies,
                                                    s.kafka.broker_check_interval_s), name="broker-watch")
        self._closers.insert(0, lambda: _cancelled(brokers))
        self._closers.append(self._close_executors)
        if s.guard.follow_releases:
            watcher = ModelWatcher(s.kafka, self.topics.models, s.guard.model_name, self.switch_model,
                                   on_error=lambda _: self.metrics.model_watch_errors.inc())
            self._watch = asyncio.create_task(watcher.run(), name="model-watcher")
            self._closers.insert(0, self._stop_watching)
        obs = s.observability
        if obs.health_enabled:
            self.health = HealthServer(obs.health_host, obs.health_port, self.metrics.registry, lambda: self.ready,
                                       self.problems, degraded=self.degraded)
            await self.health.start()
        self._started = True
        log.info("worker_started", backend=self._backend.name, model=self.served.ref.version, cache=self._cache.description,
                 topic=self.topics.events, group=s.kafka.group_id, health_port=self.health.port if self.health else None)

    async def _shutdown(self) -> None:
        self._stopping.set()
        self._shutdown_deadline = time.monotonic() + self.settings.drain_timeout_s
        unanswered = self.tracker.unanswered_count()
        if unanswered:
            log.info("draining", in_flight=unanswered, timeout_s=self.settings.drain_timeout_s)
            await _wait_or_timeout(self.flow.all_answered, self.settings.drain_timeout_s)
        if self._started:
            await self.commit()
        await self.tasks.cancel_all()
        for closing in self._closers:  # whatever start() got to, in reverse order; one failing stops none
            try:
                await closing()
            except Exception:
                log.exception("close_failed", closer=getattr(closing, "__qualname__", repr(closing)))
        if self.health:
            await self.health.stop()
        if self._started:
            log.info("worker_stopped", unanswered=self.tracker.unanswered_count())

    async def switch_model(self, release: ModelRelease) -> None:
        """Serve `release` from now on; events already admitted finish on the model they were bound to.
        A release that cannot be loaded is logged and counted, and the current model stays."""
        await self.models.switch(release, self.batcher)

    async def _close_batcher(self) -> None:
        """Running batches get what is left of the drain time, then are cancelled."""
        await self.batcher.close(max(0.0, self._shutdown_deadline - time.monotonic()))

    async def _close_executors(self) -> None:
        self._event_decoder.shutdown(wait=False, cancel_futures=True)
        await self._fetcher.close()

    async def _close_served(self) -> None:
        await self.models.close()

    async def _stop_watching(self) -> None:
        await _cancelled(self._watch)

    # -- the loop ----------------------------------------------------------------------------

    async def _poll_iteration(self) -> None:
        k, flow = self.settings.kafka, self.flow
        if flow.paused:  # no blind poll: wait for answers to make room (or for the next commit)
            due = flow.last_commit + k.commit_interval_ms / 1000 - time.monotonic()
            await _wait_or_timeout(flow.room, max(0.0, due))
            flow.apply_backpressure()
        records = await self._poll(0 if flow.paused else k.poll_timeout_ms)
        for record in records:
            self.tracker.polled(TopicPartition(record.topic, record.partition), record.offset)
        self.metrics.events_in.inc(len(records))
        if records:
            flow.all_answered.clear()
            await self.admission.admit(records, self.served)  # every event of this poll is bound to the model served now
        flow.apply_backpressure()
        if time.monotonic() - flow.last_commit >= k.commit_interval_ms / 1000:
            await self.commit()
            await flow.observe_lag()

    async def _poll(self, timeout_ms: int) -> list[ConsumerRecord[bytes, bytes]]:
        """One poll of the unpaused partitions (a paused worker still reads, without waiting, partitions
        assigned to it meanwhile). A poll that raises (a record batch the consumer cannot decode, say) is not one
        record's fault and no answer can be given for it: it is logged, counted and reported by /readyz,
        and polling goes on with a growing pause, never a crash loop."""
        k = self.settings.kafka
        try:
            records = await self._poller.poll(k.max_poll_records, timeout_ms)
        except Exception as exc:
            self._poll_failures += 1
            self.metrics.poll_errors.labels(type(exc).__name__).inc()
            pause = backoff_s(self._poll_failures + 1, 0.5, POLL_BACKOFF_MAX_S)
            log.error("poll_failed", error=f"{type(exc).__name__}: {cut(str(exc), 500)}", failures=self._poll_failures,
                      retry_s=pause, ready=False)
            await _wait_or_timeout(self._stopping, pause)
            return []
        if self._poll_failures:
            log.info("poll_recovered", after_failures=self._poll_failures)
            self._poll_failures = 0
        return records

    # -- offsets (flow_control.py) -----------------------------------------------------------

    async def commit(self, partitions: set[TopicPartition] | None = None) -> None:
        """Commit the answered prefix of each partition we own (shielded: a cancel cannot cut it)."""
        await self.flow.commit(partitions)

    async def finish(self, revoked: set[TopicPartition]) -> None:
        """Give the revoked partitions' events in flight up to `kafka.revoke_drain_s` to be answered."""
        await self.flow.finish(revoked)

    def forget(self, revoked: set[TopicPartition]) -> None:
        """Revoked partitions are no longer ours to answer or commit (their late answers are ignored)."""
        self.flow.forget(revoked)


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _wait_or_timeout(event: asyncio.Event, timeout_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout_s)
