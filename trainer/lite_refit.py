"""The `lite-refit` job: the lite guard's request and response heads, refitted on package data plus audit labels.

- Package data: what `make train-lite` trains on: request texts (`trainer/lite_data.py`) and response pairs
  (`trainer/lite_pairs.py`), optionally a fixed-seed sample of each (`lite_refit.max_package_examples`).
  Their embeddings are computed once per text set and embedding model and kept in
  `lite_refit.embedding_cache_dir`.
- Audit examples: each labelled event gives its request text with the request label to the request head
  and, when the label judges a response, the (request text, response) pair with the response label to the
  response head. They weigh `lite_refit.audit_weight` each against a package item's 1. Image-only events
  have no text for either head.
- The thresholds are tuned for F1 on a validation part chosen by event (both texts of one event always fall
  on the same side), then the heads are refitted on all the training data. The evaluation that decides a
  release happens later, on held-out events this job never received.
"""

from __future__ import annotations

import hashlib
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import numpy as np

from trainer.dataset import held_out
from trainer.jobs import Candidate, TrainingData
from trainer.labelled import LabelledEvent, Task
from trainer.lite_build import package_data
from trainer.lite_data import LICENCES
from trainer.lite_head import EMBEDDING_MODEL, RequestData, ResponseData, Vectors, rows_mask, tuned_heads
from trainer.settings import LiteRefitSettings
from workers.guard.lite import load_embedder

ARTEFACT = "lite_text_head.json"
VALIDATION_FRACTION = 0.2
T = TypeVar("T")


def audit_data(examples: list[LabelledEvent], weight: float) -> tuple[RequestData, ResponseData]:
    texts, text_labels, text_events = [], [], []
    prompts, responses, response_labels, response_events = [], [], [], []
    for item in examples:
        event = item.event
        if Task.REQUEST in item.tasks and event.text.strip():
            texts.append(event.text)
            text_labels.append(bool(item.request_harmful))
            text_events.append(f"audit:{event.event_id}")
        if Task.RESPONSE in item.tasks and event.response and event.response.strip():
            prompts.append(event.text)
            responses.append(event.response)
            response_labels.append(bool(item.response_harmful))
            response_events.append(f"audit:{event.event_id}")
    return (RequestData(texts, np.array(text_labels, dtype=bool), text_events, np.full(len(texts), weight)),
            ResponseData(prompts, responses, np.array(response_labels, dtype=bool), response_events,
                         np.full(len(prompts), weight)))


def sample(items: list[T], labels: list[bool], limit: int | None, seed: int) -> list[T]:
    """All items, or a fixed-seed sample of `limit` of them with both labels kept in proportion."""
    if limit is None or limit >= len(items):
        return items
    rng = random.Random(seed)
    out = []
    for harmful in (True, False):
        group = [item for item, label in zip(items, labels, strict=True) if label is harmful]
        out += rng.sample(group, max(1, round(limit * len(group) / len(items))))
    return out


class LiteRefit:
    name = "lite-refit"

    def __init__(self, settings: LiteRefitSettings) -> None:
        self.settings = settings

    def train(self, data: TrainingData, out_dir: Path) -> Candidate:
        limit, seed = self.settings.max_package_examples, self.settings.seed
        package_request, package_response = package_data()
        request_rows = sample(list(range(len(package_request.y))), package_request.y.tolist(), limit, seed)
        response_rows = sample(list(range(len(package_response.y))), package_response.y.tolist(), limit, seed)
        package_request = package_request.subset(rows_mask(len(package_request.y), request_rows))
        package_response = package_response.subset(rows_mask(len(package_response.y), response_rows))
        audit_request, audit_response = audit_data(data.examples, self.settings.audit_weight)
        request = package_request.join(audit_request)
        response = package_response.join(audit_response)
        embedder = load_embedder(self.settings.threads)
        package_texts = [*package_request.texts, *package_response.prompts, *package_response.responses]
        vectors = Vectors(embedder, package_texts, cache=self._cache_path(package_texts))
        vectors.add(embedder, [*audit_request.texts, *audit_response.prompts, *audit_response.responses])

        # the split unit: an event (both its texts on one side), or the package item itself
        request_val = np.array([_validation(g, t) for g, t in zip(request.sources, request.texts, strict=True)])
        response_val = np.array([_validation(g, t) for g, t in zip(response.sources, response.prompts, strict=True)])
        tuned = tuned_heads(request, response, vectors, request_val, response_val)
        heads = tuned.heads
        model = heads.model()
        version = f"lite-{datetime.now(UTC):%Y%m%dT%H%M%S}-{model.fingerprint[:8]}"
        metadata = {
            "embedding_model": EMBEDDING_MODEL,
            "trained_by": "trainer/lite_refit.py (job lite-refit)",
            "version": version,
            "licences": LICENCES,
            "sources": {
                "package": {"request_texts": len(package_request.y), "response_pairs": len(package_response.y),
                            "sample": limit},
                "audit": {"dataset": data.dataset, "manifest_updated_at": data.manifest_updated_at,
                          "events": len(data.examples), "request_texts": len(audit_request.y),
                          "response_pairs": len(audit_response.y), "weight": self.settings.audit_weight,
                          "held_out_events_excluded": data.held_out_events},
            },
            "validation": {**tuned.validation, "split": "by event (sha256 of the event id)"},
            "seed": seed,
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / ARTEFACT
        heads.model(metadata).save(path)
        return Candidate(version=version, backend="lite", artefact=path, metadata=metadata)

    def _cache_path(self, texts: list[str]) -> Path:
        digest = hashlib.sha256(EMBEDDING_MODEL.encode())
        for text in texts:
            digest.update(hashlib.sha256(text.encode()).digest())
        return self.settings.embedding_cache_dir / f"{digest.hexdigest()[:24]}.npy"


def _validation(group: str, text: str) -> bool:
    key = group if group.startswith("audit:") else f"package:{text}"
    return held_out(key, VALIDATION_FRACTION, salt="lite-refit-validation")
