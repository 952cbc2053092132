"""Step 5: the micro-batcher. A batch closes at `max_batch` items or `max_wait_ms` after its first item,
whichever comes first; at most `max_batches_in_flight` batches run at once, and items wait in the queue
meanwhile. A slot is free again the moment its batch ends, and the next batch is already forming while
the others run. With `dispatch_when_idle`, a forming batch also closes the moment no batch is running
(at once, if none is): the wait is for company while the device is busy, and an idle device gains
nothing from it. Under load a batch is always running, so batches still fill.

Items queue in lanes (the worker's lane is the record's partition) and batches take them round-robin
across lanes, first in first out within one: a partition whose records were admitted first (aiokafka
hands out one partition's prefetched records before it even fetches the others') cannot hold the device
while the others' records wait behind it. For a backend that batches on its own (vLLM's engine, a server), the worker reshapes it
to batches of one and as many slots as that backend takes requests at once. The queue is bounded by the worker, which pauses its partitions above `max_in_flight_events`:
input waits in Kafka, never in memory without limit, and nothing is dropped.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
Batch = list[tuple[T, "asyncio.Future[R] | None"]]  # no future: the batch function answers the item itself


class BatcherClosed(RuntimeError):
    """submit() after close(), or an item that close() stopped before it was answered."""


class MicroBatcher(Generic[T, R]):
    def __init__(
        self,
        run_batch: Callable[[list[T]], Awaitable[list[R]]],
        max_batch: int,
        max_wait_ms: int,
        max_batches_in_flight: int,
        dispatch_when_idle: bool = False,
    ) -> None:
        self._run_batch = run_batch
        self._dispatch_when_idle = dispatch_when_idle
        self._max_batch = max_batch
        self._max_wait_s = max_wait_ms / 1000
        self._max_in_flight = max_batches_in_flight
        self._slot_freed = asyncio.Event()
        self._lanes: dict[Hashable, deque[tuple[T, asyncio.Future[R] | None]]] = {}  # served round-robin
        self._queued = 0
        self._wake = asyncio.Event()  # an item was queued, or (dispatch_when_idle) the last batch ended
        self._running: dict[asyncio.Task[None], Batch[T, R]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def queued(self) -> int:
        return self._queued

    def reshape(self, max_batch: int, max_wait_ms: int, max_batches_in_flight: int) -> None:
        """New limits, from the next batch on (batches running keep their slots)."""
        self._max_batch, self._max_wait_s, self._max_in_flight = max_batch, max_wait_ms / 1000, max_batches_in_flight
        self._slot_freed.set()

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._collect_forever(), name="micro-batcher")

    async def submit(self, item: T, lane: Hashable = None) -> R:
        """Queue `item` and wait for its result."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._push(lane, (item, future))
        return await future

    def put(self, item: T, lane: Hashable = None) -> None:
        """Queue `item` without waiting: the batch function answers it (its result is not kept), and an
        item that close() drops is nobody's to fail."""
        self._push(lane, (item, None))

    def _push(self, lane: Hashable, entry: tuple[T, asyncio.Future[R] | None]) -> None:
        if self._closed:
            raise BatcherClosed("the batcher is closed")
        self._lanes.setdefault(lane, deque()).append(entry)
        self._queued += 1
        self._wake.set()

    def _pop(self) -> tuple[T, asyncio.Future[R] | None]:
        """The oldest item of the lane whose turn it is; that lane goes to the back of the turn."""
        lane, waiting = next(iter(self._lanes.items()))
        entry = waiting.popleft()
        del self._lanes[lane]
        if waiting:
            self._lanes[lane] = waiting
        self._queued -= 1
        return entry

    async def close(self, timeout_s: float = 0.0) -> None:
        """Stop collecting and fail the queued items at once; batches already running get `timeout_s` to
        finish, then are cancelled and their items fail with BatcherClosed. Returns within `timeout_s`,
        even if a batch ignores its cancellation."""
        self._closed = True
        if self._loop_task:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        _fail([entry for waiting in self._lanes.values() for entry in waiting],
              BatcherClosed("the batcher closed before this item ran"))
        self._lanes.clear()
        self._queued = 0
        if not self._running:
            return
        _, late = await asyncio.wait(set(self._running), timeout=timeout_s)
        for task in late:
            task.cancel()
            _fail(self._running.get(task, []), BatcherClosed(f"the batcher closed, this batch ran past {timeout_s}s"))

    async def _collect_forever(self) -> None:
        while True:
            while not self._queued:
                self._wake.clear()
                await self._wake.wait()
            batch = [self._pop()]
            try:
                await self._fill(batch)
                while len(self._running) >= self._max_in_flight:
                    self._slot_freed.clear()
                    await self._slot_freed.wait()
            except asyncio.CancelledError:
                _fail(batch, BatcherClosed("the batcher closed before this item ran"))
                raise
            task = asyncio.create_task(self._run(batch))
            self._running[task] = batch
            task.add_done_callback(self._free_slot)

    def _free_slot(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        self._slot_freed.set()
        if not self._running and self._dispatch_when_idle:
            self._wake.set()

    async def _fill(self, batch: Batch[T, R]) -> None:
        """Add queued items to `batch` until it is full, `max_wait_ms` after its first item, or (with
        dispatch_when_idle) no batch is running. (asyncio.timeout, not wait_for: on 3.11 wait_for can
        swallow a cancel that races a finished wait, and close() would hang.)"""
        deadline = asyncio.get_running_loop().time() + self._max_wait_s
        while len(batch) < self._max_batch:
            if self._queued:
                batch.append(self._pop())
                continue
            if self._dispatch_when_idle and not self._running:
                return
            self._wake.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._wake.wait()
            except TimeoutError:
                return

    async def _run(self, batch: Batch[T, R]) -> None:
        try:
            results = await self._run_batch([item for item, _ in batch])
            for (_, future), result in zip(batch, results, strict=True):
                if future is not None and not future.done():
                    future.set_result(result)
        except Exception as exc:  # the futures carry the failure to each waiting event
            _fail(batch, exc)
        except BaseException:
            _fail(batch, BatcherClosed("the batcher stopped this batch before it finished"))
            raise


def _fail(batch: Batch[T, R], exc: BaseException) -> None:
    for _, future in batch:
        if future is not None and not future.done():
            future.set_exception(exc)
