"""Fine-tune one stage of the lite guard: all-MiniLM-L6-v2 with a LoRA update (PEFT) and a logistic head,
trained end to end on labelled texts or (prompt, response) pairs. `make train-lite` and the trainer's
`lite-refit` job both train through `tune_stage`: one training path.

The loss is binary cross-entropy, weighted so that each label carries half the total weight whatever the
class balance (each example's own weight scales it within its class). Inputs are tokenized as the served
model tokenizes them (`workers/guard/lite_encoder.py`), and the returned update is what the artefact
stores, so the model evaluated is the model served.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from workers.guard.lite_encoder import Inputs, load_base, tokenize
from workers.guard.lite_tuned import StageWeights

HEAD_SCALE = 10.0  # the head reads 10 x the unit-norm vector: logits of useful size from the first step


@dataclass(frozen=True)
class TuneConfig:
    """How one stage is fine-tuned (defaults chosen on the validation data, never on a test set)."""

    epochs: float = 2.0
    batch_size: int = 32
    learning_rate: float = 5e-4  # the low-rank update's
    head_learning_rate: float = 5e-3
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.1
    targets: tuple[str, ...] = ("query", "key", "value", "dense")
    warmup_share: float = 0.06
    max_steps: int | None = None  # a cap on optimiser steps (tests, quick refits)
    seed: int = 0
    threads: int = 2


def class_balanced(y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Each example's weight, scaled so both labels sum to the same total (mean weight 1)."""
    out = weights.astype(np.float64).copy()
    for label in (True, False):
        rows = y == label
        if rows.any():
            out[rows] *= 0.5 * len(y) / out[rows].sum()
    return out


def tune_stage(inputs: Inputs, y: np.ndarray, weights: np.ndarray, max_length: int, config: TuneConfig,
               description: str, start: StageWeights | None = None) -> StageWeights:
    """The fine-tuned update and head of one stage, trained on `inputs` labelled `y` (True: harmful), from
    the base model, or from `start` (a stage already fine-tuned with the same rank: a refit goes on from
    the served model instead of starting over)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import get_linear_schedule_with_warmup

    if len(inputs) != len(y) or len(y) != len(weights):
        raise ValueError("inputs, labels and weights differ in length")
    if len(set(y.tolist())) < 2:
        raise ValueError("a stage needs examples of both labels to learn from")
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    bert, tokenizer = load_base(config.threads)
    model = get_peft_model(bert, LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                                            target_modules=list(config.targets), bias="none"))
    head = torch.nn.Linear(bert.config.hidden_size, 1)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    if start is not None:
        resume(model, head, start, config)
    tokens = tokenize(tokenizer, inputs, max_length)
    target = torch.tensor(y, dtype=torch.float32)
    weight = torch.tensor(class_balanced(y, weights), dtype=torch.float32)
    per_epoch = math.ceil(len(y) / config.batch_size)
    steps = max(1, math.ceil(per_epoch * config.epochs))
    if config.max_steps is not None:
        steps = min(steps, config.max_steps)
    optimiser = torch.optim.AdamW([
        {"params": [p for p in model.parameters() if p.requires_grad], "lr": config.learning_rate},
        {"params": list(head.parameters()), "lr": config.head_learning_rate, "weight_decay": 0.0},
    ], weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimiser, int(steps * config.warmup_share), steps)
    model.train()
    order: list[list[int]] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("loss {task.fields[loss]:.3f}"))
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(description, total=steps, loss=float("nan"))
        for _ in range(steps):
            if not order:
                order = batches(tokens["input_ids"], config.batch_size, rng)
            rows = order.pop()
            batch = tokenizer.pad({k: [v[i] for i in rows] for k, v in tokens.items()}, return_tensors="pt")
            logits = head(HEAD_SCALE * pooled(model, batch)).squeeze(-1)
            loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits, target[rows], reduction="none")
                    * weight[rows]).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in optimiser.param_groups for p in g["params"]], 1.0)
            optimiser.step()
            schedule.step()
            optimiser.zero_grad()
            progress.update(task, advance=1, loss=loss.item())
    return StageWeights(low_rank_update(model), config.alpha / config.rank,
                        HEAD_SCALE * head.weight.detach().numpy()[0].astype(np.float32),
                        float(head.bias.detach()[0]), max_length)


def batches(ids: list[list[int]], size: int, rng: random.Random, pool: int = 50) -> list[list[int]]:
    """One epoch's batches: a random order, cut into pools of `pool` batches, each pool sorted by length
    before it is cut into batches (little padding), the batches then shuffled."""
    order = rng.sample(range(len(ids)), len(ids))
    out = []
    for start in range(0, len(order), size * pool):
        chunk = sorted(order[start:start + size * pool], key=lambda i: len(ids[i]))
        out += [chunk[i:i + size] for i in range(0, len(chunk), size)]
    rng.shuffle(out)
    return out


def pooled(model: Any, batch: Any) -> Any:
    """Mean over the real tokens of the last layer, L2-normalised: what `PackedEncoder` returns."""
    import torch.nn.functional as F

    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                token_type_ids=batch["token_type_ids"]).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
    return F.normalize((out * mask).sum(1) / mask.sum(1), p=2, dim=1)


def resume(model: Any, head: Any, start: StageWeights, config: TuneConfig) -> None:
    """Load `start`'s update and head into a freshly adapted model."""
    import torch

    if abs(start.scale - config.alpha / config.rank) > 1e-9:
        raise ValueError(f"the stage to resume was trained with scale {start.scale}, not {config.alpha / config.rank}")
    modules = {name.removeprefix("base_model.model."): m for name, m in model.named_modules()
               if getattr(m, "lora_A", None) is not None and "default" in m.lora_A}
    if set(modules) != set(start.update):
        raise ValueError("the stage to resume adapts other modules than this configuration does")
    with torch.no_grad():
        for name, (a, b) in start.update.items():
            if a.shape[0] != config.rank:
                raise ValueError(f"the stage to resume has rank {a.shape[0]}, not {config.rank}")
            modules[name].lora_A["default"].weight.copy_(torch.as_tensor(a))
            modules[name].lora_B["default"].weight.copy_(torch.as_tensor(b))
        head.weight.copy_(torch.as_tensor(start.head_weight / HEAD_SCALE)[None, :])
        head.bias.fill_(start.head_bias)


def low_rank_update(model: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each adapted module's (A, B), named as in the base model."""
    update = {}
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if lora_a is not None and "default" in lora_a:
            base_name = name.removeprefix("base_model.model.")
            update[base_name] = (lora_a["default"].weight.detach().numpy().copy(),
                                 module.lora_B["default"].weight.detach().numpy().copy())
    if not update:
        raise RuntimeError("the fine-tuned model has no low-rank update: no module matched the targets")
    return update
