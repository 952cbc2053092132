"""The release gate: a candidate replaces the serving model only if it is better on the same held-out
labels, by a margin, errs rarely, is worse at no task beyond a tolerance, and is no worse on the part of
the held-out labels that was chosen by uniform random sampling.

A figure that is undefined (F1 with no harmful label to find: "n/a" in the reports) proves nothing either
way: a task with such a figure cannot be judged, and a candidate is not released on a task the gate cannot
judge (the F1 of a model that flags harmless items there would read the same as one that does not)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from trainer.evaluate import Evaluation, Figures
from trainer.labelled import Task
from trainer.settings import GateSettings


@dataclass(frozen=True)
class Composition:
    """What the held-out labels are made of, by how each labelled event was chosen for review (the label's
    `random_sample`). Selected events (the serving model was unsure, a user reported them) are the hard
    ones, which favours any candidate trained on their like; the random ones are a fair sample of traffic."""

    random: int = 0
    selected: int = 0
    unknown: int = 0

    @classmethod
    def of(cls, random_sample: Iterable[bool | None]) -> Composition:
        flags = list(random_sample)
        return cls(random=flags.count(True), selected=flags.count(False), unknown=flags.count(None))

    @property
    def total(self) -> int:
        return self.random + self.selected + self.unknown


@dataclass(frozen=True)
class RandomPart:
    """Both models scored on the random-sample part of the held-out labels alone."""

    candidate: Evaluation
    serving: Evaluation


@dataclass(frozen=True)
class GateDecision:
    release: bool
    reason: str
    candidate_f1: float
    serving_f1: float
    held_out: int
    # candidate F1 minus serving F1, per task; None: the task cannot be judged (its F1 is undefined)
    task_change: dict[str, float | None] = field(default_factory=dict)
    candidate_error_rate: float = 0.0
    serving_error_rate: float = 0.0
    composition: dict[str, int] = field(default_factory=dict)  # held-out labels: random, selected, unknown
    random_candidate_f1: float | None = None  # the figures on the random-sample part (None: no such part)
    random_serving_f1: float | None = None
    regression_candidate_f1: float | None = None  # the figures on the regression set (None: not scored)
    regression_serving_f1: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(candidate: Evaluation, serving: Evaluation, held_out: int, gate: GateSettings,
           composition: Composition | None = None, random_part: RandomPart | None = None,
           regression: RandomPart | None = None) -> GateDecision:
    """Release or refuse `candidate`, both models scored on the same `held_out` labels (whose make-up is
    `composition`; without one, all of unknown origin). Refused, in this order, when:

    - there are fewer than `gate.min_held_out` held-out labels;
    - more than `gate.max_error_rate` of the candidate's decisions are errors (errors also count as wrong
      answers in every F1, so erring cannot raise a figure);
    - the F1 on the whole set, or a task's F1, cannot be judged: it is undefined (no harmful label there);
    - a task's F1 drops by more than `gate.max_task_regression`;
    - the random-sample part (`random_part`: labels of events chosen by uniform random sampling) holds at
      least `gate.min_held_out` labels and the candidate's F1 on it drops by more than
      `gate.max_task_regression`: the whole set leans to the events the serving model was unsure of, so a
      candidate may gain there while doing worse on the traffic as it comes; a smaller part is reported,
      not judged;
    - on the regression set (`regression`: both models scored on `trainer/regression.py`'s texts, where
      reading alarming words instead of intent goes wrong), the candidate's F1 drops by more than
      `gate.max_task_regression`;
    - the F1 on the whole set gains less than `gate.min_f1_gain`.
    """
    figures = _figures(candidate, serving, held_out, composition or Composition(unknown=held_out), random_part)
    figures["regression_candidate_f1"] = regression.candidate.f1 if regression else None
    figures["regression_serving_f1"] = regression.serving.f1 if regression else None
    refusal = _refusal(candidate, serving, held_out, gate, figures, random_part)
    if refusal is None and regression is not None:
        drop = round(regression.serving.f1 - regression.candidate.f1, 4)
        if drop > gate.max_task_regression:
            refusal = (f"F1 on the regression set (hard cases, over-blocking contrasts) drops by {drop:.4f}, more "
                       f"than gate.max_task_regression={gate.max_task_regression}")
    if refusal is not None:
        return GateDecision(False, refusal, **figures)
    gain = round(candidate.f1 - serving.f1, 4)
    return GateDecision(True, f"F1 gain {gain:+.4f} (at least {gate.min_f1_gain}), no task regressed past "
                        f"{gate.max_task_regression}, error rate {candidate.error_rate:.4f}; "
                        f"{_random_note(random_part, gate)}", **figures)


def _figures(candidate: Evaluation, serving: Evaluation, held_out: int, composition: Composition,
             random_part: RandomPart | None) -> dict[str, Any]:
    change = {task.value: _change(candidate.by_task[task], serving.by_task[task])
              for task in Task if task in candidate.tasks and task in serving.tasks}
    return {"candidate_f1": candidate.f1, "serving_f1": serving.f1, "held_out": held_out, "task_change": change,
            "candidate_error_rate": candidate.error_rate, "serving_error_rate": serving.error_rate,
            "composition": asdict(composition),
            "random_candidate_f1": random_part.candidate.f1 if random_part else None,
            "random_serving_f1": random_part.serving.f1 if random_part else None}


def _refusal(candidate: Evaluation, serving: Evaluation, held_out: int, gate: GateSettings, figures: dict[str, Any],
             random_part: RandomPart | None) -> str | None:
    """Why the candidate is refused, or None."""
    if held_out < gate.min_held_out:
        return f"{held_out} held-out labels, fewer than gate.min_held_out={gate.min_held_out}"
    if candidate.error_rate > gate.max_error_rate:
        return (f"the candidate errs on {candidate.error_rate:.4f} of its decisions, more than "
                f"gate.max_error_rate={gate.max_error_rate}")
    unjudged = _cannot_judge(candidate, figures["task_change"])
    if unjudged is not None:
        return unjudged
    regressed = {task: delta for task, delta in figures["task_change"].items() if delta < -gate.max_task_regression}
    if regressed:
        worst = min(regressed, key=regressed.__getitem__)
        return (f"{worst} F1 drops by {-regressed[worst]:.4f}, more than "
                f"gate.max_task_regression={gate.max_task_regression}")
    random_change = _random_change(random_part, gate)
    if random_change is not None and -random_change > gate.max_task_regression:
        return (f"F1 on the random-sample labels drops by {-random_change:.4f}, more than "
                f"gate.max_task_regression={gate.max_task_regression}")
    gain = round(candidate.f1 - serving.f1, 4)
    if gain < gate.min_f1_gain:
        return f"F1 gain {gain:+.4f} is below gate.min_f1_gain={gate.min_f1_gain}"
    return None


def undefined(figures: Figures) -> bool:
    """Whether F1 says nothing here: no harmful label to find (0/0 when nothing is flagged either; when
    something is, F1 is 0 whether one harmless item was flagged or all of them)."""
    return figures.f1 is None or figures.tp + figures.fn == 0


def _change(candidate: Figures, serving: Figures) -> float | None:
    """Candidate minus serving F1, or None where either is undefined."""
    if undefined(candidate) or undefined(serving):
        return None
    return round(candidate.f1 - serving.f1, 4)


def _cannot_judge(candidate: Evaluation, task_change: dict[str, float | None]) -> str | None:
    """Why the figures cannot decide, or None when they can."""
    if undefined(candidate.overall):
        return "cannot judge: no held-out label is harmful, so F1 is undefined (n/a); label harmful events too"
    tasks = [task for task, change in task_change.items() if change is None]
    if tasks:
        return (f"cannot judge the {', '.join(tasks)} task: no held-out label of it is harmful, so its F1 is "
                "undefined (n/a); label harmful examples of it too")
    return None


def _random_change(random_part: RandomPart | None, gate: GateSettings) -> float | None:
    """Candidate minus serving F1 on the random-sample part; None when it is too small to judge on its own,
    or its F1 is undefined (no harmful label among its labels)."""
    if random_part is None or random_part.candidate.items < gate.min_held_out:
        return None
    return _change(random_part.candidate.overall, random_part.serving.overall)


def _random_note(random_part: RandomPart | None, gate: GateSettings) -> str:
    items = random_part.candidate.items if random_part else 0
    change = _random_change(random_part, gate)
    if change is None and items >= gate.min_held_out:
        return f"{items} random-sample labels, none harmful: their F1 is undefined (n/a), not judged on their own"
    if change is None:
        return f"{items} random-sample labels, too few (gate.min_held_out={gate.min_held_out}) to judge on their own"
    return f"F1 on the {items} random-sample labels {change:+.4f}"
