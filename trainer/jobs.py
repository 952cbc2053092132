"""The one interface every training job implements, and the jobs by name.

A job gets the training part of the data set (held-out events already removed: it never sees them) and
a folder, and returns a `Candidate`: an artefact some guard backend can serve, with what it was made
from. Evaluation, the release gate and publishing are the same for every job (`trainer/pipeline.py`).

Today: `lite-refit` (the lite guard's text head, CPU, minutes). The reasoning-model jobs (data
building, reasoning SFT, GRPO) return an adapter or a checkpoint folder for the `vllm` or
`transformers` backend through the same interface: `kind="adapter"` and `base_model` say how to serve it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from trainer.labelled import LabelledEvent
from trainer.settings import TrainerSettings


@dataclass(frozen=True)
class TrainingData:
    examples: list[LabelledEvent]  # the data set's latest labels, held-out events removed
    dataset: str  # where they came from
    manifest_updated_at: str
    held_out_events: int  # how many were kept back, for the record


@dataclass(frozen=True)
class Candidate:
    version: str
    backend: str  # the guard backend that serves the artefact
    artefact: Path  # a file or a folder
    kind: Literal["full", "adapter"] = "full"
    base_model: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # sources, licences, training figures


class Job(Protocol):
    name: str

    def train(self, data: TrainingData, out_dir: Path) -> Candidate:
        """Blocking: the trainer runs it on a thread of its own."""
        ...


class UnknownJob(ValueError):
    """A job name that no job answers to."""


def _lite_refit(settings: TrainerSettings) -> Job:
    from trainer.lite_refit import LiteRefit

    return LiteRefit(settings.lite_refit)


JOBS: dict[str, Callable[[TrainerSettings], Job]] = {"lite-refit": _lite_refit}


def make_job(name: str, settings: TrainerSettings) -> Job:
    factory = JOBS.get(name)
    if factory is None:
        raise UnknownJob(f"unknown job {name!r}; choose from {sorted(JOBS)}")
    return factory(settings)
