"""Step 6: run the guard backend on a batch, with a timeout, retries and isolation of bad items.

A batch that keeps failing is retried item by item, so one poison input gets its own error and the
rest of the batch still gets answers: a partition never stalls on one bad event.

A call that runs past `timeout_s` is a BackendTimeout, always: it is cancelled and left behind, never
waited for (asyncio.wait_for waits until the call acknowledges its cancel, and on Python 3.11 reports
whatever the call raised meanwhile instead of the timeout). Abandoned calls cannot pile up: the thread
backends run on one thread of their own, which drops their queued calls when cancelled and stops a
running generation at its next step; and this stage starts no new call while one it abandoned is still
running (the new call's time counts from when it asked), so a backend that ignores cancellation holds
at most the calls that were in flight when it stuck, never one more per timeout.
"""

from __future__ import annotations

import asyncio

import structlog

from runtime.backoff import backoff_s
from runtime.dependency_state import GUARD_BACKEND
from workers.errors import BackendError, BackendTimeout
from workers.guard.base import GuardBackend, GuardOutcome, GuardRequest
from workers.metrics import WorkerMetrics
from workers.settings import GuardSettings

log = structlog.get_logger("guardstream.guard")


class GuardStage:
    def __init__(self, backend: GuardBackend, settings: GuardSettings, metrics: WorkerMetrics) -> None:
        self.backend = backend
        self.settings = settings
        self.metrics = metrics
        self._abandoned: set[asyncio.Future[list[GuardOutcome]]] = set()  # timed out or cancelled, still running

    async def run(self, requests: list[GuardRequest]) -> list[GuardOutcome]:
        self.metrics.batch_size.observe(len(requests))
        with self.metrics.stage_seconds.labels("guard").time():
            try:
                answers = list(await self._with_retries(requests, self.settings.max_attempts))
            except BackendError as exc:
                self.metrics.dependencies.failed(GUARD_BACKEND, exc)
                if len(requests) == 1:
                    return [exc]
                log.warning("batch_failed_isolating", size=len(requests), code=exc.code, error=str(exc))
                return [await self._single(r) for r in requests]
        self.metrics.dependencies.answered(GUARD_BACKEND)
        return answers

    async def _single(self, request: GuardRequest) -> GuardOutcome:
        try:
            answer = (await self._with_retries([request], 1))[0]
        except BackendError as exc:
            return exc
        self.metrics.dependencies.answered(GUARD_BACKEND)  # the batch failed on another item, not the backend
        return answer

    async def _with_retries(self, requests: list[GuardRequest], attempts: int) -> list[GuardOutcome]:
        attempt = 1
        while True:
            try:
                return await self._call(requests)
            except BackendError as exc:
                if attempt >= attempts:
                    raise
                delay = backoff_s(attempt, self.settings.backoff_base_s)
                self.metrics.backend_retries.inc()
                log.warning("backend_retry", attempt=attempt, code=exc.code, error=str(exc), delay_s=delay)
            await asyncio.sleep(delay)
            attempt += 1

    async def _call(self, requests: list[GuardRequest]) -> list[GuardOutcome]:
        deadline = asyncio.get_running_loop().time() + self.settings.timeout_s
        if not await _all_end_by(self._abandoned, deadline):
            raise BackendTimeout(f"{self.backend.name} is still running a call abandoned earlier")
        call = asyncio.ensure_future(self.backend.moderate(requests))
        try:
            ended = await _all_end_by({call}, deadline)
        except asyncio.CancelledError:
            self._abandon(call)
            raise
        if not ended:
            self._abandon(call)
            raise BackendTimeout(f"{self.backend.name} took over {self.settings.timeout_s}s")
        return self._answers(call, len(requests))

    def _abandon(self, call: asyncio.Future[list[GuardOutcome]]) -> None:
        call.cancel()
        self._abandoned.add(call)
        call.add_done_callback(self._abandoned_ended)

    def _abandoned_ended(self, call: asyncio.Future[list[GuardOutcome]]) -> None:
        self._abandoned.discard(call)
        error = None if call.cancelled() else call.exception()  # retrieved, so asyncio does not warn about it
        log.info("abandoned_call_ended", backend=self.backend.name, cancelled=call.cancelled(),
                 error=None if error is None else f"{type(error).__name__}: {error}")

    def _answers(self, call: asyncio.Future[list[GuardOutcome]], expected: int) -> list[GuardOutcome]:
        """The call's outcomes; its own failure wrapped at the boundary as a BackendError."""
        name = self.backend.name
        try:
            results = call.result()
        except BackendError:
            raise
        except TimeoutError as exc:  # the backend's own deadline (a socket's, say)
            raise BackendTimeout(f"{name}: {type(exc).__name__}: {exc}") from exc
        except asyncio.CancelledError as exc:  # cancelled by someone else: not this stage's cancel
            raise BackendError(f"{name}: its call was cancelled") from exc
        except Exception as exc:
            raise BackendError(f"{name}: {type(exc).__name__}: {exc}") from exc
        if len(results) != expected:
            raise BackendError(f"{name} answered {len(results)} of {expected} requests")
        return results


async def _all_end_by(calls: set[asyncio.Future[list[GuardOutcome]]], deadline: float) -> bool:
    """Whether all `calls` end by `deadline` (loop time); waits no longer, cancels nothing."""
    if not calls:
        return True
    _, pending = await asyncio.wait(set(calls), timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
    return not pending
