"""Identical keys in flight share one computation: the first caller runs it, the rest await its result."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    def __init__(self) -> None:
        self._calls: dict[K, asyncio.Future[V]] = {}

    def __len__(self) -> int:
        return len(self._calls)

    async def do(self, key: K, fn: Callable[[], Awaitable[V]]) -> tuple[V, bool]:
        """Return fn's result and whether it was shared with an earlier caller of the same key."""
        existing = self._calls.get(key)
        if existing is not None:
            return await asyncio.shield(existing), True
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._calls[key] = future
        try:
            result = await fn()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: followers re-raise it, a lone leader must not warn
            raise
        else:
            future.set_result(result)
            return result, False
        finally:
            del self._calls[key]
