"""The moderation worker: poll, decode, key, cache, fetch, batch, guard, emit, commit.

Each polled record becomes one task that ends in exactly one answer: a verdict (ok or error) and,
for input that can never be moderated, a dead letter. Only answered offsets are committed
(see commit.py), so a crash repeats work and never loses an event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from schemas.events import ChatEvent, DeadLetter, ModelRef, ModelRelease, SourceRef, Verdict
from topics.registry import TopicNames
from workers.artefacts import materialise
from workers.batcher import MicroBatcher
from workers.cache import NoCache, RedisCache, ResultCache
from workers.commit import OffsetTracker
from workers.decode import check_limits, decode_event
from workers.emit import Emitter, dead_letter, error_verdict, ok_verdict
from workers.errors import GuardstreamError, InputError, InternalError
from workers.fetch import FetchedImage, ImageFetcher
from workers.guard.base import GuardBackend, GuardOutcome, GuardRequest, GuardResult
from workers.guard.registry import load_backend
from workers.guard_stage import GuardStage
from workers.health import HealthServer
from workers.metrics import WorkerMetrics
from workers.model_watch import ModelWatcher
from workers.served_model import ServedModel, load_release, release_settings
from workers.settings import GuardSettings, WorkerSettings
from workers.singleflight import SingleFlight

log = structlog.get_logger("guardstream.worker")


class _CommitOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.worker.commit(revoked)
        self.worker.tracker.forget(revoked)
        log.info("partitions_revoked", partitions=sorted(str(tp) for tp in revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions_assigned", partitions=sorted(str(tp) for tp in assigned))


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
        self.on_verdict = on_verdict
        self._backend = backend
        self._cache = cache
        self._fetcher = ImageFetcher(settings.fetch)
        self._singleflight: SingleFlight[str, GuardResult] = SingleFlight()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._started = False
        self._paused = False
        self._last_commit = 0.0
        self._closers: list[Callable[[], Coroutine[Any, Any, Any]]] = []
        self.health: HealthServer | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._started and not self._stopping.is_set()

    def stop(self) -> None:
        """Ask the worker to stop polling, drain and commit (safe from a signal handler)."""
        self._stopping.set()

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
        self.served = self._serve(self._backend, s.guard, owned)
        self._closers.insert(0, self._close_served)
        self.batcher: MicroBatcher[tuple[ServedModel, str, GuardRequest], GuardOutcome] = MicroBatcher(
            self._run_batch, s.batch.max_batch, s.batch.max_wait_ms, s.batch.max_batches_in_flight
        )
        self.producer = AIOKafkaProducer(bootstrap_servers=s.kafka.bootstrap_servers, acks="all", linger_ms=5)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka.bootstrap_servers,
            group_id=s.kafka.group_id,
            client_id=s.kafka.client_id,
            enable_auto_commit=False,
            auto_offset_reset=s.kafka.auto_offset_reset,
            session_timeout_ms=s.kafka.session_timeout_ms,
            heartbeat_interval_ms=s.kafka.heartbeat_interval_ms,
        )
        await self.producer.start()
        self._closers.insert(0, self.producer.stop)
        self.emitter = Emitter(self.producer, self.topics)
        await self.consumer.start()
        self._closers.insert(0, self.consumer.stop)
        self.consumer.subscribe([self.topics.events], listener=_CommitOnRevoke(self))
        self.batcher.start()
        self._closers.insert(0, self.batcher.close)
        if s.guard.follow_releases:
            watcher = ModelWatcher(s.kafka.bootstrap_servers, self.topics.models, s.guard.model_name, self.switch_model)
            self._watch = asyncio.create_task(watcher.run(), name="model-watcher")
            self._closers.insert(0, self._stop_watching)
        obs = s.observability
        if obs.health_enabled:
            self.health = HealthServer(obs.health_host, obs.health_port, self.metrics.registry, lambda: self.ready)
            await self.health.start()
        self._started = True
        log.info("worker_started", backend=self._backend.name, model=self.served.ref.version, cache=self._cache.description,
                 topic=self.topics.events, group=s.kafka.group_id, health_port=self.health.port if self.health else None)

    async def _shutdown(self) -> None:
        self._stopping.set()
        pending: set[asyncio.Task[None]] = set()
        if self._tasks:
            log.info("draining", in_flight=len(self._tasks), timeout_s=self.settings.drain_timeout_s)
            _, pending = await asyncio.wait(set(self._tasks), timeout=self.settings.drain_timeout_s)
        if self._started:
            await self.commit()
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for closing in self._closers:  # whatever start() got to, in reverse order
            await closing()
        if self.health:
            await self.health.stop()
        log.info("worker_stopped", abandoned=len(pending))

    # -- the served model -------------------------------------------------------------------

    def _serve(self, backend: GuardBackend, guard: GuardSettings, owned: bool) -> ServedModel:
        self.metrics.model_info.clear()
        self.metrics.model_info.labels(guard.model_name, guard.model_version, backend.name).set(1)
        return ServedModel(backend, GuardStage(backend, guard, self.metrics),
                           ModelRef(name=guard.model_name, version=guard.model_version),
                           guard.policy_version, self.settings.cache.key_prefix, owned)

    async def switch_model(self, release: ModelRelease) -> None:
        """Serve `release` from now on; events already admitted finish on the model they were bound to.
        A release that cannot be loaded is logged and counted, and the current model stays."""
        current = self.served.ref
        if release.version == current.version:
            return
        try:
            path = await materialise(release.artefact_uri, self.settings.fetch, self.settings.guard.artefact_cache_dir)
            guard = release_settings(self.settings.guard, release, path)
            backend = await asyncio.to_thread(load_release, self.served.backend, guard, release)
        except Exception as exc:
            self.metrics.model_switch_failures.inc()
            log.error("model_switch_failed", version=release.version, error=f"{type(exc).__name__}: {exc}")
            return
        replaced, self.served = self.served, self._serve(backend, guard, owned=True)
        if replaced.owned:
            self._spawn(self._retire(replaced))
        self.metrics.model_switches.inc()
        log.info("model_switched", name=release.name, old=current.version, new=release.version, backend=backend.name)

    async def _retire(self, replaced: ServedModel) -> None:
        """Close a replaced model once the events bound to it are answered (frees GPU memory)."""
        while replaced.users:
            await asyncio.sleep(0.05)
        await replaced.backend.close()
        self.metrics.models_retired.inc()
        log.info("model_retired", version=replaced.ref.version)

    async def _close_served(self) -> None:
        if self.served.owned:
            await self.served.backend.close()

    async def _stop_watching(self) -> None:
        self._watch.cancel()
        await asyncio.gather(self._watch, return_exceptions=True)

    # -- the loop ----------------------------------------------------------------------------

    async def _poll_iteration(self) -> None:
        k = self.settings.kafka
        polled = await self.consumer.getmany(timeout_ms=k.poll_timeout_ms, max_records=k.max_poll_records)
        records = [record for batch in polled.values() for record in batch]
        for record in records:
            self.tracker.polled(TopicPartition(record.topic, record.partition), record.offset)
        self.metrics.events_in.inc(len(records))
        if records:
            await self._admit(records)
        self._apply_backpressure()
        if time.monotonic() - self._last_commit >= k.commit_interval_ms / 1000:
            await self.commit()
            await self._observe_lag()

    async def _admit(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        """Decode every record, answer cache hits, and start a task for everything else."""
        served = self.served  # every event of this poll is bound to the model served now
        served.users += 1  # held while this poll is admitted, so a switch cannot retire it under us
        try:
            await self._admit_bound(records, served)
        finally:
            served.users -= 1

    async def _admit_bound(self, records: list[ConsumerRecord[bytes, bytes]], served: ServedModel) -> None:
        admitted: list[tuple[ConsumerRecord[bytes, bytes], ChatEvent, str | None]] = []
        for record in records:
            try:
                event = decode_event(record.value, self.settings.limits)
            except InputError as exc:
                self._spawn(self._publish(record, None, dead_letter(_source(record), record.value, exc, None)))
                continue
            try:
                check_limits(event, self.settings.limits)
            except InputError as exc:
                self._spawn(self._publish(record, *self._failure(record, event, exc, {}, served)))
                continue
            digests = [ref.sha256 for ref in event.images]
            key = served.content_key(event, digests) if all(digests) else None  # type: ignore[arg-type]
            admitted.append((record, event, key))
        started = time.monotonic()
        hits = await self._lookup([key for _, _, key in admitted if key], served)
        cache_ms = _ms_since(started)
        for record, event, key in admitted:
            if key and key in hits:
                verdict = self._verdict(event, hits[key], key, True, {"cache_ms": cache_ms}, served)
                self._spawn(self._publish(record, verdict, None))
            else:
                served.users += 1  # released when the event is answered
                self._spawn(self._moderate(record, event, key, served))

    async def _moderate(
        self, record: ConsumerRecord[bytes, bytes], event: ChatEvent, key: str | None, served: ServedModel
    ) -> None:
        try:
            await self._moderate_bound(record, event, key, served)
        finally:
            served.users -= 1

    async def _moderate_bound(
        self, record: ConsumerRecord[bytes, bytes], event: ChatEvent, key: str | None, served: ServedModel
    ) -> None:
        timings: dict[str, float] = {}
        started = time.monotonic()
        letter = None
        try:
            images = await self._fetch_images(event, timings)
            if key is None:
                key = served.content_key(event, [image.sha256 for image in images])
                cached = await self._lookup([key], served)
                if key in cached:
                    await self._publish(record, self._verdict(event, cached[key], key, True, timings, served), None)
                    return
            request = GuardRequest(text=event.text, images=[i.image for i in images], response=event.response)
            guard_started = time.monotonic()
            result, shared = await self._singleflight.do(key, lambda: self._infer(served, key, request))
            timings["guard_ms"] = _ms_since(guard_started)
            if shared:
                self.metrics.singleflight_joins.inc()
            timings["total_ms"] = _ms_since(started)
            verdict = self._verdict(event, result, key, False, timings, served)
        except GuardstreamError as exc:
            verdict, letter = self._failure(record, event, exc, timings, served)
        except Exception as exc:
            log.exception("moderation_failed_unexpectedly", event_id=event.event_id)
            verdict, letter = self._failure(record, event, InternalError(f"{type(exc).__name__}: {exc}"), timings, served)
        await self._publish(record, verdict, letter)

    async def _fetch_images(self, event: ChatEvent, timings: dict[str, float]) -> list[FetchedImage]:
        if not event.images:
            return []
        started = time.monotonic()
        with self.metrics.stage_seconds.labels("fetch").time():
            images = await asyncio.gather(*(self._fetcher.fetch(ref) for ref in event.images))
        timings["fetch_ms"] = _ms_since(started)
        return list(images)

    async def _infer(self, served: ServedModel, key: str, request: GuardRequest) -> GuardResult:
        outcome = await self.batcher.submit((served, key, request))
        if isinstance(outcome, GuardstreamError):
            raise outcome
        return outcome

    async def _run_batch(self, items: list[tuple[ServedModel, str, GuardRequest]]) -> list[GuardOutcome]:
        """Run each model's items on that model (a batch spans two only around a switch)."""
        outcomes: list[GuardOutcome | None] = [None] * len(items)
        for served in dict.fromkeys(s for s, _, _ in items):
            mine = [i for i, (s, _, _) in enumerate(items) if s is served]
            results = await served.stage.run([items[i][2] for i in mine])
            for i, outcome in zip(mine, results, strict=True):
                outcomes[i] = outcome
            await self._store({items[i][1]: o for i, o in zip(mine, results, strict=True) if isinstance(o, GuardResult)},
                              served)
        return outcomes  # type: ignore[return-value]

    # -- cache -------------------------------------------------------------------------------

    async def _lookup(self, keys: list[str], served: ServedModel) -> dict[str, GuardResult]:
        if not keys:
            return {}
        assert self._cache is not None
        names = {k: served.cache_key(k) for k in keys}
        with self.metrics.stage_seconds.labels("cache").time():
            found = await self._cache.get_many(list(names.values()))
        hits = {k: found[name] for k, name in names.items() if name in found}
        self.metrics.cache_misses.inc(len(names) - len(hits))
        return hits

    async def _store(self, results: dict[str, GuardResult], served: ServedModel) -> None:
        assert self._cache is not None
        await self._cache.put_many({served.cache_key(k): v for k, v in results.items()})

    # -- answers -----------------------------------------------------------------------------

    def _verdict(
        self, event: ChatEvent, result: GuardResult, key: str, cache_hit: bool, timings: dict[str, float],
        served: ServedModel,
    ) -> Verdict:
        if cache_hit:
            self.metrics.cache_hits.inc()
        return ok_verdict(event, result, served.ref, served.policy_version, key, cache_hit, timings)

    def _failure(
        self, record: ConsumerRecord[bytes, bytes], event: ChatEvent, exc: GuardstreamError, timings: dict[str, float],
        served: ServedModel,
    ) -> tuple[Verdict, DeadLetter]:
        log.warning("event_failed", event_id=event.event_id, code=exc.code, error=str(exc), retriable=exc.retriable)
        verdict = error_verdict(event, exc, served.ref, served.policy_version, timings)
        return verdict, dead_letter(_source(record), record.value, exc, event.event_id)

    async def _publish(
        self, record: ConsumerRecord[bytes, bytes], verdict: Verdict | None, letter: DeadLetter | None
    ) -> None:
        """Produce the answer, retrying until the broker takes it; only then is the offset answered."""
        attempt = 0
        while True:
            try:
                with self.metrics.stage_seconds.labels("emit").time():
                    if letter is not None:
                        await self.emitter.dead_letter(letter, record.key)
                    if verdict is not None:
                        await self.emitter.verdict(verdict, record.key)
                break
            except KafkaError as exc:
                attempt += 1
                log.error("emit_failed", offset=record.offset, partition=record.partition, attempt=attempt, error=str(exc))
                await asyncio.sleep(min(5.0, 0.1 * 2**attempt))
        self.tracker.answered(TopicPartition(record.topic, record.partition), record.offset)
        if letter is not None:
            self.metrics.dead_letters.labels(letter.reason).inc()
        if verdict is not None:
            self.metrics.verdicts_out.labels(verdict.status.value, str(verdict.request_harmful)).inc()
            if self.on_verdict:
                self.on_verdict(verdict)

    # -- offsets and flow control ------------------------------------------------------------

    async def commit(self, partitions: set[TopicPartition] | None = None) -> None:
        """Commit the answered prefix of each partition we own (shielded: a cancel cannot cut it)."""
        self._last_commit = time.monotonic()
        owned = self.consumer.assignment() if partitions is None else partitions
        points = self.tracker.to_commit(owned)
        if not points:
            return
        try:
            await asyncio.shield(self.consumer.commit(dict(points.items())))
        except KafkaError as exc:
            log.warning("commit_failed", error=f"{type(exc).__name__}: {exc}", partitions=len(points))
            return
        self.tracker.committed(points)
        self.metrics.commits.inc()
        log.debug("committed", offsets={str(tp): off for tp, off in points.items()})

    def _apply_backpressure(self) -> None:
        in_flight = self.tracker.unanswered_count()
        self.metrics.in_flight.set(in_flight)
        limit = self.settings.batch.max_in_flight_events
        if in_flight >= limit:
            self.consumer.pause(*self.consumer.assignment())
            if not self._paused:
                self.metrics.pauses.inc()
                log.info("backpressure_pause", in_flight=in_flight, limit=limit)
            self._paused = True
        elif self._paused and in_flight <= limit // 2:
            self.consumer.resume(*self.consumer.paused())
            self._paused = False
            log.info("backpressure_resume", in_flight=in_flight)
        self.metrics.paused.set(int(self._paused))

    async def _observe_lag(self) -> None:
        for tp in self.consumer.assignment():
            highwater = self.consumer.highwater(tp)
            if highwater is None:
                continue
            try:
                position = await self.consumer.position(tp)
            except KafkaError:
                continue
            self.metrics.lag.labels(str(tp.partition)).set(max(0, highwater - position))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _source(record: ConsumerRecord[bytes, bytes]) -> SourceRef:
    key = record.key.decode("utf-8", "replace") if record.key is not None else None
    return SourceRef(topic=record.topic, partition=record.partition, offset=record.offset, key=key)


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 2)
