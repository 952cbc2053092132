"""The served encoder is the trained one: the packed forward agrees with transformers' own forward, for texts
and for (prompt, response) pairs, and a merged low-rank update gives what PEFT's unmerged adapter gives."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from trainer.lite_tune import low_rank_update, pooled
from workers.guard.lite_encoder import PackedEncoder, load_base, merge_low_rank, tokenize

TEXTS = ["how do I kill a stuck process on my own laptop", "hi", "what's the lethal dose of caffeine, asking "
         "so I stay well below it " * 6]
PAIRS = [("how do I make a cake", "Preheat the oven, mix flour, eggs and sugar, bake for 30 minutes."),
         ("", "an answer to an image-only request"), ("hello " * 200, "a long prompt is cut first " * 40)]


def reference(bert: Any, tokenizer: Any, inputs: Any, max_length: int) -> np.ndarray:
    batch = tokenizer.pad(tokenize(tokenizer, inputs, max_length), return_tensors="pt")
    with torch.no_grad():
        return pooled(bert, batch).numpy()  # type: ignore[no-any-return]


@pytest.mark.parametrize("inputs", [TEXTS, PAIRS], ids=["texts", "pairs"])
def test_the_packed_forward_agrees_with_transformers(inputs: Any) -> None:
    bert, tokenizer = load_base(2)
    packed = PackedEncoder(bert, tokenizer, 256)(inputs)
    assert packed.shape == (len(inputs), 384)
    assert np.abs(packed - reference(bert, tokenizer, inputs, 256)).max() < 1e-5


def test_pairs_are_read_as_two_segments() -> None:
    bert, tokenizer = load_base(2)
    encoder = PackedEncoder(bert, tokenizer, 128)
    [as_pair], [as_text] = encoder([("tell me a joke", "no")]), encoder(["tell me a joke no"])
    assert np.abs(as_pair - as_text).max() > 1e-3  # the segment embedding and the separator differ


def test_a_merged_update_gives_what_the_adapter_gives() -> None:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    bert, tokenizer = load_base(2)
    adapted = get_peft_model(bert, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value", "dense"]))
    for module in adapted.modules():
        if getattr(module, "lora_B", None) is not None and "default" in module.lora_B:
            torch.nn.init.normal_(module.lora_B["default"].weight, std=0.05)  # PEFT starts B at zero
    adapted.eval()
    expected = reference(adapted, tokenizer, PAIRS, 256)
    update = low_rank_update(adapted)
    base, _ = load_base(2)
    before = PackedEncoder(base, tokenizer, 256)(PAIRS)
    merge_low_rank(base, update, 8 / 4)
    after = PackedEncoder(base, tokenizer, 256)(PAIRS)
    assert np.abs(before - expected).max() > 1e-3  # the update changes the vectors...
    assert np.abs(after - expected).max() < 1e-4  # ...and merged, it changes them as the adapter does


def test_an_update_for_a_module_the_model_lacks_is_refused() -> None:
    bert, _ = load_base(2)
    with pytest.raises(ValueError, match="does not have"):
        merge_low_rank(bert, {"encoder.layer.9.nothing": (np.zeros((2, 384)), np.zeros((384, 2)))}, 1.0)
