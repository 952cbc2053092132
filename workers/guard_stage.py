"""Step 6: run the guard backend on a batch, with a timeout, retries and isolation of bad items.

A batch that keeps failing is retried item by item, so one poison input gets its own error and the
rest of the batch still gets answers: a partition never stalls on one bad event.
"""

from __future__ import annotations

import asyncio

import structlog

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

    async def run(self, requests: list[GuardRequest]) -> list[GuardOutcome]:
        self.metrics.batch_size.observe(len(requests))
        with self.metrics.stage_seconds.labels("guard").time():
            try:
                return list(await self._with_retries(requests, self.settings.max_attempts))
            except BackendError as exc:
                if len(requests) == 1:
                    return [exc]
                log.warning("batch_failed_isolating", size=len(requests), code=exc.code, error=str(exc))
                return [await self._single(r) for r in requests]

    async def _single(self, request: GuardRequest) -> GuardOutcome:
        try:
            return (await self._with_retries([request], 1))[0]
        except BackendError as exc:
            return exc

    async def _with_retries(self, requests: list[GuardRequest], attempts: int) -> list[GuardOutcome]:
        attempt = 1
        while True:
            try:
                return await self._call(requests)
            except BackendError as exc:
                if attempt >= attempts:
                    raise
                delay = self.settings.backoff_base_s * 2 ** (attempt - 1)
                self.metrics.backend_retries.inc()
                log.warning("backend_retry", attempt=attempt, code=exc.code, error=str(exc), delay_s=delay)
            await asyncio.sleep(delay)
            attempt += 1

    async def _call(self, requests: list[GuardRequest]) -> list[GuardOutcome]:
        try:
            results = await asyncio.wait_for(self.backend.moderate(requests), self.settings.timeout_s)
        except TimeoutError as exc:
            raise BackendTimeout(f"{self.backend.name} took over {self.settings.timeout_s}s") from exc
        except BackendError:
            raise
        except Exception as exc:  # a backend's own failure, wrapped at the boundary
            raise BackendError(f"{self.backend.name}: {type(exc).__name__}: {exc}") from exc
        if len(results) != len(requests):
            raise BackendError(f"{self.backend.name} answered {len(results)} of {len(requests)} requests")
        return results
