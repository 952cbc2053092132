"""The worker with each dependency behind a fault proxy: Redis, the S3 server and the guard backend failing
mid-stream. What the README promises is asserted for each: every event answered (an error verdict with the
right code where no answer can be had), nothing skipped, the partitions keep moving, and /readyz and the
`guardstream_dependency_up` gauge say what is wrong while it is wrong, and stop saying it once it is not."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator

import aiohttp
import pytest
import redis

from runtime.dependency_state import GUARD_BACKEND, OBJECT_STORAGE, REDIS
from schemas.events import ChatEvent, Verdict
from tests.conftest import committed_and_end, running_worker, verdicts_covering
from tests.factories import BENIGN, HARMFUL, event, image_ref, png
from tests.fault_proxy import FaultProxy, fault_proxy
from tests.waiting import wait_until
from topics.io import produce_events
from workers.cache import RedisCache
from workers.errors import BackendError
from workers.guard.base import GuardOutcome, GuardRequest
from workers.metrics import WorkerMetrics
from workers.settings import WorkerSettings
from workers.worker import Worker


def texts(tag: str, n: int = 12) -> list[ChatEvent]:
    pool = BENIGN + HARMFUL
    return [event(f"{pool[i % len(pool)]} ({tag} {i})", conversation=f"{tag}{i % 5}") for i in range(n)]


async def answer(settings: WorkerSettings, events: list[ChatEvent]) -> dict[str, Verdict]:
    await produce_events(settings.kafka.bootstrap_servers, f"{settings.kafka.topic_prefix}chat.events", events)
    verdicts = await verdicts_covering(settings, {e.event_id for e in events})
    return {v.event_id: v for v in verdicts if v.event_id in {e.event_id for e in events}}


def up(worker: Worker, dependency: str) -> float | None:
    return worker.metrics.registry.get_sample_value("guardstream_dependency_up", {"dependency": dependency})


async def readyz(worker: Worker) -> tuple[int, dict[str, object]]:
    assert worker.health is not None
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{worker.health.port}/readyz") as response:
        return response.status, await response.json()


async def everything_committed(settings: WorkerSettings, produced: int) -> None:
    async def caught_up() -> bool:
        committed, ends = await committed_and_end(settings, produced)
        return committed == ends

    for _ in range(200):
        if await caught_up():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the group's commits did not reach the end of every partition")


def cached_keys(url: str, prefix: str) -> int:
    with redis.Redis.from_url(url) as client:
        return sum(1 for _ in client.scan_iter(f"{prefix}:*"))


@pytest.fixture
def redis_proxy(settings: WorkerSettings, redis_url: str) -> Iterator[FaultProxy]:
    with fault_proxy(redis_url) as proxy:
        settings.cache.redis_url = f"redis://{proxy.address}/0"  # type: ignore[assignment]
        yield proxy


async def test_redis_cut_mid_stream_answers_uncached_then_writes_the_cache_again(
        settings: WorkerSettings, redis_url: str, redis_proxy: FaultProxy, lite_guard) -> None:
    prefix = settings.cache.key_prefix
    before, during, after = texts("before"), texts("during"), texts("after")
    metrics = WorkerMetrics()
    cache = RedisCache(settings.cache, metrics)
    async with running_worker(settings, lite_guard, cache=cache, metrics=metrics) as worker:
        await answer(settings, before)
        written_before = cached_keys(redis_url, prefix)
        assert written_before >= len(before) and up(worker, REDIS) == 1
        with redis_proxy.fault("refuse"):
            answered = await answer(settings, during + [event(e.text, conversation="again") for e in before])
            assert all(v.status.value == "ok" and not v.cache_hit for v in answered.values())
            assert up(worker, REDIS) == 0
            assert worker.ready and any(d.startswith("redis failing") for d in worker.degraded())
            assert cached_keys(redis_url, prefix) == written_before  # nothing reached Redis
        await wait_until(lambda: cache.retrying, 10, "Redis is tried again (cache.retry_after_s)")
        answered_after = await answer(settings, after)
        await wait_until(lambda: cached_keys(redis_url, prefix) >= written_before + len(after), 10,
                         "the answers after the outage are written to Redis again")
        again = await answer(settings, [event(e.text, conversation="third") for e in after])
    assert all(v.status.value == "ok" for v in answered_after.values())
    assert all(v.cache_hit for v in again.values()), "the cache written after the outage is read again"
    assert up(worker, REDIS) == 1 and not worker.degraded()


async def test_redis_slower_than_its_socket_timeout_costs_the_cache_not_the_answers(
        settings: WorkerSettings, redis_proxy: FaultProxy, lite_guard) -> None:
    settings.cache.socket_timeout_s = 0.2
    events = texts("slow", 20)
    async with running_worker(settings, lite_guard) as worker:
        with redis_proxy.fault("delay", 1.0):
            answered = await answer(settings, events)
            assert worker.degraded(), "a Redis past its timeout is reported while it lasts"
        errors = worker.metrics.registry.get_sample_value("guardstream_cache_errors_total")
    assert set(answered) == {e.event_id for e in events}
    assert all(v.status.value == "ok" and not v.cache_hit for v in answered.values())
    assert errors >= 1


@pytest.fixture
def s3_proxy(settings: WorkerSettings, s3) -> Iterator[FaultProxy]:
    with fault_proxy(s3.endpoint) as proxy:
        settings.fetch.s3_endpoint = f"http://{proxy.address}"
        settings.fetch.timeout_s = 0.5
        settings.fetch.max_attempts = 3
        settings.observability.health_enabled = True
        settings.observability.health_port = 0
        yield proxy


def image_events(s3, tag: str, n: int = 4) -> list[ChatEvent]:
    made = []
    for i in range(n):
        data = png(colour=(i * 40 % 255, 90, 200))
        uri = s3.put(f"{tag}/{uuid.uuid4().hex}.png", data)
        made.append(event(f"what is in this picture? ({tag} {i})", images=[image_ref(uri)], conversation=tag))
    return made


@pytest.mark.parametrize("fault", ["refuse", "reset", "blackhole", "http_500"])
async def test_object_storage_failing_gives_fetch_unavailable_after_retries_then_recovers(
        settings: WorkerSettings, s3, s3_proxy: FaultProxy, lite_guard, fault: str) -> None:
    ok_before, failing, ok_after = image_events(s3, "before", 2), image_events(s3, "down", 3), image_events(s3, "up", 3)
    async with running_worker(settings, lite_guard) as worker:
        assert all(v.status.value == "ok" for v in (await answer(settings, ok_before)).values())
        with s3_proxy.fault(fault):
            tried_before = s3_proxy.connections
            answered = await answer(settings, failing)
            tries = s3_proxy.connections - tried_before
            status, body = await readyz(worker)
            assert status == 503 and any(p.startswith(f"{OBJECT_STORAGE} failing") for p in body["problems"])
            assert up(worker, OBJECT_STORAGE) == 0
        recovered = await answer(settings, ok_after)
        status_after, body_after = await readyz(worker)
    assert {v.error.code for v in answered.values() if v.error} == {"fetch_unavailable"}
    assert all(len(v.error.message) < 500 for v in answered.values() if v.error), "one line, not a debug dump"
    assert len(answered) == len(failing)
    if fault in ("reset", "http_500"):  # faults that accept connections: each try is one
        assert tries >= len(failing) * settings.fetch.max_attempts, "each fetch was retried up to max_attempts"
    assert all(v.status.value == "ok" for v in recovered.values())
    assert status_after == 200 and body_after["problems"] == [] and up(worker, OBJECT_STORAGE) == 1


async def test_a_missing_object_is_the_events_error_not_the_stores(settings: WorkerSettings, s3, s3_proxy, lite_guard) -> None:
    missing = [event("look", images=[image_ref(f"s3://{s3.bucket}/nowhere/{uuid.uuid4().hex}.png")])]
    async with running_worker(settings, lite_guard) as worker:
        answered = await answer(settings, missing + image_events(s3, "present", 2))
        status, _ = await readyz(worker)
    assert Counter(v.error.code if v.error else "ok" for v in answered.values()) == {"image_not_found": 1, "ok": 2}
    assert status == 200 and up(worker, OBJECT_STORAGE) == 1


class ScriptedFailures:
    """The lite guard, made to fail on demand: raise, hang past the stage's timeout, or answer one result too few."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = "scripted"
        self.mode = "ok"

    async def moderate(self, requests: list[GuardRequest]) -> list[GuardOutcome]:
        if self.mode == "raise":
            raise BackendError("the model server answered 503")
        if self.mode == "hang":
            await asyncio.Event().wait()
        answers = await self.inner.moderate(requests)
        return answers[:-1] if self.mode == "short" else answers

    async def close(self) -> None:
        pass


@pytest.mark.parametrize(("mode", "code"), [("raise", "backend_failed"), ("hang", "backend_timeout"),
                                            ("short", "backend_failed")])
async def test_a_failing_guard_backend_gives_typed_errors_and_the_stream_moves_on(
        settings: WorkerSettings, lite_guard, mode: str, code: str) -> None:
    settings.guard.timeout_s, settings.guard.max_attempts, settings.guard.backoff_base_s = 0.3, 2, 0.01
    backend = ScriptedFailures(lite_guard)
    down, after = texts("down", 6), texts("after", 6)
    async with running_worker(settings, backend) as worker:
        backend.mode = mode
        failed = await answer(settings, down)
        assert not worker.ready and any(p.startswith(f"{GUARD_BACKEND} failing") for p in worker.problems())
        backend.mode = "ok"
        answered = await answer(settings, after)
        await everything_committed(settings, len(down) + len(after))
        assert worker.ready and up(worker, GUARD_BACKEND) == 1
    assert {v.error.code for v in failed.values() if v.error} == {code} and len(failed) == len(down)
    assert all(v.status.value == "ok" for v in answered.values())

