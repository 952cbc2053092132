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
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError
from PIL import Image

from schemas.events import ChatEvent, DeadLetter, ModelRelease, SourceRef, Verdict
from topics.registry import TopicNames
from workers.artefacts import materialise
from workers.backoff import backoff_s
from workers.batcher import MicroBatcher
from workers.cache import NoCache, RedisCache, ResultCache
from workers.commit import OffsetTracker
from workers.decode import check_limits, decode_event
from workers.dependency_state import OBJECT_STORAGE, watch_brokers
from workers.emit import Publisher, cut, dead_letter, error_verdict, ok_verdict
from workers.errors import FetchUnavailable, GuardstreamError, InternalError
from workers.fetch import FetchedImage, ImageFetcher
from workers.guard.base import GuardBackend, GuardOutcome, GuardRequest, GuardResult, concurrent_requests
from workers.guard.registry import load_backend
from workers.guard_stage import GuardStage
from workers.health import HealthServer
from workers.intake import FairPoller
from workers.kafka_clients import client_options
from workers.metrics import WorkerMetrics
from workers.model_watch import ModelWatcher
from workers.served_model import ServedModel, load_release, release_settings
from workers.settings import GuardSettings, LimitSettings, OperatingPoint, WorkerSettings

log = structlog.get_logger("guardstream.worker")

POLL_BACKOFF_MAX_S = 30.0
INLINE_DECODE_BYTES = 128 * 1024  # a poll this small is decoded on the loop (a few ms at worst); larger, on a thread
REVOKE_CHECK_S = 0.01  # how often a revoke's drain looks whether the revoked partitions are answered


class _CommitOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.worker.finish(revoked)
        await self.worker.commit(revoked)
        self.worker.forget(revoked)
        log.info("partitions_revoked", partitions=sorted(str(tp) for tp in revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions_assigned", partitions=sorted(str(tp) for tp in assigned))


@dataclass(eq=False)
class Pending:
    """One polled event on its way to its one answer, bound to the model served when it was admitted."""

    record: ConsumerRecord[bytes, bytes]
    event: ChatEvent
    served: ServedModel
    started: float  # admission (monotonic)
    key: str | None = None  # the content key, once known
    images: list[Image.Image] = field(default_factory=list)
    guard_started: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def point(self) -> OperatingPoint:
        """The operating point it is judged at: its tenant's, on the model it is bound to."""
        return self.served.operating_point(self.event.tenant)


@dataclass(frozen=True)
class Answer:
    """What answers one record: a verdict, a dead letter, or both. `served` is released once it is sent."""

    record: ConsumerRecord[bytes, bytes]
    verdict: Verdict | None
    letter: DeadLetter | None
    served: ServedModel | None = None


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
        self._inflight: dict[str, list[Pending]] = {}  # content key → events waiting on its one inference
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._started = False
        self._paused = False
        self._room = asyncio.Event()  # set when a paused worker may poll again (or is stopping)
        self._all_answered = asyncio.Event()  # set while nothing polled is unanswered (what a drain waits for)
        self._last_commit = 0.0
        self._closers: list[Callable[[], Coroutine[Any, Any, Any]]] = []
        self._event_decoder = ThreadPoolExecutor(1, thread_name_prefix="decode-events")  # big records: off the loop
        self._poll_failures = 0  # polls in a row that raised
        self._stalled_by_failures: set[tuple[TopicPartition, int]] = set()
        self._shutdown_deadline = float("inf")
        self.health: HealthServer | None = None

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
        self._stalled_by_failures = {(tp, o) for tp, o in self._stalled_by_failures if self.tracker.is_unanswered(tp, o)}
        if self._stalled_by_failures:
            found.append(f"{len(self._stalled_by_failures)} records left unanswered by failed tasks "
                         "(their partitions stop committing)")
        return found + self.metrics.dependencies.problems(optional=False)

    def degraded(self) -> list[str]:
        """What is failing that the worker answers without (the cache): listed by /readyz, still ready."""
        return self.metrics.dependencies.problems(optional=True)

    def stop(self) -> None:
        """Ask the worker to stop polling, drain and commit (safe from a signal handler)."""
        self._stopping.set()
        self._room.set()

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
            self._run_batch, *self._batch_shape(self._backend), dispatch_when_idle=s.batch.dispatch_when_idle)
        kafka = client_options(s.kafka)  # brokers, client id, TLS and SASL
        self.producer = AIOKafkaProducer(**kafka, acks="all", linger_ms=s.kafka.linger_ms,
                                         max_batch_size=s.kafka.produce_batch_bytes)
        self._closers.insert(0, self.producer.stop)  # before start: a start that fails still closes the client
        await self.producer.start()
        self.publisher = Publisher(self.producer, self.topics, s.kafka, self.metrics)
        self.consumer = AIOKafkaConsumer(
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
        self.consumer.subscribe([self.topics.events], listener=_CommitOnRevoke(self))
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
            await _wait_or_timeout(self._all_answered, self.settings.drain_timeout_s)
        if self._started:
            await self.commit()
        pending = set(self._tasks)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for closing in self._closers:  # whatever start() got to, in reverse order; one failing stops none
            try:
                await closing()
            except Exception:
                log.exception("close_failed", closer=getattr(closing, "__qualname__", repr(closing)))
        if self.health:
            await self.health.stop()
        if self._started:
            log.info("worker_stopped", unanswered=self.tracker.unanswered_count())

    # -- the served model -------------------------------------------------------------------

    def _serve(self, backend: GuardBackend, guard: GuardSettings, owned: bool) -> ServedModel:
        self.metrics.model_info.clear()
        self.metrics.model_info.labels(guard.model_name, guard.model_version, backend.name).set(1)
        return ServedModel.of(backend, GuardStage(backend, guard, self.metrics), guard, self.settings.cache.key_prefix,
                              owned)

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
        self.batcher.reshape(*self._batch_shape(backend))
        if replaced.owned:
            self._spawn(self._retire(replaced))
        self.metrics.model_switches.inc()
        log.info("model_switched", name=release.name, old=current.version, new=release.version, backend=backend.name)

    def _batch_shape(self, backend: GuardBackend) -> tuple[int, int, int]:
        """max_batch, max_wait_ms and batches in flight for `backend`: the settings' micro-batches, or for a
        backend that batches on its own, one request at a time in as many slots as it takes at once."""
        own = concurrent_requests(backend)
        if own is not None:
            return 1, 0, own
        b = self.settings.batch
        return b.max_batch, b.max_wait_ms, b.max_batches_in_flight

    async def _retire(self, replaced: ServedModel) -> None:
        """Close a replaced model once the events bound to it are answered (frees GPU memory)."""
        while replaced.users:
            await asyncio.sleep(0.05)
        await replaced.backend.close()
        self.metrics.models_retired.inc()
        log.info("model_retired", version=replaced.ref.version)

    async def _close_batcher(self) -> None:
        """Running batches get what is left of the drain time, then are cancelled."""
        await self.batcher.close(max(0.0, self._shutdown_deadline - time.monotonic()))

    async def _close_executors(self) -> None:
        self._event_decoder.shutdown(wait=False, cancel_futures=True)
        await self._fetcher.close()

    async def _close_served(self) -> None:
        if self.served.owned:
            await self.served.backend.close()

    async def _stop_watching(self) -> None:
        await _cancelled(self._watch)

    # -- the loop ----------------------------------------------------------------------------

    async def _poll_iteration(self) -> None:
        k = self.settings.kafka
        if self._paused:  # no blind poll: wait for answers to make room (or for the next commit)
            due = self._last_commit + k.commit_interval_ms / 1000 - time.monotonic()
            await _wait_or_timeout(self._room, max(0.0, due))
            self._apply_backpressure()
        records = await self._poll(0 if self._paused else k.poll_timeout_ms)
        for record in records:
            self.tracker.polled(TopicPartition(record.topic, record.partition), record.offset)
        self.metrics.events_in.inc(len(records))
        if records:
            self._all_answered.clear()
            await self._admit(records)
        self._apply_backpressure()
        if time.monotonic() - self._last_commit >= k.commit_interval_ms / 1000:
            await self.commit()
            await self._observe_lag()

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

    async def _admit(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        """Decode every record; answer failures and cache hits together, queue the rest for the guard (a
        task each only for events whose images must be fetched first)."""
        served = self.served  # every event of this poll is bound to the model served now
        served.users += 1  # held while this poll is admitted, so a switch cannot retire it under us
        try:
            await self._admit_bound(records, served)
        finally:
            served.users -= 1

    async def _admit_bound(self, records: list[ConsumerRecord[bytes, bytes]], served: ServedModel) -> None:
        limits = self.settings.limits
        values = [r.value for r in records]
        if sum(len(v) for v in values if v) <= INLINE_DECODE_BYTES:  # a thread's hand-off costs more than this
            decoded = decode_all(values, limits)
        else:
            decoded = await asyncio.get_running_loop().run_in_executor(self._event_decoder, decode_all, values, limits)
        started = time.monotonic()
        answers: list[Answer] = []
        keyed: list[tuple[Pending, str]] = []  # their content key is known before any fetch
        for record, event in zip(records, decoded, strict=True):
            if isinstance(event, GuardstreamError):  # nothing to answer but the dead letter
                answers.append(Answer(record, None, self._letter(record, event, None)))
                continue
            pending = Pending(record, event, served, started)
            served.users += 1  # released when the event is answered
            try:
                check_limits(event, limits)
                pending.key = self._early_key(event, served)
            except Exception as exc:
                answers.append(self._failed(pending, exc))
                continue
            if pending.key is None:  # its images decide its key: fetched on its own task
                self._spawn(self._fetch_then_guard(pending), [record])
            else:
                keyed.append((pending, pending.key))
        hits = await self._lookup({key: pending.point for pending, key in keyed}, served)
        cache_ms = _ms_since(started)
        for pending, key in keyed:
            hit = hits.get(key)
            if hit is not None:
                pending.timings["cache_ms"] = cache_ms
                answers.append(self._ok(pending, hit, cache_hit=True))
            else:
                self._guard(pending)
        if answers:
            self._spawn(self._answer(answers), [a.record for a in answers])

    def _early_key(self, event: ChatEvent, served: ServedModel) -> str | None:
        """The content key before any image is fetched, or None. An image's digest is known only once
        its bytes are: a declared sha256 would let a producer name a known image's digest and be answered
        from that image's cached verdict without its own image being looked at. Only where producers are
        trusted (fetch.trust_declared_digests) does a declared digest decide the key on its own."""
        if not event.images:
            return served.content_key(event, [])
        digests = [ref.sha256 for ref in event.images]
        if self.settings.fetch.trust_declared_digests and all(digests):
            return served.content_key(event, digests)  # type: ignore[arg-type]
        return None

    async def _fetch_then_guard(self, pending: Pending) -> None:
        """An event with images: fetch them, key it by their digests, then answer it from the cache or
        send it to the guard."""
        try:
            images = await self._fetch_images(pending.event, pending.timings)
            pending.images = [image.image for image in images]
            pending.key = pending.served.content_key(pending.event, [image.sha256 for image in images])
            hit = (await self._lookup({pending.key: pending.point}, pending.served)).get(pending.key)
        except Exception as exc:
            await self._answer([self._failed(pending, exc)])
            return
        if hit is not None:
            await self._answer([self._ok(pending, hit, cache_hit=True)])
        else:
            self._guard(pending)

    async def _fetch_images(self, event: ChatEvent, timings: dict[str, float]) -> list[FetchedImage]:
        started = time.monotonic()
        with self.metrics.stage_seconds.labels("fetch").time():
            try:
                images = await asyncio.gather(*(self._fetcher.fetch(ref) for ref in event.images))
            except FetchUnavailable as exc:  # the store's fault (no answer, 5xx), not the event's
                self.metrics.dependencies.failed(OBJECT_STORAGE, exc)
                raise
        self.metrics.dependencies.answered(OBJECT_STORAGE)
        timings["fetch_ms"] = _ms_since(started)
        return list(images)

    # -- the guard ---------------------------------------------------------------------------

    def _guard(self, pending: Pending) -> None:
        """Queue the event for the next batch; an identical one already queued or running takes it along
        (one inference, one answer each)."""
        assert pending.key is not None
        pending.guard_started = time.monotonic()
        waiting = self._inflight.get(pending.key)
        if waiting is not None:
            waiting.append(pending)
            self.metrics.singleflight_joins.inc()
            return
        self._inflight[pending.key] = [pending]
        request = GuardRequest(text=pending.event.text, images=pending.images, response=pending.event.response,
                               operating_point=pending.point)
        self.batcher.put((pending.served, pending.key, request), lane=pending.record.partition)

    async def _run_batch(self, items: list[tuple[ServedModel, str, GuardRequest]]) -> list[GuardOutcome]:
        """Run each model's items on that model (a batch spans two only around a switch), then hand the
        outcomes to a task that stores and answers them, so the device's slot is free at once."""
        outcomes: list[GuardOutcome | None] = [None] * len(items)  # in the items' order, whatever the models
        for served in dict.fromkeys(s for s, _, _ in items):
            mine = [i for i, (s, _, _) in enumerate(items) if s is served]
            try:
                results = await served.stage.run([items[i][2] for i in mine])
            except Exception as exc:  # the stage answers backend failures itself; anything else is a bug
                log.exception("guard_stage_failed_unexpectedly", items=len(mine))
                results = [InternalError(f"the guard stage failed: {type(exc).__name__}: {exc}")] * len(mine)
            for i, outcome in zip(mine, results, strict=True):
                outcomes[i] = outcome
            done = {items[i][1]: outcome for i, outcome in zip(mine, results, strict=True)}
            points = {items[i][1]: items[i][2].operating_point for i in mine}
            owned: list[ConsumerRecord[bytes, bytes]] = [p.record for key in done for p in self._inflight.get(key, [])]
            self._spawn(self._finish(served, done, points), owned)
        return outcomes  # type: ignore[return-value]

    async def _finish(self, served: ServedModel, done: dict[str, GuardOutcome],
                      points: dict[str, OperatingPoint]) -> None:
        """Store a batch's results (each under its operating point), then answer every event that waited on them
        (those that joined while the store ran too)."""
        await self._store({key: (points[key], o) for key, o in done.items() if isinstance(o, GuardResult)}, served)
        answers = []
        for key, outcome in done.items():
            for pending in self._inflight.pop(key, []):
                if isinstance(outcome, GuardResult):
                    pending.timings["guard_ms"] = _ms_since(pending.guard_started)
                    answers.append(self._ok(pending, outcome, cache_hit=False))
                else:
                    answers.append(self._failed(pending, outcome))
        await self._answer(answers)

    # -- cache -------------------------------------------------------------------------------

    async def _lookup(self, keys: dict[str, OperatingPoint], served: ServedModel) -> dict[str, GuardResult]:
        """The cached answers of these content keys, each made at its operating point."""
        if not keys:
            return {}
        assert self._cache is not None
        names = {k: served.cache_key(k, point) for k, point in keys.items()}
        try:
            with self.metrics.stage_seconds.labels("cache").time():
                found = await self._cache.get_many(list(names.values()))
        except Exception:  # the caches degrade on their own errors; anything else is a bug, and still a miss
            log.exception("cache_lookup_failed_unexpectedly", keys=len(keys))
            self.metrics.cache_errors.inc()
            found = {}
        hits = {k: found[name] for k, name in names.items() if name in found}
        self.metrics.cache_misses.inc(len(names) - len(hits))
        return hits

    async def _store(self, results: dict[str, tuple[OperatingPoint, GuardResult]], served: ServedModel) -> None:
        if not results:
            return
        assert self._cache is not None
        try:
            await self._cache.put_many({served.cache_key(k, point): v for k, (point, v) in results.items()})
        except Exception:  # a cache write that fails only costs a later miss
            log.exception("cache_store_failed_unexpectedly", keys=len(results))
            self.metrics.cache_errors.inc()

    # -- answers -----------------------------------------------------------------------------

    def _ok(self, pending: Pending, result: GuardResult, cache_hit: bool) -> Answer:
        """The verdict of a judged event (a verdict that cannot be built is that event's failure)."""
        assert pending.key is not None
        if cache_hit:
            self.metrics.cache_hits.inc()
        else:
            pending.timings["total_ms"] = _ms_since(pending.started)
        try:
            point = pending.point
            verdict = ok_verdict(pending.event, result, pending.served.ref, pending.served.policy(point), pending.key,
                                 cache_hit, pending.timings, record_source(pending.record, self.settings.limits),
                                 operating_point=point)
        except Exception as exc:
            return self._failed(pending, exc)
        return Answer(pending.record, verdict, None, pending.served)

    def _failed(self, pending: Pending, exc: BaseException) -> Answer:
        """An error verdict and a dead letter, both saying why (the exception's type and message)."""
        event, served = pending.event, pending.served
        error = self._typed(exc, event.event_id)
        log.warning("event_failed", event_id=event.event_id, code=error.code, retriable=error.retriable,
                    error=cut(str(error), self.settings.limits.max_error_chars))
        verdict = error_verdict(event, error, served.ref, served.policy(pending.point), pending.timings,
                                record_source(pending.record, self.settings.limits), operating_point=pending.point)
        return Answer(pending.record, verdict, self._letter(pending.record, error, event.event_id), served)

    def _letter(self, record: ConsumerRecord[bytes, bytes], error: GuardstreamError, event_id: str | None) -> DeadLetter:
        return dead_letter(record_source(record, self.settings.limits), record.value, error, event_id, self.settings.limits)

    @staticmethod
    def _typed(exc: BaseException, event_id: str | None) -> GuardstreamError:
        if isinstance(exc, GuardstreamError):
            return exc
        log.error("event_failed_unexpectedly", event_id=event_id, exc_info=exc)
        return InternalError(f"{type(exc).__name__}: {exc}")

    async def _answer(self, answers: list[Answer]) -> None:
        """Produce the answers together (the publisher retries each until the broker takes it); only then
        is each offset answered. An answer that cannot even be built into a record is replaced by a dead
        letter saying so."""
        limits = self.settings.limits
        keys = [answer_key(a.record.key, limits) for a in answers]
        errors = await self.publisher.publish_many(
            [(key, a.verdict, a.letter) for key, a in zip(keys, answers, strict=True)])
        for key, answer, error in zip(keys, answers, errors, strict=True):
            if error is not None:
                event_id = answer.verdict.event_id if answer.verdict else (answer.letter.event_id if answer.letter else None)
                answer = Answer(answer.record, None, self._letter(answer.record, self._typed(error, event_id), event_id),
                                answer.served)
                await self.publisher.publish(key, None, answer.letter)
            self._answered(answer.record)
            if answer.served is not None:
                answer.served.users -= 1
            if answer.letter is not None:
                self.metrics.dead_letters.labels(answer.letter.reason).inc()
            if answer.verdict is not None:
                self.metrics.verdicts_out.labels(answer.verdict.status.value, str(answer.verdict.request_harmful)).inc()
                self._hand_over(answer.verdict)

    def _hand_over(self, verdict: Verdict) -> None:
        """Give the verdict to the embedding application's hook; its failure is logged and counted, never
        mistaken for a failure to answer (the answer is already on the topic)."""
        if self.on_verdict is None:
            return
        try:
            self.on_verdict(verdict)
        except Exception:
            self.metrics.task_failures.labels("hook").inc()
            log.exception("on_verdict_failed", event_id=verdict.event_id)

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

    async def finish(self, revoked: set[TopicPartition]) -> None:
        """Give the revoked partitions' events in flight up to `kafka.revoke_drain_s` to be answered, so that
        the commit that follows covers them and their new owner does not answer them again."""
        deadline = time.monotonic() + self.settings.kafka.revoke_drain_s
        while self.tracker.unanswered_count(revoked) and time.monotonic() < deadline:
            await asyncio.sleep(REVOKE_CHECK_S)

    def forget(self, revoked: set[TopicPartition]) -> None:
        """Revoked partitions are no longer ours to answer or commit (their late answers are ignored)."""
        self.tracker.forget(revoked)
        if not self.tracker.unanswered_count():
            self._all_answered.set()

    def _answered(self, record: ConsumerRecord[bytes, bytes]) -> None:
        self.tracker.answered(TopicPartition(record.topic, record.partition), record.offset)
        unanswered = self.tracker.unanswered_count()
        if self._paused and unanswered <= self._resume_at:
            self._room.set()
        if not unanswered:
            self._all_answered.set()

    @property
    def _resume_at(self) -> int:
        return self.settings.batch.max_in_flight_events // 2

    def _apply_backpressure(self) -> None:
        """Pause every partition at `max_in_flight_events` unanswered, resume at half of it. While paused
        the worker does not poll for records at all: it waits for the answers that make room."""
        in_flight = self.tracker.unanswered_count()
        self.metrics.in_flight.set(in_flight)
        limit = self.settings.batch.max_in_flight_events
        if in_flight >= limit:
            self.consumer.pause(*self.consumer.assignment())
            if not self._paused:
                self.metrics.pauses.inc()
                log.info("backpressure_pause", in_flight=in_flight, limit=limit)
                self._room.clear()
            self._paused = True
        elif self._paused and in_flight <= self._resume_at:
            self.consumer.resume(*self.consumer.paused())
            self._paused = False
            log.info("backpressure_resume", in_flight=in_flight)
        self.metrics.paused.set(int(self._paused))

    async def _observe_lag(self) -> None:
        for tp in self.consumer.assignment():
            try:  # position() can wait; a rebalance meanwhile unassigns tp, and aiokafka asserts on it
                position = await self.consumer.position(tp)
                highwater = self.consumer.highwater(tp)
            except (KafkaError, AssertionError, IllegalStateError):
                continue
            if highwater is not None:
                self.metrics.lag.labels(str(tp.partition)).set(max(0, highwater - position))

    def _spawn(self, coro: Coroutine[Any, Any, None], records: Sequence[ConsumerRecord[bytes, bytes]] = ()) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._reap(done, records))

    def _reap(self, task: asyncio.Task[None], records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        """A task's end. Tasks answer their records' failures themselves; one that still raised is logged and
        counted, and if it left offsets unanswered, their partitions stop committing and /readyz says so."""
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        self.metrics.task_failures.labels("record" if records else "worker").inc()
        places = [(TopicPartition(r.topic, r.partition), r.offset) for r in records]
        stalled = [place for place in places if self.tracker.is_unanswered(*place)]
        self._stalled_by_failures.update(stalled)
        where = {"partition": records[0].partition, "offset": records[0].offset, "records": len(records)} if records else {}
        log.error("task_failed", **where, offsets_stalled=len(stalled), exc_info=task.exception())


def decode_all(values: list[bytes | None], limits: LimitSettings) -> list[ChatEvent | GuardstreamError]:
    """Each value's event, or the error that answers it (run off the event loop: a megabyte of JSON with
    thousands of schema errors costs tenths of a second)."""
    out: list[ChatEvent | GuardstreamError] = []
    for value in values:
        try:
            out.append(decode_event(value, limits))
        except GuardstreamError as exc:
            out.append(exc)
        except Exception as exc:  # a bug in decoding must still answer this record, and only this one
            out.append(InternalError(f"decoding failed: {type(exc).__name__}: {exc}"))
    return out


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _wait_or_timeout(event: asyncio.Event, timeout_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout_s)


def answer_key(key: bytes | None, limits: LimitSettings) -> bytes | None:
    """The key an answer is produced with: the input's, or, for a key over `max_key_bytes`, its sha256
    (still the same for every record with that key, so answers keep its partitioning)."""
    if key is None or len(key) <= limits.max_key_bytes:
        return key
    return b"sha256:" + hashlib.sha256(key).hexdigest().encode()


def record_source(record: ConsumerRecord[bytes, bytes], limits: LimitSettings) -> SourceRef:
    """Where a record is: what dead letters and verdicts carry, so the record can be found again."""
    key = record.key.decode("utf-8", "replace") if record.key is not None else None
    return SourceRef(topic=record.topic, partition=record.partition, offset=record.offset,
                     key=None if key is None else cut(key, limits.max_key_bytes))


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 2)
