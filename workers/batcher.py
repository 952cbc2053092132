"""Step 5: the micro-batcher. A batch closes at `max_batch` items or `max_wait_ms` after its first item,
whichever comes first; at most `max_batches_in_flight` batches run at once, and items wait in the queue
meanwhile. The queue is bounded by the worker, which pauses its partitions above `max_in_flight_events`:
input waits in Kafka, never in memory without limit, and nothing is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class BatcherClosed(RuntimeError):
    """submit() after close()."""


class MicroBatcher(Generic[T, R]):
    def __init__(
        self,
        run_batch: Callable[[list[T]], Awaitable[list[R]]],
        max_batch: int,
        max_wait_ms: int,
        max_batches_in_flight: int,
    ) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._max_wait_s = max_wait_ms / 1000
        self._slots = asyncio.Semaphore(max_batches_in_flight)
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] = asyncio.Queue()
        self._running: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._collect_forever(), name="micro-batcher")

    async def submit(self, item: T) -> R:
        if self._closed:
            raise BatcherClosed("the batcher is closed")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    async def close(self) -> None:
        """Stop collecting; batches already running finish, queued items are failed."""
        self._closed = True
        if self._loop_task:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        await asyncio.gather(*self._running, return_exceptions=True)
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(BatcherClosed("the batcher closed before this item ran"))

    async def _collect_forever(self) -> None:
        while True:
            batch = [await self._queue.get()]
            deadline = asyncio.get_running_loop().time() + self._max_wait_s
            while len(batch) < self._max_batch:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            await self._slots.acquire()
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._run_batch([item for item, _ in batch])
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
        except Exception as exc:  # the futures carry the failure to each waiting event
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        except BaseException:
            for _, future in batch:
                future.cancel()
            raise
        finally:
            self._slots.release()
