"""What the two reasoning jobs share: the serving checkpoint trained on the audit labels, through a TRL
trainer, into an adapter (or checkpoint) release with its sources and figures.

A run: the base and the serving adapter (`trainer/reasoning_inputs.py`) → the training items' images →
the job's rows (`rows`: SFT targets, or GRPO prompts with their labels) → a TRL trainer (`make_trainer`),
trained with a figures callback (`trainer/job_figures.py`) → the adapter saved as the candidate, `job.json`
beside it, the figures in the run's report. Held-out events never arrive here (`trainer/pipeline.py` removes
them, and `trainer/reasoning_data.py` refuses any that would).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runtime.cli_errors import Exit
from trainer.job_figures import FiguresCallback
from trainer.job_interface import Candidate, TrainingData
from trainer.labelled import LabelledEvent
from trainer.reasoning_data import SamplingSettings
from trainer.reasoning_inputs import (
    Base,
    EventImages,
    Rollouts,
    fetch_images,
    load_trainable,
    lora_config,
    serving_base,
    training_device,
)
from trainer.reasoning_settings import ReasoningSettings
from trainer.settings import TrainerSettings


class NothingToTrain(ValueError):
    """The labels gave the job no row to train on."""

    exit_code = Exit.INPUT


class ReasoningJob:
    name = "reasoning"

    def __init__(self, settings: TrainerSettings) -> None:
        self.settings: ReasoningSettings = settings.reasoning
        self.guard = settings.guard
        self.fetch = settings.fetch
        self.held_out_fraction = settings.gate.held_out_fraction
        self.counts: dict[str, Any] = {}

    # what a job adds -------------------------------------------------------------------------------------

    def items(self, examples: list[LabelledEvent]) -> list[LabelledEvent]:
        """The labelled items whose images are read (GRPO adds concatenations here)."""
        return examples

    def rows(self, items: list[LabelledEvent], images: EventImages, rollouts: Rollouts,
             verdicts: dict[str, Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def make_trainer(self, model: Any, processor: Any, rows: list[dict[str, Any]], out_dir: Path,
                     peft_config: Any) -> Any:
        raise NotImplementedError

    def clip_range(self, trainer: Any) -> float | None:
        return None

    # the run ---------------------------------------------------------------------------------------------

    def sampling(self) -> SamplingSettings:
        s = self.settings
        return SamplingSettings(k=s.sampling_k, temperature=s.sampling_temperature, top_p=s.sampling_top_p,
                                concurrency=1)

    def train(self, data: TrainingData, out_dir: Path) -> Candidate:
        base = serving_base(data.serving or self.guard, self.settings)
        examples = data.examples[: self.settings.max_items]
        items = self.items(examples)
        images = asyncio.run(fetch_images([item.event for item in items], self.fetch))
        readable = [item for item in items if images.readable(item.event)]
        self.counts = {"labelled_items": len(examples), "items": len(items),
                       "unreadable_images": len(images.unreadable)}
        model, processor = load_trainable(base, self.settings)
        rollouts = Rollouts(model, processor, images, self.settings.sampling_max_new_tokens, self.settings.seed)
        rows = self.rows(readable, images, rollouts, data.verdicts)
        if not rows:
            raise NothingToTrain(f"{self.name}: none of {len(examples)} labelled items gave a row to train on "
                                 f"({self.counts})")
        self.counts["rows"] = len(rows)
        fresh_adapter = base.adapter is None and not self.settings.full_finetune
        peft_config = lora_config(self.settings) if fresh_adapter else None
        trainer = self.make_trainer(model, processor, rows, out_dir / "checkpoints", peft_config)
        figures = FiguresCallback(lambda: self.clip_range(trainer))  # type: ignore[arg-type, return-value]
        trainer.add_callback(figures)
        with contextlib.redirect_stdout(sys.stderr):  # the trainer's log lines are progress: stdout is the caller's
            trainer.train()
        return self._candidate(trainer, processor, base, data, out_dir, figures)

    def _candidate(self, trainer: Any, processor: Any, base: Base, data: TrainingData, out_dir: Path,
                   figures: FiguresCallback) -> Candidate:
        artefact = out_dir / "artefact"
        trainer.model.save_pretrained(artefact)
        if self.settings.full_finetune:
            processor.save_pretrained(artefact)
        weights = sorted(artefact.glob("*.safetensors"))
        digest = hashlib.sha256(b"".join(path.read_bytes() for path in weights)).hexdigest()[:8]
        version = f"{self.name}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{digest}"
        report_files = figures.write(out_dir / "figures", f"{self.name} {version}")
        metadata = {
            "trained_by": f"trainer/{self.name.replace('-', '_')}.py (job {self.name})",
            "version": version,
            "base_model": str(base.checkpoint),
            "started_from_adapter": None if base.adapter is None else str(base.adapter),
            "kind": "full" if self.settings.full_finetune else "adapter",
            "sources": {"dataset": data.dataset, "manifest_updated_at": data.manifest_updated_at,
                        "held_out_events_excluded": data.held_out_events, **self.counts},
            "settings": self.settings.model_dump(mode="json"),
            "figures": figures.summary(),
        }
        (artefact / "job.json").write_text(json.dumps(metadata, indent=2))
        return Candidate(version=version, backend=base.backend, artefact=artefact,
                         kind="full" if self.settings.full_finetune else "adapter", base_model=str(base.checkpoint),
                         metadata=metadata, report_files=report_files)

    def training_arguments(self, out_dir: Path, learning_rate: float, epochs: float, max_steps: int | None,
                           batch_size: int, accumulation: int) -> dict[str, Any]:
        """The arguments both TRL configs take the same way."""
        s = self.settings
        return {"output_dir": str(out_dir), "learning_rate": learning_rate, "num_train_epochs": epochs,
                "max_steps": max_steps or -1, "per_device_train_batch_size": batch_size,
                "gradient_accumulation_steps": accumulation, "logging_steps": 1, "report_to": [],
                "save_strategy": "steps", "save_steps": s.save_steps, "save_total_limit": 2, "seed": s.seed,
                "data_seed": s.seed, "bf16": s.bf16, "gradient_checkpointing": s.gradient_checkpointing,
                "use_cpu": training_device(s) == "cpu", "dataloader_num_workers": 0}
