"""Moderation: judging keyed events. Results are looked up in and stored to the result cache (each under its
operating point, on the model it was made by); an event not found there is queued for the micro-batcher,
and identical content already queued or running takes the one inference along. Each batch runs on the
model its events are bound to, and its results are stored and answered on a task of their own, so the
device's slot is free the moment the batch ends.
"""

from __future__ import annotations

import time

import structlog
from aiokafka import ConsumerRecord

from workers.answering import Answerer, Pending, ms_since
from workers.batcher import MicroBatcher
from workers.cache import ResultCache
from workers.errors import InternalError
from workers.guard.base import GuardOutcome, GuardRequest, GuardResult
from workers.metrics import WorkerMetrics
from workers.served_model import ServedModel
from workers.settings import OperatingPoint
from workers.task_supervision import TaskSupervisor

log = structlog.get_logger("guardstream.worker")


class Moderation:
    def __init__(self, cache: ResultCache, metrics: WorkerMetrics, answers: Answerer, tasks: TaskSupervisor,
                 shape: tuple[int, int, int], dispatch_when_idle: bool) -> None:
        """`shape`: the batcher's max_batch, max_wait_ms and batches in flight for the model served first."""
        self.cache = cache
        self.metrics = metrics
        self.answers = answers
        self.tasks = tasks
        self.inflight: dict[str, list[Pending]] = {}  # content key → events waiting on its one inference
        self.batcher: MicroBatcher[tuple[ServedModel, str, GuardRequest], GuardOutcome] = MicroBatcher(
            self.run_batch, *shape, dispatch_when_idle=dispatch_when_idle)

    # -- cache -------------------------------------------------------------------------------

    async def lookup(self, keys: dict[str, OperatingPoint], served: ServedModel) -> dict[str, GuardResult]:
        """The cached answers of these content keys, each made at its operating point."""
        if not keys:
            return {}
        names = {k: served.cache_key(k, point) for k, point in keys.items()}
        try:
            with self.metrics.stage_seconds.labels("cache").time():
                found = await self.cache.get_many(list(names.values()))
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
        try:
            await self.cache.put_many({served.cache_key(k, point): v for k, (point, v) in results.items()})
        except Exception:  # a cache write that fails only costs a later miss
            log.exception("cache_store_failed_unexpectedly", keys=len(results))
            self.metrics.cache_errors.inc()

    # -- the guard ---------------------------------------------------------------------------

    def guard(self, pending: Pending) -> None:
        """Queue the event for the next batch; an identical one already queued or running takes it along
        (one inference, one answer each)."""
        assert pending.key is not None
        pending.guard_started = time.monotonic()
        waiting = self.inflight.get(pending.key)
        if waiting is not None:
            waiting.append(pending)
            self.metrics.singleflight_joins.inc()
            return
        self.inflight[pending.key] = [pending]
        request = GuardRequest(text=pending.event.text, images=pending.images, response=pending.event.response,
                               operating_point=pending.point)
        self.batcher.put((pending.served, pending.key, request), lane=pending.record.partition)

    async def run_batch(self, items: list[tuple[ServedModel, str, GuardRequest]]) -> list[GuardOutcome]:
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
            owned: list[ConsumerRecord[bytes, bytes]] = [p.record for key in done for p in self.inflight.get(key, [])]
            self.tasks.spawn(self._finish(served, done, points), owned)
        return outcomes  # type: ignore[return-value]

    async def _finish(self, served: ServedModel, done: dict[str, GuardOutcome],
                      points: dict[str, OperatingPoint]) -> None:
        """Store a batch's results (each under its operating point), then answer every event that waited on them
        (those that joined while the store ran too)."""
        await self._store({key: (points[key], o) for key, o in done.items() if isinstance(o, GuardResult)}, served)
        answers = []
        for key, outcome in done.items():
            for pending in self.inflight.pop(key, []):
                if isinstance(outcome, GuardResult):
                    pending.timings["guard_ms"] = ms_since(pending.guard_started)
                    answers.append(self.answers.ok(pending, outcome, cache_hit=False))
                else:
                    answers.append(self.answers.failed(pending, outcome))
        await self.answers.answer(answers)
