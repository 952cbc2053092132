"""The README's demo command, run small, and its cache choice."""

from __future__ import annotations

import re

import pytest

from guardstream.demo import choose_cache, run_demo
from topics.local_broker import free_loopback_port
from workers.cache import MemoryCache, RedisCache
from workers.metrics import WorkerMetrics
from workers.settings import CacheSettings


async def test_the_demo_answers_every_event_and_prints_verdicts_with_reasoning(capsys: pytest.CaptureFixture[str]) -> None:
    await run_demo(count=32, show=12)  # two cycles of the 16 samples: the second wave repeats the first
    out = capsys.readouterr().out
    assert "harmful-text" in out and "nsfw" in out  # evidence lines (cells wrap, so single words)
    assert re.search(r"verdicts\s+│\s+33 \(32 ok, 1 error\)", out)  # 32 samples + the image outside the root
    assert re.search(r"dead letters\s+│\s+4 ", out)  # 3 undecodable records + that image
    assert re.search(r"cache hits\s+│\s+16 ", out)


async def test_the_demo_uses_redis_when_it_answers_and_memory_otherwise(redis_url: str) -> None:
    assert isinstance(await choose_cache(CacheSettings(redis_url=redis_url), WorkerMetrics()), RedisCache)
    dead = CacheSettings(redis_url=f"redis://127.0.0.1:{free_loopback_port()}/0", socket_timeout_s=0.2)
    assert isinstance(await choose_cache(dead, WorkerMetrics()), MemoryCache)
