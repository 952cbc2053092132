"""Moderation without a broker: events in, verdicts out, through the same fetcher, guard stage and verdict
builder as the worker. `guardstream audit`, `guardstream replay` and `guardstream eval` use it.

An event that cannot be moderated (an image that cannot be fetched, an output that does not parse, a
backend that keeps failing) gets an error verdict saying why, as in the worker; nothing raises past
`moderate` but a bug. There is no cache: each call judges what it is given.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import structlog
from prometheus_client import CollectorRegistry

from schemas.events import ChatEvent, ModelRef, Verdict
from workers.content_key import content_key
from workers.emit import error_verdict, ok_verdict
from workers.errors import GuardstreamError, InternalError
from workers.fetch import FetchedImage, ImageFetcher
from workers.guard.base import GuardBackend, GuardRequest
from workers.guard_stage import GuardStage
from workers.metrics import WorkerMetrics
from workers.settings import FetchSettings, GuardSettings

log = structlog.get_logger("guardstream.offline")


@dataclass
class _Prepared:
    event: ChatEvent
    images: list[FetchedImage] = field(default_factory=list)
    error: GuardstreamError | None = None
    timings: dict[str, float] = field(default_factory=dict)


class OfflineModerator:
    """Judge events in batches of `guard settings`' backend; the caller owns `backend` (and closes it)."""

    def __init__(self, backend: GuardBackend, guard: GuardSettings, fetch: FetchSettings) -> None:
        self.backend = backend
        self.guard = guard
        self.model = ModelRef(name=guard.model_name, version=guard.model_version)
        self.metrics = WorkerMetrics(CollectorRegistry())
        self.stage = GuardStage(backend, guard, self.metrics)
        self.fetcher = ImageFetcher(fetch)

    async def __aenter__(self) -> OfflineModerator:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.fetcher.close()

    async def moderate(self, events: list[ChatEvent]) -> list[Verdict]:
        """One verdict per event, in order."""
        prepared = await asyncio.gather(*(self._prepare(e) for e in events))
        ready = [p for p in prepared if p.error is None]
        started = time.monotonic()
        requests = [GuardRequest(text=p.event.text, images=[i.image for i in p.images], response=p.event.response)
                    for p in ready]
        outcomes = await self.stage.run(requests) if requests else []
        guard_ms = round((time.monotonic() - started) * 1000, 2)
        judged = dict(zip((id(p) for p in ready), outcomes, strict=True))
        verdicts = []
        for p in prepared:
            outcome = judged.get(id(p), p.error)
            if isinstance(outcome, GuardstreamError) or outcome is None:
                error = outcome or InternalError("no outcome")
                verdicts.append(error_verdict(p.event, error, self.model, self.guard.policy_version, p.timings))
                continue
            key = content_key(p.event.text, p.event.response, [i.sha256 for i in p.images], self.model.name,
                              self.model.version, self.guard.policy_version)
            verdicts.append(ok_verdict(p.event, outcome, self.model, self.guard.policy_version, key, False,
                                       {**p.timings, "guard_ms": guard_ms}))
        return verdicts

    async def _prepare(self, event: ChatEvent) -> _Prepared:
        prepared = _Prepared(event)
        started = time.monotonic()
        try:
            prepared.images = list(await asyncio.gather(*(self.fetcher.fetch(ref) for ref in event.images)))
        except GuardstreamError as exc:
            prepared.error = exc
        except Exception as exc:  # a bug in fetching: still this event's answer, never the batch's end
            log.error("fetch_failed_unexpectedly", event_id=event.event_id, exc_info=exc)
            prepared.error = InternalError(f"{type(exc).__name__}: {exc}")
        if event.images:
            prepared.timings["fetch_ms"] = round((time.monotonic() - started) * 1000, 2)
        return prepared
