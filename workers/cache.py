"""Step 3b: answers for content keys already judged, in Redis (or in process when there is no Redis).

Keys carry the model name, model version and policy version, so a new model or policy never reads an
old one's answers, and the format of the stored result (`RESULT_FORMAT`, a digest of GuardResult's
fields), so a version that stores more or fewer fields (an upgrade, or the rollback after it) never
reads the other's entries. An entry that still cannot be read counts as a miss and is overwritten.
A Redis failure never stops the worker: the lookup counts as a miss, the write is
skipped, the error is logged and counted, and Redis is left alone for `retry_after_s`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Iterable
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from runtime.dependency_state import REDIS
from workers.guard.base import GuardResult
from workers.metrics import WorkerMetrics
from workers.settings import CacheSettings

log = structlog.get_logger("guardstream.cache")


class ResultCache(Protocol):
    description: str

    async def get_many(self, keys: list[str]) -> dict[str, GuardResult]: ...

    async def put_many(self, items: dict[str, GuardResult]) -> None: ...

    async def close(self) -> None: ...


def _result_format() -> str:
    described = ",".join(f"{f.name}:{f.type}" for f in dataclasses.fields(GuardResult))
    return hashlib.sha256(described.encode()).hexdigest()[:8]


RESULT_FORMAT = _result_format()


def cache_key(prefix: str, model_name: str, model_version: str, policy_version: str, content_key: str) -> str:
    return f"{prefix}:r{RESULT_FORMAT}:{model_name}:{model_version}:{policy_version}:{content_key}"


def read_entries(keys: list[str], values: list[bytes | None], metrics: WorkerMetrics) -> dict[str, GuardResult]:
    """The entries that parse as this version's GuardResult; the others count as misses."""
    found: dict[str, GuardResult] = {}
    for key, value in zip(keys, values, strict=True):
        if value is None:
            continue
        try:
            found[key] = GuardResult.from_json(value)
        except (ValueError, TypeError) as exc:
            metrics.cache_unreadable.inc()
            log.warning("cache_entry_unreadable", key=key, error=f"{type(exc).__name__}: {str(exc)[:200]}")
    return found


def redact_url(url: str) -> str:
    """The URL without its user, password or query (redis-py also reads `?password=`), fit for logs."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.username is not None or parts.password is not None:
        netloc = f"***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc, query="***" if parts.query else ""))


class RedisCache:
    def __init__(self, settings: CacheSettings, metrics: WorkerMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        url = settings.redis_url.get_secret_value()
        self.description = f"redis ({redact_url(url)})"
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=settings.socket_timeout_s,
            socket_connect_timeout=settings.socket_timeout_s,
        )
        self._down_until = 0.0

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def get_many(self, keys: list[str]) -> dict[str, GuardResult]:
        if not keys or self._skipping():
            return {}
        try:
            values = await self._redis.mget(keys)
        except (RedisError, OSError) as exc:
            self._degrade("get", exc)
            return {}
        self.metrics.dependencies.answered(REDIS)
        return read_entries(keys, values, self.metrics)

    async def put_many(self, items: dict[str, GuardResult]) -> None:
        if not items or self._skipping():
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, result in items.items():
                    pipe.set(key, result.to_json(), ex=self.settings.ttl_s)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._degrade("put", exc)
            return
        self.metrics.dependencies.answered(REDIS)

    async def close(self) -> None:
        await self._redis.aclose()

    @property
    def retrying(self) -> bool:
        """True once an error's `retry_after_s` has passed (or there was none): the next call goes to Redis."""
        return not self._skipping()

    def _skipping(self) -> bool:
        return time.monotonic() < self._down_until

    def _degrade(self, operation: str, exc: BaseException) -> None:
        self.metrics.cache_errors.inc()
        self.metrics.dependencies.failed(REDIS, exc)
        self._down_until = time.monotonic() + self.settings.retry_after_s
        log.warning("cache_degraded", operation=operation, error=f"{type(exc).__name__}: {exc}",
                    retry_after_s=self.settings.retry_after_s)


class MemoryCache:
    """In-process cache with the same TTL rule, for a machine without Redis (the demo says when)."""

    description = "in-process memory (no Redis reachable)"

    def __init__(self, ttl_s: int) -> None:
        self.ttl_s = ttl_s
        self._items: dict[str, tuple[float, GuardResult]] = {}

    async def get_many(self, keys: list[str]) -> dict[str, GuardResult]:
        now = time.monotonic()
        return {k: v for k, (expires, v) in self._live(keys, now)}

    def _live(self, keys: Iterable[str], now: float) -> Iterable[tuple[str, tuple[float, GuardResult]]]:
        for k in keys:
            entry = self._items.get(k)
            if entry is not None and entry[0] > now:
                yield k, entry

    async def put_many(self, items: dict[str, GuardResult]) -> None:
        expires = time.monotonic() + self.ttl_s
        self._items.update({k: (expires, v) for k, v in items.items()})

    async def close(self) -> None:
        self._items.clear()


class NoCache:
    description = "disabled"

    async def get_many(self, keys: list[str]) -> dict[str, GuardResult]:
        return {}

    async def put_many(self, items: dict[str, GuardResult]) -> None:
        return None

    async def close(self) -> None:
        return None
