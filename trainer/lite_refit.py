"""The `lite-refit` job: the lite guard fine-tuned again, on package data plus audit labels, through the same
training code as `make train-lite` (`trainer/lite_build.py`, `trainer/lite_tune.py`).

- It goes on from a fine-tuned model (`lite_refit.start_artefact`, the shipped one by default) rather than
  from the base model, so a few passes over the new labels are enough.
- Package data: what `make train-lite` trains on (package texts and pairs, the contrast corpus' train
  part), optionally a fixed-seed sample of each (`lite_refit.max_package_examples`).
- Audit examples: each labelled event gives its request text with the request label to the request stage
  and, when the label judges a response, the (request text, response) pair with the response label to the
  response stage. They weigh `lite_refit.audit_weight` each against a package item's 1. Image-only events
  have no text for either stage.
- A stage that no audit example speaks to (labels that judge no response, say) is kept as served, not
  trained again on package data alone.
- The operating points are chosen again, on the same validation data as the build's. The evaluation that
  decides a release happens later, on held-out events this job never received, and on the gate's
  regression set.
"""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import numpy as np

from trainer.job_interface import Candidate, TrainingData
from trainer.labelled import LabelledEvent, Task
from trainer.lite_build import train_model, training_data
from trainer.lite_data import LICENCES
from trainer.lite_examples import RequestData, ResponseData, rows_mask
from trainer.lite_tune import TuneConfig
from trainer.settings import LiteRefitSettings
from workers.guard.lite_tuned import DEFAULT_ARTEFACT as ARTEFACT
from workers.guard.lite_tuned import TunedLiteModel

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
        package_request, package_response = training_data()
        request_rows = sample(list(range(len(package_request.y))), package_request.y.tolist(), limit, seed)
        response_rows = sample(list(range(len(package_response.y))), package_response.y.tolist(), limit, seed)
        package_request = package_request.subset(rows_mask(len(package_request.y), request_rows))
        package_response = package_response.subset(rows_mask(len(package_response.y), response_rows))
        audit_request, audit_response = audit_data(data.examples, self.settings.audit_weight)
        start = TunedLiteModel.load(self.settings.start_artefact)
        config = TuneConfig(epochs=self.settings.epochs, max_steps=self.settings.max_steps, seed=seed,
                            threads=self.settings.threads)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / ARTEFACT
        # a stage no audit label speaks to is kept as served: trained again on package data alone, it would
        # only drift from the model that was trained on all of it
        request = package_request.join(audit_request) if len(audit_request.y) else None
        response = package_response.join(audit_response) if len(audit_response.y) else None
        model, _ = train_model(request, response, config, path, start)
        version = f"lite-{datetime.now(UTC):%Y%m%dT%H%M%S}-{model.fingerprint[:8]}"
        metadata = {
            "trained_by": "trainer/lite_refit.py (job lite-refit)",
            "version": version,
            "licences": LICENCES,
            "started_from": str(self.settings.start_artefact or "the shipped lite model"),
            "sources": {
                "package": {"request_texts": len(package_request.y), "response_pairs": len(package_response.y),
                            "sample": limit},
                "audit": {"dataset": data.dataset, "manifest_updated_at": data.manifest_updated_at,
                          "events": len(data.examples), "request_texts": len(audit_request.y),
                          "response_pairs": len(audit_response.y), "weight": self.settings.audit_weight,
                          "held_out_events_excluded": data.held_out_events},
            },
            "tuning": {"epochs": config.epochs, "max_steps": config.max_steps, "seed": seed},
            "stages_trained": [name for name, stage in (("request", request), ("response", response))
                               if stage is not None],
        }
        replace(model, metadata=metadata).save(path)
        return Candidate(version=version, backend="lite", artefact=path, metadata=metadata)

