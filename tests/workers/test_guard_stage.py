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


async def test_a_backends_own_deadline_is_a_timeout_too() -> None:
    class OwnDeadline(ScriptedBackend):
        async def moderate(self, requests: list[GuardRequest]) -> list[GuardResult]:
            raise TimeoutError("read timed out")

    results = await stage(OwnDeadline(), max_attempts=1).run([GuardRequest("a")])
    assert isinstance(results[0], BackendTimeout) and "TimeoutError: read timed out" in str(results[0])


LIMIT_S = 10  # only keeps a failing test from hanging; a passing one never comes near it


class StuckBackend:
    """A call that never ends by itself: it waits for `release`. When cancelled it either raises its own
    error (`on_cancel`) or, if `stubborn`, ignores the cancel and keeps waiting."""

    name = "stuck"

    def __init__(self, stubborn: bool = False, on_cancel: Exception | None = None) -> None:
        self.calls = 0
        self.release = asyncio.Event()
        self.ended = asyncio.Event()
        self.stubborn = stubborn
        self.on_cancel = on_cancel

    async def moderate(self, requests: list[GuardRequest]) -> list[GuardResult]:
        self.calls += 1
        try:
            while not self.release.is_set():
                try:
                    await self.release.wait()
                except asyncio.CancelledError:
                    if self.on_cancel is not None:
                        raise self.on_cancel from None
                    if not self.stubborn:
                        raise
            return [GuardResult(False, None, f"ok {r.text}", self.name) for r in requests]
        finally:
            self.ended.set()

    async def close(self) -> None:
        return None


async def run_bounded(guard: GuardStage, requests: list[GuardRequest]) -> list[object]:
    running = asyncio.create_task(guard.run(requests))
    done, _ = await asyncio.wait({running}, timeout=LIMIT_S)
    assert running in done, "the stage waited for a call past its timeout"
    return list(running.result())


def stuck_stage(backend: StuckBackend) -> GuardStage:
    return GuardStage(backend, GuardSettings(backoff_base_s=0, timeout_s=0.05, max_attempts=1),  # type: ignore[arg-type]
                      WorkerMetrics())


async def test_a_call_that_fails_when_cancelled_is_still_reported_as_a_timeout() -> None:
    backend = StuckBackend(on_cancel=ConnectionResetError("reset while cancelling"))
    [outcome] = await run_bounded(stuck_stage(backend), [GuardRequest("a")])
    assert isinstance(outcome, BackendTimeout) and "took over 0.05s" in str(outcome)


async def test_a_backend_that_ignores_cancellation_does_not_hold_the_stage() -> None:
    backend = StuckBackend(stubborn=True)
    [outcome] = await run_bounded(stuck_stage(backend), [GuardRequest("a")])
    assert isinstance(outcome, BackendTimeout) and not backend.ended.is_set()
    backend.release.set()
    await backend.ended.wait()


async def test_no_call_starts_while_an_abandoned_one_still_runs() -> None:
    backend = StuckBackend(stubborn=True)
    guard = stuck_stage(backend)
    first = await run_bounded(guard, [GuardRequest("a")])
    second = await run_bounded(guard, [GuardRequest("b")])
    assert isinstance(first[0], BackendTimeout) and isinstance(second[0], BackendTimeout)
    assert "still running a call abandoned earlier" in str(second[0]) and backend.calls == 1
    backend.release.set()
    await backend.ended.wait()
    third = await run_bounded(guard, [GuardRequest("c")])
    assert backend.calls == 2 and [r.reasoning for r in third] == ["ok c"]  # type: ignore[attr-defined]
