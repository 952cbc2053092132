"""The one interface every training job implements: what a job gets (`TrainingData`: the data set's training
part, held-out events removed) and what it returns (`Candidate`: an artefact a guard backend can serve, with what
it was made from). The jobs by name are `trainer/jobs.py`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from schemas.events import Verdict
from trainer.labelled import LabelledEvent
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
