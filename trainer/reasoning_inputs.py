"""What the reasoning jobs feed TRL: the model to train, the events' images, rejection-sampling rollouts and
the rows of the SFT and GRPO data sets.

- The base is the serving model's checkpoint (`guard.model_path`); where an adapter release serves on it,
  training goes on from that adapter (so GRPO continues from the SFT release), else from a fresh LoRA
  adapter (`peft_config`), or every weight with `full_finetune`.
- Images are fetched through the worker's fetcher, with its limits: an event whose image cannot be read is
  left out of training and counted, never guessed.
- Rows keep the prompt exactly as serving writes it (`workers/guard/prompt.chat_messages`, through
  `trainer/reasoning_data.prompt_of`), the images beside it in order, as TRL's vision collators take them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from runtime.cli_errors import Exit
from schemas.events import ChatEvent
from trainer.reasoning_data import ReasoningPrompt, RlItem, SftExample
from trainer.reasoning_settings import ReasoningSettings
from workers.fetch import ImageFetcher
from workers.guard.qwen_processor import load_processor
from workers.settings import FetchSettings, GuardSettings


class NoBaseModel(ValueError):
    """A reasoning job was asked for with no checkpoint to train from."""

    exit_code = Exit.INPUT


@dataclass(frozen=True)
class Base:
    """The checkpoint a job trains from, the adapter serving on it now (if any), and the backend that will
    score and serve the candidate."""

    checkpoint: Path
    adapter: Path | None
    backend: str


def serving_base(guard: GuardSettings, settings: ReasoningSettings) -> Base:
    if guard.model_path is None:
        raise NoBaseModel("the reasoning jobs train the serving checkpoint: set GUARDSTREAM_GUARD__MODEL_PATH "
                          "(a local Qwen2.5-VL folder)")
    backend = settings.serve_backend
    if backend == "auto":
        backend = guard.backend if guard.backend in ("transformers", "vllm") else "transformers"
    adapter = guard.transformers_lora_adapter if guard.backend == "transformers" else None
    if guard.backend == "vllm":
        adapter = guard.vllm_lora_adapter
    return Base(guard.model_path, adapter, backend)


def training_device(settings: ReasoningSettings) -> str:
    if settings.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return settings.device


def load_trainable(base: Base, settings: ReasoningSettings) -> tuple[Any, Any]:
    """(model, processor): the base, with the serving adapter as a trainable adapter where there is one (merged
    into the weights for a full fine-tune)."""
    from peft import PeftModel
    from transformers import Qwen2_5_VLForConditionalGeneration

    dtype = torch.bfloat16 if settings.bf16 else torch.float32
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(base.checkpoint, dtype=dtype, local_files_only=True)
    if base.adapter is not None:
        model = PeftModel.from_pretrained(model, base.adapter, is_trainable=not settings.full_finetune)
        if settings.full_finetune:
            model = model.merge_and_unload()
    processor = load_processor(base.checkpoint)
    processor.__class__ = _mixed_batches(type(processor))
    return model.to(training_device(settings)), processor


class _TextOnlyImagesAsEmpty:
    """TRL's GRPO trainer (1.16) gives a text-only prompt's images as None in a batch where another prompt has
    images; Qwen's processor takes an empty list there and fails on None."""

    def __call__(self, images: Any = None, text: Any = None, **kwargs: Any) -> Any:
        if isinstance(images, list) and any(entry is None for entry in images):
            images = [entry or [] for entry in images]
        return super().__call__(images=images, text=text, **kwargs)  # type: ignore[misc]


def _mixed_batches(processor_class: type) -> type:
    """The processor's class, taking batches that mix text-only and image prompts the way TRL passes them."""
    if issubclass(processor_class, _TextOnlyImagesAsEmpty):
        return processor_class
    return type(processor_class.__name__, (_TextOnlyImagesAsEmpty, processor_class), {})


def lora_config(settings: ReasoningSettings) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                      target_modules=settings.lora_targets, task_type="CAUSAL_LM")


@dataclass
class EventImages:
    """Each event's images, read with the worker's limits; `unreadable` names the events that were not."""

    images: dict[str, list[Image.Image]] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)  # event id -> why

    def readable(self, event: ChatEvent) -> bool:
        return event.event_id in self.images


async def fetch_images(events: list[ChatEvent], settings: FetchSettings) -> EventImages:
    found = EventImages()
    async with ImageFetcher(settings) as fetcher:
        for event in tqdm(events, desc="images", unit="event", disable=not any(e.images for e in events)):
            try:
                fetched = await asyncio.gather(*(fetcher.fetch(ref) for ref in event.images))
            except Exception as exc:  # one event's unreadable image leaves that event out, not the run
                found.unreadable[event.event_id] = f"{type(exc).__name__}: {exc}"
                continue
            found.images[event.event_id] = [image.image for image in fetched]
    return found


def model_messages(prompt: ReasoningPrompt) -> list[dict[str, Any]]:
    """The prompt's messages as the processor reads them: image parts without their URIs."""
    return [{**message, "content": [{"type": "image"} if part["type"] == "image" else part
                                    for part in message["content"]]}
            for message in prompt.messages]


def sft_row(example: SftExample, images: EventImages) -> dict[str, Any]:
    return {"prompt": model_messages(example.prompt),
            "completion": [{"role": "assistant", "content": [{"type": "text", "text": example.target}]}],
            "images": images.images[example.prompt.event.event_id]}


def rl_row(item: RlItem, images: EventImages) -> dict[str, Any]:
    return {"prompt": model_messages(item.prompt), "images": images.images[item.prompt.event.event_id],
            "request_harmful": item.request_harmful, "response_harmful": item.response_harmful}


class Rollouts:
    """Rejection sampling's sampler (`trainer/reasoning_data.Sampler`) on the model before training: k
    completions of one prompt at the given temperature and top_p, one prompt at a time on a thread."""

    def __init__(self, model: Any, processor: Any, images: EventImages, max_new_tokens: int, seed: int) -> None:
        self.model, self.processor, self.images = model, processor, images
        self.max_new_tokens = max_new_tokens
        self.generator_seed = seed
        self.lock = asyncio.Lock()

    async def __call__(self, prompt: ReasoningPrompt, k: int, temperature: float, top_p: float) -> list[str]:
        async with self.lock:
            return await asyncio.to_thread(self._sample, prompt, k, temperature, top_p)

    def _sample(self, prompt: ReasoningPrompt, k: int, temperature: float, top_p: float) -> list[str]:
        text = self.processor.apply_chat_template(model_messages(prompt), tokenize=False, add_generation_prompt=True)
        images = self.images.images.get(prompt.event.event_id) or None
        inputs = self.processor(text=[text], images=images, return_tensors="pt").to(self.model.device)
        torch.manual_seed(self.generator_seed)
        self.model.eval()
        with torch.inference_mode():
            generated = self.model.generate(**inputs, do_sample=True, temperature=temperature, top_p=top_p,
                                            top_k=None, num_return_sequences=k, max_new_tokens=self.max_new_tokens,
                                            pad_token_id=self.processor.tokenizer.pad_token_id)
        new = generated[:, inputs["input_ids"].shape[1]:]
        return self.processor.tokenizer.batch_decode(new, skip_special_tokens=True)
