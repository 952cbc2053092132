"""The one interface every training job implements, and the jobs by name.

A job gets the training part of the data set (held-out events already removed: it never sees them) and
a folder, and returns a `Candidate`: an artefact some guard backend can serve, with what it was made
from. Evaluation, the release gate and publishing are the same for every job (`trainer/pipeline.py`).

Jobs: `lite-refit` (the lite guard's text head, CPU, minutes); `reasoning-sft` and `reasoning-grpo`
(GuardReasoner-VL retrained on the serving checkpoint, `trainer/reasoning_job.py`), which return a LoRA
adapter (or a checkpoint folder) for the `transformers` or `vllm` backend: `kind="adapter"` and `base_model`
say how to serve it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from schemas.events import Verdict
from trainer.labelled import LabelledEvent
from trainer.settings import TrainerSettings
from workers.cli_errors import Exit
from workers.settings import GuardSettings


@dataclass(frozen=True)
class TrainingData:
    examples: list[LabelledEvent]  # the data set's latest labels, held-out events removed
    dataset: str  # where they came from
    manifest_updated_at: str
    held_out_events: int  # how many were kept back, for the record
    verdicts: dict[str, Verdict] = field(default_factory=dict)  # event id -> the verdict its label judged
    serving: GuardSettings | None = None  # the guard serving now (its release applied), where known


@dataclass(frozen=True)
class Candidate:
    version: str
    backend: str  # the guard backend that serves the artefact
    artefact: Path  # a file or a folder
    kind: Literal["full", "adapter"] = "full"
    base_model: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # sources, licences, training figures
    report_files: list[Path] = field(default_factory=list)  # the job's own figures, copied into the run's report


class Job(Protocol):
    name: str

    def train(self, data: TrainingData, out_dir: Path) -> Candidate:
        """Blocking: the trainer runs it on a thread of its own."""
        ...


class UnknownJob(ValueError):
    """A job name that no job answers to."""

    exit_code = Exit.USAGE


def _lite_refit(settings: TrainerSettings) -> Job:
    from trainer.lite_refit import LiteRefit

    return LiteRefit(settings.lite_refit)


def _reasoning_sft(settings: TrainerSettings) -> Job:
    from trainer.reasoning_sft import ReasoningSft

    return ReasoningSft(settings)


def _reasoning_grpo(settings: TrainerSettings) -> Job:
    from trainer.reasoning_grpo import ReasoningGrpo

    return ReasoningGrpo(settings)


JOBS: dict[str, Callable[[TrainerSettings], Job]] = {"lite-refit": _lite_refit, "reasoning-sft": _reasoning_sft,
                                                      "reasoning-grpo": _reasoning_grpo}


def make_job(name: str, settings: TrainerSettings) -> Job:
    factory = JOBS.get(name)
    if factory is None:
        raise UnknownJob(f"unknown job {name!r}; choose from {sorted(JOBS)}")
    return factory(settings)
