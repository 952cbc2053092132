"""Dynamic clipping for retraining GuardReasoner-VL with GRPO (Liu et al., 2025, "Training recipe", step 5
"Online RL"): the PPO clip range shrinks over training,

    B_s = eps * (s_total - s) / s_total,    eps = 0.2,

wide early (explore) and narrow late (exploit). The reference keeps a small floor so that updates never stop
entirely; here the range is max(B_s, floor), floor = eps / 10 = 0.02 unless set, and steps past s_total keep
the floor. The clip is symmetric: 1 - B_s below, 1 + B_s above.

`DynamicClipCallback` applies the schedule to a GRPO trainer. It has the shape of a transformers
`TrainerCallback` (every `on_*` event; only `on_step_begin` acts) without importing transformers: at the start
of each optimizer step it sets the trainer's `epsilon_low` and `epsilon_high`, the attributes TRL's
GRPOTrainer reads when it clips the probability ratio, and records each value in `applied`. The trainer is
not among the arguments callbacks receive, so it is given at construction:

    trainer = GRPOTrainer(...)
    trainer.add_callback(DynamicClipCallback(trainer, total_steps=trainer.args.max_steps))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

EPSILON = 0.2


def default_floor(epsilon: float) -> float:
    return epsilon / 10


def clip_range(step: int, total_steps: int, epsilon: float = EPSILON, floor: float | None = None) -> float:
    """max(eps * (s_total - s) / s_total, floor) at optimizer step `step` (0-based) of `total_steps`."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    if step < 0:
        raise ValueError(f"step must not be negative, got {step}")
    floor = default_floor(epsilon) if floor is None else floor
    if not 0 <= floor <= epsilon:
        raise ValueError(f"floor must be in [0, epsilon], got {floor} for epsilon {epsilon}")
    remaining = max(total_steps - step, 0)
    return max(epsilon * (remaining / total_steps), floor)


class ClippedTrainer(Protocol):
    """What the callback needs of a trainer: TRL GRPOTrainer's clip range attributes."""

    epsilon_low: float
    epsilon_high: float


@dataclass(frozen=True)
class AppliedClip:
    step: int
    epsilon: float


class DynamicClipCallback:
    """Sets the trainer's clip range from the schedule at the start of every optimizer step.

    total_steps: s_total; None reads it from the trainer state's `max_steps` at each step.
    applied: every (step, epsilon) the callback set, in order."""

    def __init__(self, trainer: ClippedTrainer, total_steps: int | None = None, epsilon: float = EPSILON,
                 floor: float | None = None) -> None:
        self.trainer = trainer
        self.total_steps = total_steps
        self.epsilon = epsilon
        self.floor = default_floor(epsilon) if floor is None else floor
        clip_range(0, 1, epsilon, self.floor)  # refuse a bad floor now, not at the first step
        self.applied: list[AppliedClip] = []

    def on_step_begin(self, args: Any, state: Any, control: Any, **_kwargs: Any) -> None:
        total = self.total_steps if self.total_steps is not None else state.max_steps
        value = clip_range(state.global_step, total, self.epsilon, self.floor)
        self.trainer.epsilon_low = value
        self.trainer.epsilon_high = value
        self.applied.append(AppliedClip(state.global_step, value))

    def __getattr__(self, name: str) -> Callable[..., None]:
        """Every other trainer event is accepted and does nothing."""
        if name.startswith("on_"):
            return _ignore
        raise AttributeError(name)


def _ignore(*_args: Any, **_kwargs: Any) -> None:
    return None
