"""Retries, timeouts and isolation of a poison item. The backend here is a scripted stand-in, on purpose:
the point is what the stage does when a backend fails in ways a real model rarely does on demand."""

from __future__ import annotations

import asyncio

from workers.errors import BackendError, BackendTimeout
from workers.guard.base import GuardRequest, GuardResult
from workers.guard_stage import GuardStage
from workers.metrics import WorkerMetrics
from workers.settings import GuardSettings


class ScriptedBackend:
    name = "scripted"

    def __init__(self, fail_first: int = 0, poison: str | None = None, sleep_s: float = 0) -> None:
        self.calls: list[list[str]] = []
        self.fail_first = fail_first
        self.poison = poison
        self.sleep_s = sleep_s

    async def moderate(self, requests: list[GuardRequest]) -> list[GuardResult]:
        self.calls.append([r.text for r in requests])
        await asyncio.sleep(self.sleep_s)
        if len(self.calls) <= self.fail_first:
            raise ConnectionError("transient")
        if any(r.text == self.poison for r in requests):
            raise ValueError("cannot handle this input")
        return [GuardResult(False, None, f"ok {r.text}", self.name) for r in requests]

    async def close(self) -> None:
        return None


def stage(backend: ScriptedBackend, **settings: float) -> GuardStage:
    return GuardStage(backend, GuardSettings(backoff_base_s=0, **settings), WorkerMetrics())  # type: ignore[arg-type]


async def test_transient_failures_are_retried() -> None:
    backend = ScriptedBackend(fail_first=2)
    results = await stage(backend).run([GuardRequest("a"), GuardRequest("b")])
    assert [r.reasoning for r in results] == ["ok a", "ok b"]  # type: ignore[union-attr]
    assert len(backend.calls) == 3


async def test_a_poison_item_fails_alone_and_the_rest_are_answered() -> None:
    backend = ScriptedBackend(poison="bad")
    results = await stage(backend).run([GuardRequest("a"), GuardRequest("bad"), GuardRequest("c")])
    assert isinstance(results[1], BackendError) and "cannot handle" in str(results[1])
    assert [r.reasoning for r in (results[0], results[2])] == ["ok a", "ok c"]  # type: ignore[union-attr]


async def test_a_slow_backend_times_out_with_a_typed_error() -> None:
    results = await stage(ScriptedBackend(sleep_s=1), timeout_s=0.05, max_attempts=1).run([GuardRequest("a")])
    assert isinstance(results[0], BackendTimeout) and results[0].retriable
