"""The `transformers` guard: GuardReasoner-VL (or any Qwen2.5-VL checkpoint) from a local folder.

Batched greedy generation with left padding, the shared prompt and parser, token counts per item.
Runs on CPU or GPU; for GPU throughput prefer the `vllm` backend.

generate() runs on the backend's own thread, one call at a time, never on the shared default pool, so a
stuck call delays only this backend's later calls. When its caller gives up (the stage's timeout cancels it), a stopping criterion ends
the generation at the next decoding step, so the thread is free for the next call almost at once.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from transformers import Qwen2_5_VLForConditionalGeneration, StoppingCriteria, StoppingCriteriaList

from workers.errors import BackendUnavailable
from workers.guard.base import GuardOutcome, GuardRequest
from workers.guard.parse import outcome_from_output
from workers.guard.prompt import chat_messages
from workers.guard.qwen_processor import load_processor
from workers.settings import GuardSettings


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class StopWhenSet(StoppingCriteria):
    """Ends generate() for every row at the next decoding step once `event` is set."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool,  # type: ignore[return-value]
                          device=input_ids.device)


class TransformersGuard:
    name = "transformers"

    def __init__(self, model: Any, processor: Any, max_new_tokens: int) -> None:
        self.model = model
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guard-transformers")  # one generate() at a time

    @classmethod
    def from_settings(cls, settings: GuardSettings) -> TransformersGuard:
        if settings.model_path is None:
            raise BackendUnavailable("the transformers backend needs GUARDSTREAM_GUARD__MODEL_PATH (a local folder)")
        return cls.load(settings.model_path, settings.max_new_tokens, settings.device, settings.dtype)

    @classmethod
    def load(cls, path: Path, max_new_tokens: int, device: str = "auto", dtype: str = "auto") -> TransformersGuard:
        if not (path / "config.json").is_file():
            raise BackendUnavailable(f"no model at {path} (config.json missing)")
        torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch_dtype, local_files_only=True)
        model.to(resolve_device(device)).eval()
        return cls(model, load_processor(path), max_new_tokens)

    async def moderate(self, requests: list[GuardRequest]) -> list[GuardOutcome]:
        stop = threading.Event()
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, self.moderate_sync, requests, stop)
        except asyncio.CancelledError:  # a call still queued is dropped by the executor; a running one stops
            stop.set()
            raise

    async def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    def moderate_sync(self, requests: list[GuardRequest], stop: threading.Event | None = None) -> list[GuardOutcome]:
        """Generate and parse; once `stop` is set, generation ends at the next step (what it made is junk)."""
        texts = [self.processor.apply_chat_template(chat_messages(r), tokenize=False, add_generation_prompt=True)
                 for r in requests]
        images = [image for r in requests for image in r.images]
        inputs = self.processor(text=texts, images=images or None, padding=True, return_tensors="pt")
        inputs = inputs.to(self.model.device)
        tokenizer = self.processor.tokenizer
        stopping = StoppingCriteriaList([StopWhenSet(stop or threading.Event())])
        with torch.inference_mode():
            generated = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                            temperature=None, top_p=None, top_k=None,
                                            pad_token_id=tokenizer.pad_token_id, stopping_criteria=stopping)
        new_tokens = generated[:, inputs["input_ids"].shape[1]:]
        prompt_lengths = inputs["attention_mask"].sum(dim=1).tolist()
        outcomes = []
        for request, tokens, prompt_length in zip(requests, new_tokens, prompt_lengths, strict=True):
            completion = int((tokens != tokenizer.pad_token_id).sum())
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            outcomes.append(outcome_from_output(text, request.response is not None, self.name,
                                                prompt_tokens=int(prompt_length), completion_tokens=completion))
        return outcomes
