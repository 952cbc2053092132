"""GRPO on the audit labels (GuardReasoner-VL's online RL, Liu et al., 2025, "Training recipe" items 4 to
6) through TRL's `GRPOTrainer`.

- Items: every labelled item (`grpo.items = "all"`), or the hard ones only (every rejection-sampling
  rollout wrong, the reference's choice), plus safety-aware concatenations of two items for
  `grpo.concat_share` of them (`trainer/concat_augment.py`).
- No KL term (beta 0, so no reference model is kept); group size, temperature, learning rate and clip
  range are settings with the reference's values as defaults.
- The reward is `trainer/reasoning_reward.py`'s pure function, its normalisation length the generation
  limit; the clip range follows `trainer/clip_schedule.py` step by step (`DynamicClipCallback`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from trainer.clip_schedule import DynamicClipCallback
from trainer.concat_augment import ConcatSettings, augment
from trainer.labelled import LabelledEvent
from trainer.reasoning_data import RlItem, build_reasoning_data, complete_labels, prompt_of
from trainer.reasoning_inputs import EventImages, Rollouts, rl_row
from trainer.reasoning_job import ReasoningJob
from trainer.reasoning_reward import RewardSettings, make_reward_func


class ReasoningGrpo(ReasoningJob):
    name = "reasoning-grpo"

    def items(self, examples: list[LabelledEvent]) -> list[LabelledEvent]:
        share = self.settings.grpo.concat_share
        return augment(examples, self.held_out_fraction, ConcatSettings(share=share, seed=self.settings.seed))

    def rows(self, items: list[LabelledEvent], images: EventImages, rollouts: Rollouts,
             verdicts: dict[str, Any]) -> list[dict[str, Any]]:
        if self.settings.grpo.items == "hard":
            data = asyncio.run(build_reasoning_data(items, rollouts, self.held_out_fraction, verdicts,
                                                    self.sampling()))
            chosen = data.hard
        else:
            chosen = [RlItem(prompt_of(item.event), *labels) for item in items
                      if (labels := complete_labels(item)) is not None]
        self.counts.update({"rl_items": len(chosen),
                            "concatenated": sum(1 for item in chosen if "concat_of" in item.prompt.event.metadata)})
        return [rl_row(item, images) for item in chosen]

    def make_trainer(self, model: Any, processor: Any, rows: list[dict[str, Any]], out_dir: Path,
                     peft_config: Any) -> Any:
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer

        s = self.settings.grpo
        config = GRPOConfig(**self.training_arguments(out_dir, s.learning_rate, s.epochs, s.max_steps, s.batch_size,
                                                      s.gradient_accumulation_steps),
                            beta=0.0, num_generations=s.num_generations, temperature=s.temperature,
                            epsilon=s.epsilon, max_completion_length=s.max_completion_length, use_vllm=s.use_vllm,
                            vllm_mode="colocate")
        reward = make_reward_func(RewardSettings(beta=s.length_cutoff, length_norm_tokens=s.max_completion_length))
        trainer = GRPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                              processing_class=processor, reward_funcs=reward, peft_config=peft_config)
        if s.dynamic_clip:
            trainer.add_callback(DynamicClipCallback(trainer, epsilon=s.epsilon, floor=s.clip_floor))
        return trainer

    def clip_range(self, trainer: Any) -> float | None:
        return float(trainer.epsilon_low)
