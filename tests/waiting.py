"""Waiting in tests on a condition, never on a guessed duration."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

POLL_S = 0.005


class ConditionNotMet(AssertionError):
    pass


async def wait_until(condition: Callable[[], object], timeout_s: float = 30, what: str = "") -> None:
    """Return as soon as `condition()` is true (checked every few milliseconds); fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise ConditionNotMet(f"not met after {timeout_s}s: {what or condition}")
        await asyncio.sleep(POLL_S)
