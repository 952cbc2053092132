"""The micro-batcher closes batches on size or time and bounds the batches in flight."""

from __future__ import annotations

import asyncio

import pytest

from tests.waiting import wait_until
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


async def test_an_idle_batcher_starts_a_batch_at_once() -> None:
    """dispatch_when_idle: with no batch running, the wait for company buys nothing (max_wait is 10 s here)."""
    batcher = MicroBatcher(Recorder(), max_batch=16, max_wait_ms=10_000, max_batches_in_flight=2,
                           dispatch_when_idle=True)
    batcher.start()
    assert await asyncio.wait_for(batcher.submit(1), LIMIT_S / 2) == 10
    await batcher.close()


async def test_a_forming_batch_closes_when_the_running_one_ends() -> None:
    """While a batch runs, the next one collects what arrives; it starts the moment the device is free,
    not at max_wait, and takes everything that came meanwhile."""
    hold = asyncio.Event()
    recorder = Recorder(hold)
    batcher = MicroBatcher(recorder, max_batch=16, max_wait_ms=10_000, max_batches_in_flight=2,
                           dispatch_when_idle=True)
    batcher.start()
    first = asyncio.create_task(batcher.submit(1))
    await wait_until(lambda: recorder.running == 1, timeout_s=LIMIT_S, what="the first batch runs")
    later = [asyncio.create_task(batcher.submit(i)) for i in (2, 3, 4)]
    await wait_until(lambda: batcher.queued == 0, timeout_s=LIMIT_S, what="the items are collected")
    assert len(recorder.batches) == 1  # collected into a forming batch, which waits while the first runs
    hold.set()
    assert await asyncio.wait_for(asyncio.gather(first, *later), LIMIT_S / 2) == [10, 20, 30, 40]
    assert recorder.batches == [[1], [2, 3, 4]]
    await batcher.close()


async def test_batches_take_lanes_in_turn_and_each_lane_in_order() -> None:
    """A lane (a partition) whose items were queued first does not hold the batches while another waits."""
    recorder = Recorder()
    batcher = MicroBatcher(recorder, max_batch=4, max_wait_ms=10_000, max_batches_in_flight=1)
    waiting = [asyncio.create_task(batcher.submit(i, lane="a")) for i in range(6)]
    waiting += [asyncio.create_task(batcher.submit(i, lane="b")) for i in (100, 101)]
    await wait_until(lambda: batcher.queued == 8, timeout_s=LIMIT_S, what="all queued")
    batcher.start()
    assert await asyncio.wait_for(asyncio.gather(*waiting), LIMIT_S) == [i * 10 for i in [*range(6), 100, 101]]
    assert recorder.batches == [[0, 100, 1, 101], [2, 3, 4, 5]]
    await batcher.close()


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


class Stuck:
    """A batch that never finishes: it signals that it started, then waits for `release`, which a test
    sets only to clean up. With `stubborn`, it ignores cancellation, like a backend that will not stop."""

    def __init__(self, stubborn: bool = False) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.stubborn = stubborn

    async def __call__(self, items: list[int]) -> list[int]:
        self.started.set()
        while True:
            try:
                await self.release.wait()
                return items
            except asyncio.CancelledError:
                if not self.stubborn:
                    raise


LIMIT_S = 10  # only keeps a failing test from hanging; a passing one never comes near it


def started_one_at_a_time(stuck: Stuck, max_batch: int = 1) -> MicroBatcher[int, int]:
    """A started batcher that runs one batch at a time on `stuck`, closing a batch as soon as it can."""
    batcher = MicroBatcher(stuck, max_batch=max_batch, max_wait_ms=0, max_batches_in_flight=1)
    batcher.start()
    return batcher


async def closed_within(batcher: MicroBatcher[int, int], timeout_s: float) -> bool:
    """Whether close(timeout_s) returned (re-raising what it raised)."""
    closing = asyncio.create_task(batcher.close(timeout_s))
    done, _ = await asyncio.wait({closing}, timeout=timeout_s + LIMIT_S)
    return closing in done and closing.result() is None


async def outcomes(*waiting: asyncio.Task[int]) -> list[int | BaseException]:
    """What each submit() ended with, once all have ended."""
    done, pending = await asyncio.wait(waiting, timeout=LIMIT_S)
    assert not pending, "a submit() was never answered"
    return [t.exception() or t.result() for t in waiting]


@pytest.mark.parametrize("stubborn", [False, True])
async def test_close_stops_a_batch_that_never_finishes_and_fails_its_items(stubborn: bool) -> None:
    stuck = Stuck(stubborn)
    batcher = started_one_at_a_time(stuck, max_batch=2)
    waiting = asyncio.create_task(batcher.submit(1))
    await stuck.started.wait()
    assert await closed_within(batcher, 0.05)
    [outcome] = await outcomes(waiting)
    assert isinstance(outcome, BatcherClosed) and "ran past 0.05s" in str(outcome)
    stuck.release.set()


async def test_close_fails_collected_and_queued_items_at_once() -> None:
    stuck = Stuck()
    batcher = started_one_at_a_time(stuck)
    running = asyncio.create_task(batcher.submit(0))
    await stuck.started.wait()
    behind = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
    await wait_until(lambda: batcher.queued == 1, what="item 1 collected, waiting for a slot; item 2 queued")
    assert await closed_within(batcher, 0)
    results = await outcomes(running, *behind)
    assert all(isinstance(r, BatcherClosed) for r in results), results


async def test_a_batch_finishing_within_the_close_timeout_is_answered() -> None:
    stuck = Stuck()
    batcher = started_one_at_a_time(stuck)
    waiting = asyncio.create_task(batcher.submit(7))
    await stuck.started.wait()
    closing = asyncio.create_task(batcher.close(timeout_s=30))
    stuck.release.set()
    await closing
    assert await waiting == 7
