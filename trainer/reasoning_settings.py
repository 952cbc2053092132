"""Settings of the reasoning jobs (`reasoning-sft`, `reasoning-grpo`): GuardReasoner-VL retrained from the
audit labels with LoRA (or a full fine-tune) through TRL's trainers.

The defaults are the reference's recipe where it gives one (Liu et al., 2025, "Training recipe": R-SFT at lr
5e-5 with a cosine schedule and a 2,048-token cut-off; rejection sampling 4 times at temperature 1.0 / top_p
0.95; concatenation for about 20% of the RL items; GRPO without a KL term, 16 rollouts at temperature 1.2, lr
1e-6, clip range 0.2 shrinking over training). Batch sizes are per device and small: the reference's batch of
192 is `batch_size * gradient_accumulation_steps * devices`. On a GPU at real size (3B, 7B), see
`deploy/gpu/reasoning-train.toml`: bf16 and gradient checkpointing.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from runtime.settings import Section

QWEN_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class SftSettings(Section):
    learning_rate: float = Field(5e-5, gt=0)
    epochs: float = Field(3.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="a cap on optimiser steps (None: the epochs decide)")
    batch_size: int = Field(1, ge=1, description="examples per device and step")
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int = Field(2048, ge=16, description="tokens of prompt and target; longer examples are cut")


class GrpoSettings(Section):
    items: Literal["all", "hard"] = Field("all", description="which labelled items GRPO trains on: all, or only "
                                          "the hard ones (every rejection-sampling rollout wrong), as the "
                                          "reference does with its large SFT set")
    num_generations: int = Field(16, ge=2, description="rollouts per prompt (the group GRPO's advantage is "
                                 "relative to)")
    temperature: float = Field(1.2, gt=0)
    learning_rate: float = Field(1e-6, gt=0)
    epsilon: float = Field(0.2, gt=0, lt=1, description="the PPO clip range at the first step")
    dynamic_clip: bool = Field(True, description="shrink the clip range linearly to clip_floor over training")
    clip_floor: float | None = Field(None, ge=0, description="the smallest clip range (None: a tenth of epsilon)")
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(16, ge=1, description="completions per device and step: a multiple of "
                            "num_generations divides it")
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_completion_length: int = Field(2048, ge=8, description="generation limit, also the reward's "
                                       "normalisation length")
    length_cutoff: float = Field(1.0, gt=0, le=1, description="the reward's beta: 1 standard, about 1/6 Eco")
    concat_share: float = Field(0.2, ge=0, lt=1, description="share of RL items made by safety-aware "
                                "concatenation of two labelled items")
    use_vllm: bool = Field(False, description="generate rollouts with vLLM (GPU; TRL's colocate mode)")


class ReasoningSettings(Section):
    serve_backend: Literal["auto", "transformers", "vllm"] = Field(
        "auto", description="the backend the candidate is scored and served by; auto: the configured guard's "
        "backend when it is transformers or vllm, else transformers")
    full_finetune: bool = Field(False, description="train every weight and release a checkpoint, not an adapter")
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_targets: list[str] = Field(default_factory=lambda: list(QWEN_LORA_TARGETS),
                                    description="the language model's modules LoRA adapts")
    device: str = Field("auto", description="auto (cuda when present), cpu, cuda")
    bf16: bool = Field(False, description="train in bfloat16 (GPU)")
    gradient_checkpointing: bool = False
    sampling_k: int = Field(4, ge=1, description="rejection sampling: rollouts per item without serving reasoning")
    sampling_temperature: float = Field(1.0, gt=0)
    sampling_top_p: float = Field(0.95, gt=0, le=1)
    sampling_max_new_tokens: int = Field(1024, ge=8)
    save_steps: int = Field(200, ge=1, description="a checkpoint every this many steps (the last two are kept)")
    max_items: int | None = Field(None, ge=1, description="a cap on labelled items one run reads (None: all)")
    seed: int = 0
    sft: SftSettings = Field(default_factory=SftSettings)
    grpo: GrpoSettings = Field(default_factory=GrpoSettings)
