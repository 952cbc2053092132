"""A backend that batches on its own (vLLM's engine) is handed each request as it arrives, up to its
max_num_seqs, so the engine stays full while events wait; micro-batches would hold their slots until
their longest request ended. The engine is a stand-in with AsyncLLM.generate's shape (vLLM needs a GPU);
the worker, the broker and the backend's code around the engine are real."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from transformers import AutoTokenizer

from tests.conftest import running_worker, verdicts_for
from tests.factories import BENIGN, event
from topics.io import produce_events
from workers.guard.vllm_backend import VLLMGuard
from workers.settings import WorkerSettings

ANSWER = "<think>\nIt asks about a recipe.\n</think>\n<result>\nRequest: unharmful\nResponse: none\n</result>"
MAX_NUM_SEQS = 8
SHORT_S, LONG_S = 0.02, 0.3  # one request in four is long: a micro-batch of four holds its slot for it


class VaryingEngine:
    """Sequences of uneven length; records every start and end, to measure how full it was kept."""

    def __init__(self) -> None:
        self.changes: list[tuple[float, int]] = []  # (monotonic time, +1 start / -1 end)
        self.active = 0
        self.max_active = 0
        self.started = 0

    async def generate(self, prompt: dict[str, Any], sampling_params: Any, request_id: str, lora_request: Any = None):
        n, self.started = self.started, self.started + 1
        self._change(+1)
        try:
            await asyncio.sleep(LONG_S if n % 4 == 0 else SHORT_S)
            yield SimpleNamespace(outputs=[SimpleNamespace(text=ANSWER, token_ids=[0] * 20)], prompt_token_ids=[0] * 9)
        finally:
            self._change(-1)

    def _change(self, step: int) -> None:
        self.active += step
        self.max_active = max(self.max_active, self.active)
        self.changes.append((time.monotonic(), step))

    def mean_occupancy(self) -> float:
        """Time-weighted mean of sequences in the engine, from the first start to the last start (while
        requests were waiting), as a share of max_num_seqs."""
        starts = [t for t, step in self.changes if step > 0]
        begin, end = starts[0], starts[-1]
        area, active, last = 0.0, 0, begin
        for t, step in self.changes:
            if t > end:
                break
            area += active * (t - last)
            active, last = active + step, t
        return area / (end - begin) / MAX_NUM_SEQS

    def shutdown(self) -> None:
        pass


@pytest.mark.parametrize("own_batching", [True, False], ids=["engine-batching", "micro-batches"])
async def test_the_engine_is_kept_full_while_events_wait(settings: WorkerSettings, tiny_qwen: Path,
                                                          own_batching: bool) -> None:
    settings.batch.max_batch, settings.batch.max_batches_in_flight = 4, 2  # micro-batches: 8 at once at most too
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen, local_files_only=True)
    engine = VaryingEngine()
    guard = VLLMGuard(engine, lambda m: tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True),
                      "greedy", concurrent_requests=MAX_NUM_SEQS if own_batching else None)
    events = [event(f"{BENIGN[i % len(BENIGN)]} (recipe {i})", conversation=f"c{i % 7}") for i in range(96)]
    await produce_events(settings.kafka.bootstrap_servers, f"{settings.kafka.topic_prefix}chat.events", events)
    async with running_worker(settings, guard):
        verdicts = await verdicts_for(settings, len(events), timeout_s=120)
    assert Counter(v.event_id for v in verdicts) == Counter(e.event_id for e in events)
    assert engine.started == len(events)
    occupancy = engine.mean_occupancy()
    if own_batching:
        assert engine.max_active == MAX_NUM_SEQS  # full, and never over what the engine batches
        assert occupancy >= 0.85, f"the engine held {occupancy:.0%} of max_num_seqs while requests waited"
    else:  # the same workload in micro-batches leaves the engine half empty: what the first case fixes
        assert occupancy < 0.6, f"micro-batches kept the engine {occupancy:.0%} full"
