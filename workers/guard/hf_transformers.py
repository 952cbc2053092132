"""The `transformers` guard: GuardReasoner-VL (or any Qwen2.5-VL checkpoint) from a local folder.

Batched greedy generation with left padding, the shared prompt and parser, token counts per item.
Runs on CPU or GPU; for GPU throughput prefer the `vllm` backend.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from workers.errors import BackendUnavailable
from workers.guard.base import GuardOutcome, GuardRequest
from workers.guard.parse import outcome_from_output
from workers.guard.prompt import chat_messages
from workers.settings import GuardSettings


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class TransformersGuard:
    name = "transformers"

    def __init__(self, model: Any, processor: Any, max_new_tokens: int) -> None:
        self.model = model
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        self._lock = threading.Lock()  # one generate() at a time per model

    @classmethod
    def from_settings(cls, settings: GuardSettings) -> TransformersGuard:
        if settings.model_path is None:
            raise BackendUnavailable("the transformers backend needs GUARDSTREAM_GUARD__MODEL_PATH (a local folder)")
        return cls.load(settings.model_path, settings.max_new_tokens, settings.device, settings.dtype)

    @classmethod
    def load(cls, path: Path, max_new_tokens: int, device: str = "auto", dtype: str = "auto") -> TransformersGuard:
        import torch
        from transformers import Qwen2_5_VLForConditionalGeneration

        from workers.guard.qwen_processor import load_processor

        if not (path / "config.json").is_file():
            raise BackendUnavailable(f"no model at {path} (config.json missing)")
        torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch_dtype, local_files_only=True)
        model.to(resolve_device(device)).eval()
        return cls(model, load_processor(path), max_new_tokens)

    async def moderate(self, requests: list[GuardRequest]) -> list[GuardOutcome]:
        return await asyncio.to_thread(self.moderate_sync, requests)

    async def close(self) -> None:
        return None

    def moderate_sync(self, requests: list[GuardRequest]) -> list[GuardOutcome]:
        import torch

        texts = [self.processor.apply_chat_template(chat_messages(r), tokenize=False, add_generation_prompt=True)
                 for r in requests]
        images = [image for r in requests for image in r.images]
        inputs = self.processor(text=texts, images=images or None, padding=True, return_tensors="pt")
        inputs = inputs.to(self.model.device)
        tokenizer = self.processor.tokenizer
        with self._lock, torch.inference_mode():
            generated = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                            temperature=None, top_p=None, top_k=None,
                                            pad_token_id=tokenizer.pad_token_id)
        new_tokens = generated[:, inputs["input_ids"].shape[1]:]
        prompt_lengths = inputs["attention_mask"].sum(dim=1).tolist()
        outcomes = []
        for request, tokens, prompt_length in zip(requests, new_tokens, prompt_lengths, strict=True):
            completion = int((tokens != tokenizer.pad_token_id).sum())
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            outcomes.append(outcome_from_output(text, request.response is not None, self.name,
                                                prompt_tokens=int(prompt_length), completion_tokens=completion))
        return outcomes
