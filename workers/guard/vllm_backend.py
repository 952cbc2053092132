"""The `vllm` guard: GuardReasoner-VL in process on vLLM's async engine.

The worker hands each request to the engine the moment it arrives (`concurrent_requests` is
`vllm_max_num_seqs`, so the worker's batcher runs batches of one in that many slots): the engine holds up
to max_num_seqs sequences, and a finished sequence's place is taken by the next request at once, never
after the rest of a micro-batch ends. vLLM's continuous batching interleaves them; the shared
instruction is reused through prefix caching. A LoRA adapter is applied per request, so an adapter release switches
models on the same engine without reloading the base weights.

vLLM needs a CUDA machine; it is an optional dependency (`pip install 'guardstream[gpu]'`).
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.errors import BackendError, BackendUnavailable
from workers.guard.base import GuardOutcome, GuardRequest
from workers.guard.parse import outcome_from_output
from workers.guard.prompt import chat_messages
from workers.settings import GuardSettings

_lora_ids = itertools.count(1)


def engine_options(settings: GuardSettings) -> dict[str, Any]:
    """AsyncEngineArgs for GuardReasoner-VL from the settings (pure, so it is tested without vLLM)."""
    if settings.model_path is None:
        raise BackendUnavailable("the vllm backend needs GUARDSTREAM_GUARD__MODEL_PATH (a local folder)")
    options: dict[str, Any] = {
        "model": str(settings.model_path),
        "enable_prefix_caching": settings.vllm_prefix_caching,
        "max_num_seqs": settings.vllm_max_num_seqs,
        "max_model_len": settings.vllm_max_model_len,
        "gpu_memory_utilization": settings.vllm_gpu_memory_utilization,
        "limit_mm_per_prompt": {"image": settings.vllm_max_images_per_prompt, "video": 0},
        "mm_processor_kwargs": {"max_pixels": settings.vllm_max_pixels},
        "dtype": settings.dtype,
    }
    if settings.vllm_lora_adapter is not None:
        options.update(enable_lora=True, max_lora_rank=settings.vllm_max_lora_rank)
    return options


def sampling_options(settings: GuardSettings) -> dict[str, Any]:
    """The reference's decoding: greedy (temperature 0), up to max_new_tokens."""
    return {"temperature": 0.0, "max_tokens": settings.max_new_tokens}


def engine_prompt(request: GuardRequest, render: Callable[[list[dict[str, Any]]], str]) -> dict[str, Any]:
    """The prompt dict vLLM takes: the chat-templated text, and the images in the order of their slots."""
    prompt: dict[str, Any] = {"prompt": render(chat_messages(request))}
    if request.images:
        prompt["multi_modal_data"] = {"image": list(request.images)}
    return prompt


@dataclass(frozen=True)
class Adapter:
    name: str
    path: Path
    lora_id: int


class VLLMGuard:
    """`make_lora` names an adapter to the engine; it is given only for an engine started with enable_lora,
    so `lora_enabled` says whether adapters can be served at all."""

    name = "vllm"

    def __init__(self, engine: Any, render: Callable[[list[dict[str, Any]]], str], sampling_params: Any,
                 adapter: Adapter | None = None, make_lora: Callable[[Adapter], Any] | None = None,
                 concurrent_requests: int | None = None) -> None:
        if adapter is not None and make_lora is None:
            raise BackendUnavailable(f"adapter {adapter.name}: the vllm engine was started without enable_lora")
        self.engine = engine
        self.render = render
        self.sampling_params = sampling_params
        self.adapter = adapter
        self._make_lora = make_lora
        self._owns_engine = True
        self.concurrent_requests = concurrent_requests  # the engine's max_num_seqs

    @property
    def lora_enabled(self) -> bool:
        return self._make_lora is not None

    @classmethod
    def from_settings(cls, settings: GuardSettings) -> VLLMGuard:
        try:
            from transformers import AutoTokenizer
            from vllm import AsyncEngineArgs, SamplingParams
            from vllm.lora.request import LoRARequest
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise BackendUnavailable(
                "the vllm backend needs vLLM, which runs on CUDA machines only: pip install 'guardstream[gpu]'"
            ) from exc
        options = engine_options(settings)
        tokenizer = AutoTokenizer.from_pretrained(options["model"], local_files_only=True)

        def render(messages: list[dict[str, Any]]) -> str:
            return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

        def make_lora(adapter: Adapter) -> Any:
            return LoRARequest(adapter.name, adapter.lora_id, str(adapter.path))

        engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**options))
        adapter = None
        if settings.vllm_lora_adapter is not None:
            adapter = Adapter(settings.model_version, settings.vllm_lora_adapter, next(_lora_ids))
        lora = make_lora if options.get("enable_lora") else None
        return cls(engine, render, SamplingParams(**sampling_options(settings)), adapter, lora,
                   settings.vllm_max_num_seqs)

    def with_adapter(self, name: str, path: Path) -> VLLMGuard:
        """The same engine serving another LoRA adapter (a model switch without reloading weights).
        The engine's ownership moves to the new view: retiring this one must not shut the engine down.
        An engine started without enable_lora cannot serve one: refused, so the current model stays."""
        if not self.lora_enabled:
            raise BackendUnavailable(f"adapter {name}: the vllm engine was started without enable_lora "
                                     "(set GUARDSTREAM_GUARD__VLLM_LORA_ADAPTER at start to serve adapter releases)")
        other = VLLMGuard(self.engine, self.render, self.sampling_params, Adapter(name, path, next(_lora_ids)),
                          self._make_lora, self.concurrent_requests)
        other._owns_engine, self._owns_engine = self._owns_engine, False
        return other

    async def moderate(self, requests: list[GuardRequest]) -> list[GuardOutcome]:
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    async def close(self) -> None:
        if self._owns_engine:
            self.engine.shutdown()

    async def _one(self, request: GuardRequest) -> GuardOutcome:
        lora = self._make_lora(self.adapter) if (self.adapter and self._make_lora) else None
        final = None
        try:
            async for output in self.engine.generate(engine_prompt(request, self.render), self.sampling_params,
                                                     uuid.uuid4().hex, lora_request=lora):
                final = output
        except Exception as exc:  # vLLM's EngineGenerateError, EngineDeadError, validation errors: plain Exceptions
            raise BackendError(f"vllm: {type(exc).__name__}: {exc}") from exc
        if final is None or not final.outputs:
            raise BackendError("vllm returned no output")
        completion = final.outputs[0]
        return outcome_from_output(completion.text, request.response is not None, self.name,
                                   prompt_tokens=len(final.prompt_token_ids or []),
                                   completion_tokens=len(completion.token_ids))
