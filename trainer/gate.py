"""The release gate: a candidate replaces the serving model only if it is better on the same held-out
labels, by a margin, and worse at no task beyond a tolerance."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from trainer.evaluate import Evaluation
from trainer.labelled import Task
from trainer.settings import GateSettings


@dataclass(frozen=True)
class GateDecision:
    release: bool
    reason: str
    candidate_f1: float
    serving_f1: float
    held_out: int
    task_change: dict[str, float] = field(default_factory=dict)  # candidate F1 minus serving F1, per task

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(candidate: Evaluation, serving: Evaluation, held_out: int, gate: GateSettings) -> GateDecision:
    change = {task.value: round(candidate.task_f1(task) - serving.task_f1(task), 4)
              for task in Task if task in candidate.tasks and task in serving.tasks}
    figures = {"candidate_f1": candidate.f1, "serving_f1": serving.f1, "held_out": held_out, "task_change": change}
    gain = round(candidate.f1 - serving.f1, 4)
    if held_out < gate.min_held_out:
        return GateDecision(False, f"{held_out} held-out labels, fewer than gate.min_held_out={gate.min_held_out}",
                            **figures)
    regressed = {task: delta for task, delta in change.items() if delta < -gate.max_task_regression}
    if regressed:
        worst = min(regressed, key=regressed.__getitem__)
        return GateDecision(False, f"{worst} F1 drops by {-regressed[worst]:.4f}, more than "
                            f"gate.max_task_regression={gate.max_task_regression}", **figures)
    if gain < gate.min_f1_gain:
        return GateDecision(False, f"F1 gain {gain:+.4f} is below gate.min_f1_gain={gate.min_f1_gain}", **figures)
    return GateDecision(True, f"F1 gain {gain:+.4f} (at least {gate.min_f1_gain}), no task regressed past "
                        f"{gate.max_task_regression}", **figures)
