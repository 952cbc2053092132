"""The reasoning data the SFT and GRPO jobs train on, in GuardReasoner-VL's own format.

GuardReasoner-VL (Liu et al., 2025): "Prompt", "Output" and "Training recipe" (items 1
to 3: reasoning data, reasoning SFT, rejection sampling and hard samples).

Each labelled event becomes a `ReasoningPrompt`: the chat messages exactly as serving builds them
(`workers/guard/prompt.py`'s `chat_messages`), with each image part carrying its event's image URI for the
job to fetch (`{"type": "image", "image": uri}`), never the image itself. Where the labels let it, the
prompt gets a target, `<think>…</think><result>Request: …\nResponse: …</result>`, whose labels are the
human label, and the reasoning in it comes from, in order:

1. `serving`: the serving model's own verdict, when a reasoning backend decided it and its labels agree
   with the label (the lite guard's evidence lines are no reasoning; the cascade's note on its lite stage
   is removed);
2. `rejection`: rejection sampling from the model being trained: `k` rollouts (the reference's 4, at
   temperature 1.0, top_p 0.95); the first whose parsed labels match the label is kept;
3. otherwise the item has no target and goes to RL only, with its label, marked `hard` when all `k`
   rollouts were wrong (the reference's hard samples). A rollout that does not parse, or has an empty
   think block, is wrong.

Every item also goes to RL (`ReasoningData.rl`): GRPO scores rollouts against the label, not the target.

Reasoning text is put into the target neutralised: the output tags (`<think>`, `</think>`, `<result>`,
`</result>`, any case) get a zero-width space after their `<`, and chat-template control strings are
broken as `prompt.neutralise` breaks them in user text. A target thus has exactly one think block and one
result block, parses back (`workers/guard/parse.py`) to its labels, and cannot end its own turn.

Held-out events never reach this: an event the gate holds out (`trainer/held_out.py`) is refused with
`HeldOutLeak`, since `TrainingData` must come without them. An event whose labels cannot fill the result
block (no request label; a response without a response label) is left out and counted in `skipped`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from PIL import Image

from schemas.events import ChatEvent, Verdict, VerdictStatus
from trainer.held_out import is_held_out
from trainer.labelled import LabelledEvent
from workers.guard.base import GuardRequest
from workers.guard.cascade import LITE_NOTE
from workers.guard.parse import parse_output
from workers.guard.prompt import chat_messages, neutralise

REASONING_BACKENDS = frozenset({"vllm", "openai", "transformers"})  # guards whose reasoning is the model's own
_OUTPUT_TAG = re.compile(r"<(?=/?(?:think|result)>)", re.IGNORECASE)


class HeldOutLeak(ValueError):
    """An event the gate holds out for evaluation was given to training data."""


class ReasoningSource(StrEnum):
    SERVING = "serving"  # the serving model's verdict agreed with the label
    REJECTION = "rejection"  # a sampled rollout whose labels matched


@dataclass(frozen=True)
class SamplingSettings:
    """Rejection sampling, as the reference does it: k rollouts at temperature 1.0, top_p 0.95."""

    k: int = 4
    temperature: float = 1.0
    top_p: float = 0.95
    concurrency: int = 8  # items sampled at once

    def __post_init__(self) -> None:
        if self.k < 1 or self.concurrency < 1 or self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"bad sampling settings: {self}")


@dataclass(frozen=True)
class ReasoningPrompt:
    """What the model reads: the chat messages (images as URIs, in their place) and the event they came from."""

    event: ChatEvent
    messages: list[dict[str, Any]]

    @property
    def images(self) -> list[str]:
        return [image.uri for image in self.event.images]

    @property
    def has_response(self) -> bool:
        return self.event.response is not None


# The model being trained, asked for k outputs of one prompt. The job fetches `prompt.images` (or builds a
# GuardRequest from `prompt.event`) and passes the prompt to its backend with n=k.
Sampler = Callable[[ReasoningPrompt, int, float, float], Awaitable[list[str]]]


@dataclass(frozen=True)
class SftExample:
    prompt: ReasoningPrompt
    target: str
    source: ReasoningSource
    request_harmful: bool
    response_harmful: bool | None


@dataclass(frozen=True)
class RlItem:
    """A prompt and its label for GRPO; `hard` when all k rollouts of rejection sampling were wrong."""

    prompt: ReasoningPrompt
    request_harmful: bool
    response_harmful: bool | None
    hard: bool = False


@dataclass(frozen=True)
class ReasoningData:
    sft: list[SftExample]
    rl: list[RlItem]
    skipped: list[str] = field(default_factory=list)  # event ids whose labels cannot fill a result block

    @property
    def hard(self) -> list[RlItem]:
        return [item for item in self.rl if item.hard]


def prompt_of(event: ChatEvent) -> ReasoningPrompt:
    """The messages `chat_messages` builds for the event, each image part naming its image's URI."""
    placeholders = [Image.new("RGB", (1, 1)) for _ in event.images]
    messages = chat_messages(GuardRequest(text=event.text, images=placeholders, response=event.response))
    uris = iter(image.uri for image in event.images)
    for message in messages:
        message["content"] = [{**part, "image": next(uris)} if part["type"] == "image" else part
                              for part in message["content"]]
    return ReasoningPrompt(event=event, messages=messages)


def neutralise_reasoning(text: str) -> str:
    """Reasoning text safe inside a target: no output tag, no chat-template control string; idempotent."""
    return neutralise(_OUTPUT_TAG.sub("<\u200b", text))


def _word(harmful: bool | None) -> str:
    return "None" if harmful is None else ("harmful" if harmful else "unharmful")


def build_target(reasoning: str, request_harmful: bool, response_harmful: bool | None) -> str:
    """The output the model should write: the reasoning, then the labels (`Response: None` without a response)."""
    return (f"<think>\n{neutralise_reasoning(reasoning).strip()}\n</think>\n"
            f"<result>\nRequest: {_word(request_harmful)}\nResponse: {_word(response_harmful)}\n</result>")


def complete_labels(example: LabelledEvent) -> tuple[bool, bool | None] | None:
    """(request, response) labels that fill a result block, or None where they cannot. Without a response in
    the event, any response label is ignored."""
    if example.request_harmful is None:
        return None
    if example.event.response is None:
        return example.request_harmful, None
    if example.response_harmful is None:
        return None
    return example.request_harmful, example.response_harmful


def serving_reasoning(verdict: Verdict, labels: tuple[bool, bool | None],
                      backends: frozenset[str] = REASONING_BACKENDS) -> str | None:
    """The verdict's reasoning when a reasoning backend gave it and its labels are the label's; else None."""
    if verdict.status is not VerdictStatus.OK or verdict.decided_by not in backends:
        return None
    if (verdict.request_harmful, verdict.response_harmful if labels[1] is not None else None) != labels:
        return None
    lines = verdict.reasoning.rstrip().split("\n")
    if verdict.stages and lines[-1].startswith(LITE_NOTE):
        lines = lines[:-1]
    reasoning = "\n".join(lines).strip()
    return reasoning or None


def first_matching(rollouts: list[str], labels: tuple[bool, bool | None]) -> str | None:
    """The reasoning of the first rollout that parses to the label's labels with some reasoning, or None."""
    for text in rollouts:
        parsed = parse_output(text, has_response=labels[1] is not None)
        if parsed.ok and parsed.reasoning and (parsed.request_harmful, parsed.response_harmful) == labels:
            return parsed.reasoning
    return None


async def build_reasoning_data(
    examples: list[LabelledEvent],
    sample: Sampler,
    held_out_fraction: float,
    serving: Mapping[str, Verdict] | None = None,
    sampling: SamplingSettings | None = None,
) -> ReasoningData:
    """SFT examples and RL items from the training examples, in their order. `serving` maps event ids to the
    serving model's verdicts (the data set keeps the verdict each label judged). Raises HeldOutLeak for an
    event the gate holds out at `held_out_fraction`, before sampling anything."""
    sampling = sampling or SamplingSettings()
    serving = serving or {}
    for example in examples:
        if is_held_out(example.event, held_out_fraction):
            raise HeldOutLeak(f"event {example.event.event_id!r} is held out for evaluation")
    gate = asyncio.Semaphore(sampling.concurrency)

    async def one(example: LabelledEvent) -> tuple[SftExample | None, RlItem] | str:
        labels = complete_labels(example)
        if labels is None:
            return example.event.event_id
        prompt = prompt_of(example.event)
        verdict = serving.get(example.event.event_id)
        reasoning = None if verdict is None else serving_reasoning(verdict, labels)
        source = ReasoningSource.SERVING
        if reasoning is None:
            async with gate:
                rollouts = await sample(prompt, sampling.k, sampling.temperature, sampling.top_p)
            if len(rollouts) != sampling.k:
                raise ValueError(f"the sampler returned {len(rollouts)} rollouts, not {sampling.k}")
            reasoning, source = first_matching(rollouts, labels), ReasoningSource.REJECTION
        rl = RlItem(prompt, *labels, hard=reasoning is None)
        if reasoning is None:
            return None, rl
        return SftExample(prompt, build_target(reasoning, *labels), source, *labels), rl

    built = await asyncio.gather(*(one(example) for example in examples))
    sft = [item[0] for item in built if not isinstance(item, str) and item[0] is not None]
    return ReasoningData(sft=sft, rl=[item[1] for item in built if not isinstance(item, str)],
                         skipped=[item for item in built if isinstance(item, str)])
