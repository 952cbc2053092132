"""Admission: what becomes of one poll's records. Each is decoded (on a thread when the poll is large),
checked against the limits and keyed; failures and cache hits are answered together, the rest go to
moderation. An event whose images decide its key gets a task of its own that fetches them first. Every
event admitted is bound to the model served when its poll was admitted, and holds that model until answered.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from aiokafka import ConsumerRecord

from runtime.dependency_state import OBJECT_STORAGE
from schemas.events import ChatEvent
from workers.answering import Answer, Answerer, Pending, ms_since
from workers.decode import check_limits, decode_event
from workers.errors import FetchUnavailable, GuardstreamError, InternalError
from workers.fetch import FetchedImage, ImageFetcher
from workers.metrics import WorkerMetrics
from workers.moderation import Moderation
from workers.served_model import ServedModel
from workers.settings import LimitSettings, WorkerSettings
from workers.task_supervision import TaskSupervisor

INLINE_DECODE_BYTES = 128 * 1024  # a poll this small is decoded on the loop (a few ms at worst); larger, on a thread


class Admission:
    def __init__(self, settings: WorkerSettings, metrics: WorkerMetrics, answers: Answerer, moderation: Moderation,
                 tasks: TaskSupervisor, fetcher: ImageFetcher, event_decoder: ThreadPoolExecutor) -> None:
        self.settings = settings
        self.metrics = metrics
        self.answers = answers
        self.moderation = moderation
        self.tasks = tasks
        self.fetcher = fetcher
        self.event_decoder = event_decoder  # big records: off the loop

    async def admit(self, records: list[ConsumerRecord[bytes, bytes]], served: ServedModel) -> None:
        """Decode every record; answer failures and cache hits together, queue the rest for the guard (a
        task each only for events whose images must be fetched first). Every event is bound to `served`."""
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
            decoded = await asyncio.get_running_loop().run_in_executor(self.event_decoder, decode_all, values, limits)
        started = time.monotonic()
        answers: list[Answer] = []
        keyed: list[tuple[Pending, str]] = []  # their content key is known before any fetch
        for record, event in zip(records, decoded, strict=True):
            if isinstance(event, GuardstreamError):  # nothing to answer but the dead letter
                answers.append(Answer(record, None, self.answers.letter(record, event, None)))
                continue
            pending = Pending(record, event, served, started)
            served.users += 1  # released when the event is answered
            try:
                check_limits(event, limits)
                pending.key = self._early_key(event, served)
            except Exception as exc:
                answers.append(self.answers.failed(pending, exc))
                continue
            if pending.key is None:  # its images decide its key: fetched on its own task
                self.tasks.spawn(self._fetch_then_guard(pending), [record])
            else:
                keyed.append((pending, pending.key))
        hits = await self.moderation.lookup({key: pending.point for pending, key in keyed}, served)
        cache_ms = ms_since(started)
        for pending, key in keyed:
            hit = hits.get(key)
            if hit is not None:
                pending.timings["cache_ms"] = cache_ms
                answers.append(self.answers.ok(pending, hit, cache_hit=True))
            else:
                self.moderation.guard(pending)
        if answers:
            self.tasks.spawn(self.answers.answer(answers), [a.record for a in answers])

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
            hit = (await self.moderation.lookup({pending.key: pending.point}, pending.served)).get(pending.key)
        except Exception as exc:
            await self.answers.answer([self.answers.failed(pending, exc)])
            return
        if hit is not None:
            await self.answers.answer([self.answers.ok(pending, hit, cache_hit=True)])
        else:
            self.moderation.guard(pending)

    async def _fetch_images(self, event: ChatEvent, timings: dict[str, float]) -> list[FetchedImage]:
        started = time.monotonic()
        with self.metrics.stage_seconds.labels("fetch").time():
            try:
                images = await asyncio.gather(*(self.fetcher.fetch(ref) for ref in event.images))
            except FetchUnavailable as exc:  # the store's fault (no answer, 5xx), not the event's
                self.metrics.dependencies.failed(OBJECT_STORAGE, exc)
                raise
        self.metrics.dependencies.answered(OBJECT_STORAGE)
        timings["fetch_ms"] = ms_since(started)
        return list(images)


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
