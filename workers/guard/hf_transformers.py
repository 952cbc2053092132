"""The `transformers` guard: GuardReasoner-VL (or any Qwen2.5-VL checkpoint) from a local folder.

Batched greedy generation with left padding, the shared prompt and parser, token counts per item.
Runs on CPU or GPU; for GPU throughput prefer the `vllm` backend.

A PEFT LoRA adapter (an adapter release, or `transformers_lora_adapter` at start) is loaded onto the model
already in memory with transformers' `load_adapter` under a name of its own: the base weights are never
reloaded. Views of one model (the base, each adapter) share its weights and its thread; each call activates
its view's adapter, or disables them all for the base, before it generates. A view that is closed deletes
its adapter from the model.

generate() runs on the backend's own thread, one call at a time, never on the shared default pool, so a
stuck call delays only this backend's later calls. When its caller gives up (the stage's timeout cancels it), a stopping criterion ends
the generation at the next decoding step, so the thread is free for the next call almost at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import warnings
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


_adapter_ids = itertools.count(1)


class KeptReport(logging.Handler):
    """Keeps the messages of a load report instead of printing them."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def rows(self, adapter: str, most: int = 3) -> list[str]:
        """The report's first rows about `adapter`'s weights, spaces squeezed."""
        lines = [line for message in self.messages for line in message.splitlines()]
        return [" ".join(line.split()) for line in lines if f".{adapter}." in line][:most]


class TransformersGuard:
    """`checkpoint` is the folder the base weights came from; `adapter` the name of this view's LoRA adapter
    on the model (None: the base model). `adapter_release` is the release that adapter came from."""

    name = "transformers"

    def __init__(self, model: Any, processor: Any, max_new_tokens: int, checkpoint: Path | None = None,
                 executor: ThreadPoolExecutor | None = None, adapter: str | None = None,
                 adapter_release: str | None = None) -> None:
        self.model = model
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        self.checkpoint = checkpoint
        # one generate() at a time, shared by every view of the model
        self.executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="guard-transformers")
        self.adapter = adapter
        self.adapter_release = adapter_release
        self._owns_executor = True

    @classmethod
    def from_settings(cls, settings: GuardSettings) -> TransformersGuard:
        if settings.model_path is None:
            raise BackendUnavailable("the transformers backend needs GUARDSTREAM_GUARD__MODEL_PATH (a local folder)")
        guard = cls.load(settings.model_path, settings.max_new_tokens, settings.device, settings.dtype)
        if settings.transformers_lora_adapter is not None:
            try:
                return guard.with_adapter(settings.model_version, settings.transformers_lora_adapter)
            except BackendUnavailable:
                guard.executor.shutdown(wait=False)
                raise
        return guard

    @classmethod
    def load(cls, path: Path, max_new_tokens: int, device: str = "auto", dtype: str = "auto") -> TransformersGuard:
        if not (path / "config.json").is_file():
            raise BackendUnavailable(f"no model at {path} (config.json missing)")
        torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch_dtype, local_files_only=True)
        model.to(resolve_device(device)).eval()
        return cls(model, load_processor(path), max_new_tokens, checkpoint=path)

    def with_adapter(self, release: str, path: Path) -> TransformersGuard:
        """The same model serving the PEFT LoRA adapter in `path` (release `release`), loaded on the backend's
        thread so no generate() runs meanwhile. The thread's ownership moves to the new view: retiring this
        one must not stop it. An adapter that does not fit the model is refused, and the current model stays."""
        if not (path / "adapter_config.json").is_file():
            raise BackendUnavailable(f"adapter {release}: no PEFT adapter at {path} (adapter_config.json missing)")
        name = f"adapter{next(_adapter_ids)}"  # release versions may hold dots, which module names may not
        try:
            self.executor.submit(self._load_adapter, name, path).result()
        except Exception as exc:
            raise BackendUnavailable(f"adapter {release} does not load onto {self.checkpoint}: "
                                     f"{type(exc).__name__}: {exc}") from exc
        other = TransformersGuard(self.model, self.processor, self.max_new_tokens, self.checkpoint, self.executor,
                                  name, release)
        other._owns_executor, self._owns_executor = self._owns_executor, False
        return other

    def _load_adapter(self, name: str, path: Path) -> None:
        # transformers' load report counts the other adapters' weights as missing: it is kept, not printed, and
        # what concerns this adapter goes into the error
        report = logging.getLogger("transformers.integrations.peft")
        kept = KeptReport()
        report.addHandler(kept)
        propagate, report.propagate = report.propagate, False
        level = report.level  # kept whatever verbosity transformers was set to (quiet loading sets errors only)
        report.setLevel(logging.WARNING)
        try:
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="Already found a `peft_config`")  # a second adapter
                    info = self.model.load_adapter(str(path), adapter_name=name, hotswap=False)
            except Exception as exc:
                rows = kept.rows(name)
                raise ValueError(f"{exc} report: {rows}" if rows else str(exc)) from exc
            unfit = ({k for k in info.missing_keys if f".{name}." in k} | set(info.unexpected_keys)
                     | set(info.mismatched_keys))
            if unfit or info.error_msgs:
                raise ValueError(f"weights that do not fit the model: {sorted(map(str, unfit))[:3]} "
                                 f"{info.error_msgs[:1]}")
        except Exception:
            if name in getattr(self.model, "peft_config", {}):
                self._drop(name)  # partly loaded: leave the model as it was
            raise
        finally:
            report.removeHandler(kept)
            report.propagate = propagate
            report.setLevel(level)

    def _activate(self) -> None:
        """Make the model this view's: its adapter on, or every adapter off for the base (backend thread)."""
        if self.adapter is not None:
            self.model.enable_adapters()
            self.model.set_adapter(self.adapter)
        elif getattr(self.model, "_hf_peft_config_loaded", False):
            self.model.disable_adapters()

    def _drop_adapter(self) -> None:
        if self.adapter in getattr(self.model, "peft_config", {}):
            self._drop(self.adapter)

    def _drop(self, name: str) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
            self.model.delete_adapter(name)

    async def moderate(self, requests: list[GuardRequest]) -> list[GuardOutcome]:
        stop = threading.Event()
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, self.moderate_sync, requests, stop)
        except asyncio.CancelledError:  # a call still queued is dropped by the executor; a running one stops
            stop.set()
            raise

    async def close(self) -> None:
        if self.adapter is not None and not self._owns_executor:  # the model serves on: free this adapter
            with contextlib.suppress(RuntimeError):  # the thread is stopped: the model is closed already
                await asyncio.wrap_future(self.executor.submit(self._drop_adapter))
        if self._owns_executor:
            self.executor.shutdown(wait=False, cancel_futures=True)

    def moderate_sync(self, requests: list[GuardRequest], stop: threading.Event | None = None) -> list[GuardOutcome]:
        """Generate and parse; once `stop` is set, generation ends at the next step (what it made is junk)."""
        return [outcome_from_output(text, request.response is not None, self.name, prompt_tokens=prompt_tokens,
                                    completion_tokens=completion_tokens)
                for request, (text, prompt_tokens, completion_tokens)
                in zip(requests, self.complete(requests, stop), strict=True)]

    def complete(self, requests: list[GuardRequest],
                 stop: threading.Event | None = None) -> list[tuple[str, int, int]]:
        """The model's answer to each request, unparsed: (text, prompt tokens, completion tokens)."""
        texts = [self.processor.apply_chat_template(chat_messages(r), tokenize=False, add_generation_prompt=True)
                 for r in requests]
        images = [image for r in requests for image in r.images]
        inputs = self.processor(text=texts, images=images or None, padding=True, return_tensors="pt")
        inputs = inputs.to(self.model.device)
        tokenizer = self.processor.tokenizer
        stopping = StoppingCriteriaList([StopWhenSet(stop or threading.Event())])
        self._activate()
        with torch.inference_mode():
            generated = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                            temperature=None, top_p=None, top_k=None,
                                            pad_token_id=tokenizer.pad_token_id, stopping_criteria=stopping)
        new_tokens = generated[:, inputs["input_ids"].shape[1]:]
        prompt_lengths = inputs["attention_mask"].sum(dim=1).tolist()
        return [(tokenizer.decode(tokens, skip_special_tokens=True), int(prompt_length),
                 int((tokens != tokenizer.pad_token_id).sum()))
                for tokens, prompt_length in zip(new_tokens, prompt_lengths, strict=True)]
