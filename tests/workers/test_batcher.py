"""The micro-batcher closes batches on size or time and bounds the batches in flight."""

from __future__ import annotations

import asyncio

import pytest

from workers.batcher import BatcherClosed, MicroBatcher


class Recorder:
    def __init__(self, hold: asyncio.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.running = 0
        self.max_running = 0
        self.hold = hold

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        if self.hold:
            await self.hold.wait()
        self.running -= 1
        return [i * 10 for i in items]


async def test_a_batch_closes_at_max_batch() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder, max_batch=4, max_wait_ms=10_000, max_batches_in_flight=2)
    batcher.start()
    results = await asyncio.gather(*(batcher.submit(i) for i in range(8)))
    await batcher.close()
    assert results == [i * 10 for i in range(8)]
    assert recorder.batches == [[0, 1, 2, 3], [4, 5, 6, 7]]


async def test_a_partial_batch_closes_at_max_wait() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder, max_batch=100, max_wait_ms=30, max_batches_in_flight=1)
    batcher.start()
    assert await asyncio.wait_for(asyncio.gather(batcher.submit(1), batcher.submit(2)), 5) == [10, 20]
    await batcher.close()
    assert recorder.batches == [[1, 2]]


async def test_batches_in_flight_are_bounded() -> None:
    hold = asyncio.Event()
    recorder = Recorder(hold)
    batcher = MicroBatcher(recorder, max_batch=1, max_wait_ms=0, max_batches_in_flight=2)
    batcher.start()
    waiting = [asyncio.create_task(batcher.submit(i)) for i in range(5)]
    await asyncio.sleep(0.1)
    assert recorder.max_running == 2 and len(recorder.batches) == 2
    hold.set()
    assert await asyncio.gather(*waiting) == [0, 10, 20, 30, 40]
    await batcher.close()
    assert recorder.max_running == 2


async def test_a_failing_batch_fails_each_of_its_items_and_the_batcher_goes_on() -> None:
    calls = 0

    async def flaky(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return items

    batcher = MicroBatcher(flaky, max_batch=2, max_wait_ms=1_000, max_batches_in_flight=1)
    batcher.start()
    first = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in first)
    assert await asyncio.gather(batcher.submit(3), batcher.submit(4)) == [3, 4]
    await batcher.close()
    with pytest.raises(BatcherClosed):
        await batcher.submit(5)
