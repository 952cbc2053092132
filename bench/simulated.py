"""A guard backend that stands in for an accelerator: each batch costs `fixed_ms + per_item_ms · n` of
device time, one batch at a time, and every item is answered "unharmful". The device is one thread that
sleeps (as the transformers backend's generate() runs on a thread of its own), or with `on_loop`, a lock
and a sleep on the event loop: then a batch starts only when the loop gets round to it, and a busy loop
leaves the device idle between batches. With both costs 0 it answers at once, on the event loop: the zero-cost backend, which
measures the pipeline alone.

It records the device's busy spans, so a benchmark can set the batcher's timeline against the time the
device worked, and count how many items reached the device (a cache hit never does).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from workers.guard.base import GuardOutcome, GuardRequest, GuardResult


@dataclass(frozen=True)
class Span:
    start: float  # time.monotonic()
    end: float
    items: int


@dataclass
class SimulatedAccelerator:
    fixed_ms: float = 0.0
    per_item_ms: float = 0.0
    on_loop: bool = False
    name: str = "simulated"
    spans: list[Span] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._device = ThreadPoolExecutor(1, thread_name_prefix="simulated-device")
        self._busy = asyncio.Lock()

    @property
    def zero_cost(self) -> bool:
        return self.fixed_ms == 0 and self.per_item_ms == 0

    def batch_seconds(self, items: int) -> float:
        return (self.fixed_ms + self.per_item_ms * items) / 1000

    def ideal_rate(self, max_batch: int) -> float:
        """Events/s of a device that is never idle and always gets full batches."""
        return max_batch / self.batch_seconds(max_batch)

    @property
    def items(self) -> int:
        return sum(s.items for s in self.spans)

    def busy_seconds(self, start: float, end: float) -> float:
        """Device time spent between `start` and `end` (monotonic)."""
        return sum(max(0.0, min(s.end, end) - max(s.start, start)) for s in self.spans)

    async def moderate(self, requests: list[GuardRequest]) -> list[GuardOutcome]:
        if self.zero_cost:
            now = time.monotonic()
            self.spans.append(Span(now, now, len(requests)))
        elif self.on_loop:
            async with self._busy:
                start = time.monotonic()
                await asyncio.sleep(self.batch_seconds(len(requests)))
                self.spans.append(Span(start, time.monotonic(), len(requests)))
        else:
            self.spans.append(await asyncio.get_running_loop().run_in_executor(self._device, self._work, len(requests)))
        return [GuardResult(request_harmful=False, response_harmful=None if r.response is None else False,
                            reasoning="simulated", decided_by=self.name, request_score=0.0) for r in requests]

    def _work(self, items: int) -> Span:
        start = time.monotonic()
        time.sleep(self.batch_seconds(items))
        return Span(start, time.monotonic(), items)

    async def close(self) -> None:
        self._device.shutdown(wait=False, cancel_futures=True)
