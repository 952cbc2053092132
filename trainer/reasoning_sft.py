"""Reasoning SFT (GuardReasoner-VL's R-SFT, Liu et al., 2025, "Training recipe" items 2 and 3) through
TRL's `SFTTrainer`.

Each labelled item becomes a prompt-completion row: the prompt exactly as serving writes it, its images in
place, and the target `<think>…</think><result>…</result>` whose reasoning is the serving model's own where
its verdict agreed with the label, else the first matching rollout of rejection sampling
(`trainer/reasoning_data.py`). Items without either go to GRPO only. The loss is on the completion alone:
TRL's vision collator masks the prompt (`completion_only_loss`), which `tests/trainer/test_reasoning_sft.py`
reads in the labels.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from trainer.labelled import LabelledEvent
from trainer.reasoning_data import build_reasoning_data
from trainer.reasoning_inputs import EventImages, Rollouts, sft_row
from trainer.reasoning_job import ReasoningJob


class ReasoningSft(ReasoningJob):
    name = "reasoning-sft"

    def rows(self, items: list[LabelledEvent], images: EventImages, rollouts: Rollouts,
             verdicts: dict[str, Any]) -> list[dict[str, Any]]:
        data = asyncio.run(build_reasoning_data(items, rollouts, self.held_out_fraction, verdicts, self.sampling()))
        self.counts.update({"sft_examples": len(data.sft), "rl_only": len(data.rl) - len(data.sft),
                            "hard": len(data.hard), "skipped_incomplete_labels": len(data.skipped),
                            "reasoning_sources": {source: sum(1 for e in data.sft if e.source == source)
                                                  for source in sorted({e.source for e in data.sft})}})
        return [sft_row(example, images) for example in data.sft]

    def make_trainer(self, model: Any, processor: Any, rows: list[dict[str, Any]], out_dir: Path,
                     peft_config: Any) -> Any:
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        s = self.settings.sft
        config = SFTConfig(**self.training_arguments(out_dir, s.learning_rate, s.epochs, s.max_steps, s.batch_size,
                                                     s.gradient_accumulation_steps),
                           lr_scheduler_type="cosine", max_length=s.max_length, completion_only_loss=True)
        return SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=processor,
                          peft_config=peft_config)
