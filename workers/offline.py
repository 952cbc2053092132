"""Moderation without a broker: events in, verdicts out, through the same fetcher, guard stage and verdict
builder as the worker. `guardstream audit`, `guardstream replay` and `guardstream eval` use it.

An event that cannot be moderated (an image that cannot be fetched, an output that does not parse, a
backend that keeps failing) gets an error verdict saying why, as in the worker; nothing raises past
`moderate` but a bug. There is no cache: each call judges what it is given. Each event is judged at its
tenant's operating point, which its verdict names, as in the worker.

Offline there is no dead-letter topic to hold an error's detail, so a moderator made with `details=True`
(`audit`, `eval`: a person judging their own file) puts it in the error verdict's message: the image's
path and why it could not be read, and for a location that is not allowed, the setting that allows it.
URL passwords are masked. Without it (`replay` into a verdict topic) error verdicts carry only the fixed
sentence, as the worker's do.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import structlog
from prometheus_client import CollectorRegistry

from runtime.cli_errors import one_line
from schemas.events import ChatEvent, ErrorInfo, ModelRef, Verdict
from workers.content_key import content_key
from workers.emit import cut, error_verdict, ok_verdict
from workers.errors import GuardstreamError, ImageNotAllowed, InputError, InternalError
from workers.fetch import FetchedImage, ImageFetcher
from workers.guard.base import GuardBackend, GuardRequest
from workers.guard_stage import GuardStage
from workers.metrics import WorkerMetrics
from workers.settings import FetchSettings, GuardSettings, point_policy

log = structlog.get_logger("guardstream.offline")

DETAIL_CHARS = 2000
FILE_ROOT_HINT = ("file:// images are read only under fetch.file_root, by default offline the input file's folder; "
                  "to allow this one, set GUARDSTREAM_FETCH__FILE_ROOT to a folder that holds it")


@dataclass
class _Prepared:
    event: ChatEvent
    images: list[FetchedImage] = field(default_factory=list)
    error: GuardstreamError | None = None
    timings: dict[str, float] = field(default_factory=dict)


class OfflineModerator:
    """Judge events in batches of `guard settings`' backend; the caller owns `backend` (and closes it)."""

    def __init__(self, backend: GuardBackend, guard: GuardSettings, fetch: FetchSettings,
                 details: bool = False) -> None:
        """`details`: error verdicts say in full what went wrong (see the module's docstring)."""
        self.backend = backend
        self.details = details
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
        requests = [GuardRequest(text=p.event.text, images=[i.image for i in p.images], response=p.event.response,
                                 operating_point=self.guard.operating_point_for(p.event.tenant))
                    for p in ready]
        outcomes = await self.stage.run(requests) if requests else []
        guard_ms = round((time.monotonic() - started) * 1000, 2)
        judged = dict(zip((id(p) for p in ready), outcomes, strict=True))
        verdicts = []
        for p in prepared:
            point = self.guard.operating_point_for(p.event.tenant)
            policy = point_policy(self.guard.policy_version, point)
            outcome = judged.get(id(p), p.error)
            if isinstance(outcome, GuardstreamError) or outcome is None:
                verdicts.append(self._error_verdict(p.event, outcome or InternalError("no outcome"), p.timings))
                continue
            key = content_key(p.event.text, p.event.response, [i.sha256 for i in p.images], self.model.name,
                              self.model.version, policy)
            verdicts.append(ok_verdict(p.event, outcome, self.model, policy, key, False,
                                       {**p.timings, "guard_ms": guard_ms}, operating_point=point))
        return verdicts

    def unread(self, event_id: str, problem: str) -> Verdict:
        """The error verdict of an input line that is not an event; `problem` says why (its line and field)."""
        event = ChatEvent.model_construct(event_id=event_id, conversation_id=event_id, tenant="default")
        return self._error_verdict(event, InputError(problem), {})

    def _error_verdict(self, event: ChatEvent, error: GuardstreamError, timings: dict[str, float]) -> Verdict:
        point = self.guard.operating_point_for(event.tenant)
        verdict = error_verdict(event, error, self.model, point_policy(self.guard.policy_version, point), timings,
                                operating_point=point)
        if not self.details:
            return verdict
        detail = one_line(str(error))
        if isinstance(error, ImageNotAllowed) and any(ref.uri.startswith("file:") for ref in event.images):
            detail = f"{detail}; {FILE_ROOT_HINT}"
        message = cut(f"{error.summary}: {detail}", DETAIL_CHARS)
        return verdict.model_copy(update={"error": ErrorInfo(code=error.code, message=message,
                                                             retriable=error.retriable)})

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
