"""What the worker's settings name for a service to check at start: the brokers, Redis when the cache is on
(not required: events are answered without it), an S3 endpoint when one is set (not required either)."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from runtime.dependencies import Dependency, kafka_dependency
from runtime.settings import ENV_PREFIX
from topics.settings import KafkaSettings
from workers.settings import CacheSettings, FetchSettings


def redis_dependency(cache: CacheSettings) -> Dependency:
    from workers.cache import redact_url

    url = cache.redis_url.get_secret_value()

    async def probe(timeout_s: float) -> None:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        try:
            await client.ping()
        finally:
            await client.aclose()

    return Dependency(f"Redis at {redact_url(url)}", f"start it, set {ENV_PREFIX}CACHE__REDIS_URL, or run without "
                      f"the cache ({ENV_PREFIX}CACHE__ENABLED=false)", probe,
                      degraded="events are answered without the cache until Redis answers")


def s3_dependency(fetch: FetchSettings) -> Dependency | None:
    """The configured S3 endpoint (a TCP connection: the endpoint answers; buckets and keys are the jobs' own
    checks), or None when none is set."""
    if not fetch.s3_endpoint:
        return None
    parts = urlsplit(fetch.s3_endpoint if "://" in fetch.s3_endpoint else f"https://{fetch.s3_endpoint}")
    host = parts.hostname or ""
    try:
        port = parts.port or (80 if parts.scheme == "http" else 443)
    except ValueError:
        port = 443

    async def probe(_: float) -> None:
        _, writer = await asyncio.open_connection(host, port)
        writer.close()
        await writer.wait_closed()

    return Dependency(f"the S3 endpoint at {host}:{port}", f"start it, or set {ENV_PREFIX}FETCH__S3_ENDPOINT", probe,
                      degraded="it rides out the outage as it would after start")


def service_dependencies(kafka: KafkaSettings | None = None, cache: CacheSettings | None = None,
                         fetch: FetchSettings | None = None, *more: Dependency | None) -> list[Dependency]:
    """The dependencies a service's settings name: brokers, Redis when the cache is on, an S3 endpoint when set."""
    found: list[Dependency | None] = [
        kafka_dependency(kafka) if kafka is not None else None,
        redis_dependency(cache) if cache is not None and cache.enabled else None,
        s3_dependency(fetch) if fetch is not None else None,
        *more,
    ]
    return [d for d in found if d is not None]


