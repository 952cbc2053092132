"""The length-aware safety reward for retraining GuardReasoner-VL with GRPO (Liu et al., 2025, "Training
recipe", step 6 "Reward").

    r_safety = I_format * (0.5 * [request label correct] + 0.5 * [response label correct])
    r        = (r_safety - 1) / min(l_norm, beta)^2

I_format is 1 only when the output has `<think>...</think>` followed by `<result>...</result>`. The output is
read by `workers.guard.parse.parse_output`, the reader serving uses, so the reward scores exactly what a
served verdict would say: a final `<result>` block that does not close the output, a missing, unknown
(`none`, `maybe`) or repeated label is a malformed output (I_format = 0), as it is an error in serving.

l_norm is the normalised reasoning length, clip(length_tokens, 1, length_norm_tokens) / length_norm_tokens,
in (0, 1]: length_tokens is the completion's length in tokens (the think block is nearly all of it) and
length_norm_tokens the normalisation length, the generation limit of the job. A malformed output has no
reasoning that can be read, so its l_norm is the floor, 1 / length_norm_tokens; it scores the minimum,
-1 / min(1 / length_norm_tokens, beta)^2 (-length_norm_tokens^2 unless the cut-off is under one token), whatever
its length: a longer malformed output earns nothing.

Properties:
- a fully correct answer scores 0, the maximum, whatever its length;
- a wrong or half-wrong answer scores below 0 and is penalised less the longer it reasoned, up to the
  cut-off beta * length_norm_tokens tokens; from there on its score is constant, (r_safety - 1) / beta^2;
- r lies in [minimum, 0].
beta = 1 is the standard model; about 1/6 gives the Eco variant (a shorter cut-off).

An item without a response (request only) has one task. Serving reads no response label for it (the model
writes `Response: None`), so neither does the reward: the request label carries the whole weight,
r_safety = I_format * [request label correct]. The reference's own reader maps `None` to unharmful, which
gives every rollout of such an item the same free 0.5; dropping that constant keeps a correct request label
at the maximum and a wrong one at the same score as a fully wrong two-task answer.

`reward_func` is the batch form GRPO trainers call: `reward_func(prompts, completions, completion_ids=...,
request_harmful=[...], response_harmful=[...], **other_columns) -> list[float]`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from workers.guard.parse import parse_output


@dataclass(frozen=True)
class RewardSettings:
    """beta: the length cut-off as a fraction of the normalisation length (1 standard, about 1/6 Eco).
    length_norm_tokens: the normalisation length in tokens; a completion this long has l_norm = 1."""

    beta: float = 1.0
    length_norm_tokens: int = 2048

    def __post_init__(self) -> None:
        if not 0 < self.beta <= 1:
            raise ValueError(f"beta must be in (0, 1], got {self.beta}")
        if self.length_norm_tokens < 1:
            raise ValueError(f"length_norm_tokens must be at least 1, got {self.length_norm_tokens}")

    @property
    def minimum(self) -> float:
        """The lowest reward: a malformed output, or a fully wrong answer at the shortest length."""
        return -1.0 / min(1.0 / self.length_norm_tokens, self.beta) ** 2

    @property
    def maximum(self) -> float:
        return 0.0

    @property
    def cutoff_tokens(self) -> float:
        """The length from which a wrong answer's score no longer rises."""
        return self.beta * self.length_norm_tokens


def safety_score(output: str, request_harmful: bool, response_harmful: bool | None) -> float | None:
    """r_safety for one output: 0, 0.5 or 1; None when the output is malformed (I_format = 0)."""
    parsed = parse_output(output, has_response=response_harmful is not None)
    if not parsed.ok:
        return None
    request_right = parsed.request_harmful == request_harmful
    if response_harmful is None:
        return 1.0 if request_right else 0.0
    return 0.5 * request_right + 0.5 * (parsed.response_harmful == response_harmful)


def normalised_length(length_tokens: int, settings: RewardSettings) -> float:
    """l_norm in (0, 1]."""
    return min(max(length_tokens, 1), settings.length_norm_tokens) / settings.length_norm_tokens


def reward(output: str, request_harmful: bool, response_harmful: bool | None, length_tokens: int,
           settings: RewardSettings = RewardSettings()) -> float:
    """r = (r_safety - 1) / min(l_norm, beta)^2 for one completion; response_harmful None: request only."""
    r_safety = safety_score(output, request_harmful, response_harmful)
    if r_safety is None:
        return settings.minimum
    if r_safety == 1.0:
        return 0.0
    return (r_safety - 1.0) / min(normalised_length(length_tokens, settings), settings.beta) ** 2


def completion_text(completion: Any) -> str:
    """A completion as trainers pass it: plain text, or a conversation whose last message is the answer
    (its content a string or a list of parts, the text parts joined)."""
    if isinstance(completion, str):
        return completion
    content = completion[-1]["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type", "text") == "text")


def make_reward_func(settings: RewardSettings = RewardSettings()) -> Callable[..., list[float]]:
    """The batch reward for a GRPO trainer. The data set has columns `request_harmful` (bool) and
    `response_harmful` (bool, or None for a request-only item); the trainer passes them per completion,
    with `completion_ids` (the completion's tokens, their count is its length). Other columns are ignored."""

    def guard_reward(prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Sequence[Sequence[int]],
                     request_harmful: Sequence[bool], response_harmful: Sequence[bool | None],
                     **_columns: Any) -> list[float]:
        if not len(completions) == len(completion_ids) == len(request_harmful) == len(response_harmful):
            raise ValueError("completions, completion_ids and the label columns differ in length")
        return [reward(completion_text(completion), _label(request), None if response is None else _label(response),
                       len(ids), settings)
                for completion, ids, request, response
                in zip(completions, completion_ids, request_harmful, response_harmful, strict=True)]

    return guard_reward


def _label(value: Any) -> bool:
    """A label column's value as a bool; a string or any other value is refused, not guessed."""
    if isinstance(value, str) or value not in (True, False):
        raise ValueError(f"a label must be true or false, got {value!r}")
    return bool(value)


reward_func = make_reward_func()
