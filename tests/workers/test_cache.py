"""The result cache against a real Redis; a dead Redis degrades to misses without raising."""

from __future__ import annotations

import uuid

import redis

from topics.local_broker import free_loopback_port
from workers.cache import RESULT_FORMAT, MemoryCache, RedisCache, cache_key
from workers.guard.base import GuardResult
from workers.metrics import WorkerMetrics
from workers.settings import CacheSettings

RESULT = GuardResult(True, False, "because", "lite", request_score=0.9, response_score=0.1)


async def test_results_round_trip_with_a_ttl(redis_url: str) -> None:
    settings = CacheSettings(redis_url=redis_url, ttl_s=120)
    cache = RedisCache(settings, WorkerMetrics())
    key = cache_key(f"t-{uuid.uuid4().hex}", "lite", "1", "p1", "abc")
    await cache.put_many({key: RESULT})
    assert await cache.get_many([key, key + "-missing"]) == {key: RESULT}
    assert 0 < redis.Redis.from_url(redis_url).ttl(key) <= 120
    await cache.close()


def test_keys_carry_model_and_policy_versions() -> None:
    keys = {cache_key("gs", "m", v, p, "c") for v in ("1", "2") for p in ("p1", "p2")}
    assert len(keys) == 4 and all(k.startswith(f"gs:r{RESULT_FORMAT}:m:") for k in keys)


async def test_an_unreachable_redis_degrades_to_misses_and_is_counted() -> None:
    metrics = WorkerMetrics()
    settings = CacheSettings(redis_url=f"redis://127.0.0.1:{free_loopback_port()}/0", socket_timeout_s=0.2,
                             retry_after_s=60)
    cache = RedisCache(settings, metrics)
    assert await cache.get_many(["a"]) == {}
    await cache.put_many({"a": RESULT})  # skipped while Redis is considered down
    assert await cache.get_many(["a"]) == {}
    assert metrics.registry.get_sample_value("guardstream_cache_errors_total") == 1
    assert not await cache.ping()
    await cache.close()


async def test_the_memory_cache_expires_entries() -> None:
    cache = MemoryCache(ttl_s=0)
    await cache.put_many({"a": RESULT})
    assert await cache.get_many(["a"]) == {}
    cache.ttl_s = 60
    await cache.put_many({"a": RESULT})
    assert await cache.get_many(["a"]) == {"a": RESULT}


def test_a_redis_url_is_logged_without_its_credentials() -> None:
    from workers.cache import redact_url

    assert redact_url("redis://:pw@127.0.0.1:6380/0") == "redis://***@127.0.0.1:6380/0"
    assert redact_url("redis://user:pw@127.0.0.1/0") == "redis://***@127.0.0.1/0"
    assert redact_url("redis://127.0.0.1:6379/0?password=pw") == "redis://127.0.0.1:6379/0?***"  # redis-py reads it
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
