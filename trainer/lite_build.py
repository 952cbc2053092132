"""`make train-lite`: fine-tune the shipped lite guard and write its evaluation report.

1. Training data: package request texts (`lite_data.py`), package response pairs (`lite_pairs.py`), and the
   train part of the written contrastive corpus (`lite_contrast.py`), which weighs `CONTRAST_WEIGHT` each.
2. Both stages fine-tuned through `lite_tune.tune_stage` (the trainer's `lite-refit` job uses the same).
3. Every choice on validation data only: the contrast corpus' validation part and the development pairs
   (`data/dev_cases.jsonl`) choose each operating point's thresholds and the cascade band
   (`lite_points.py`).
4. Scored once, on data nothing was chosen on: the contrast corpus' test part and the hand-written hard
   cases (`data/hard_cases.jsonl`), by the model as served (`LiteGuard`), and by P5's model
   (`artefacts/lite_text_head.json`) on the same texts, so before and after compare like with like.
5. The artefact records sources, licences, counts, settings, operating points and every figure; the report
   (JSON, Markdown, plot) goes to `report_dir` (`lite_report.py`).

Deterministic up to floating point: fixed seeds, one base model from its package.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from trainer.lite_contrast import load_contrast
from trainer.lite_data import LICENCES, load_examples
from trainer.lite_examples import RequestData, ResponseData, load_hard_cases
from trainer.lite_pairs import load_pairs
from trainer.lite_points import choose_points, evaluate_points, guard_scores
from trainer.lite_report import write_report
from trainer.lite_tune import TuneConfig, tune_stage
from workers.guard.lite_encoder import BASE_MODEL
from workers.guard.lite_model import LiteModel
from workers.guard.lite_tuned import StageWeights, TunedLiteModel

SEED = 0
DEV_CASES = Path(__file__).resolve().parent / "data" / "dev_cases.jsonl"
BEFORE = Path(__file__).resolve().parent.parent / "workers" / "guard" / "artefacts" / "lite_text_head.json"
ASSEMBLED_WEIGHT = 0.3  # an assembled pair's weight against a labelled or hand-written one (P5, on the dev pairs)
WHOLE_PAIRS = ("pyrit-", "audit:", "written-")  # pairs people labelled or wrote whole, not assembled from parts
CONTRAST_WEIGHT = 2.0  # a contrast item against a package one: they teach what the packages do not
REQUEST_MAX_LENGTH = 128  # tokens: a request alone
PAIR_MAX_LENGTH = 256  # tokens: prompt and response together, cut longest-first


def package_data() -> tuple[RequestData, ResponseData]:
    examples = load_examples()
    pairs = load_pairs(SEED)
    request = RequestData([e.text for e in examples], np.array([e.harmful for e in examples]),
                          [e.source for e in examples], np.ones(len(examples)))
    weights = np.array([1.0 if p.source.startswith(WHOLE_PAIRS) else ASSEMBLED_WEIGHT for p in pairs])
    response = ResponseData([p.prompt for p in pairs], [p.response for p in pairs], np.array([p.harmful for p in pairs]),
                            [p.source for p in pairs], weights)
    return request, response


def load_dev_pairs() -> ResponseData:
    rows = [json.loads(line) for line in DEV_CASES.read_text(encoding="utf-8").splitlines() if line.strip()]
    return ResponseData([r["prompt"] for r in rows], [r["response"] for r in rows],
                        np.array([r["response_harmful"] for r in rows], dtype=bool), ["dev"] * len(rows), np.ones(len(rows)))


def reweighted(data: RequestData, weight: float) -> RequestData:
    return RequestData(data.texts, data.y, data.sources, data.weights * weight)


def training_data() -> tuple[RequestData, ResponseData]:
    """Package data and the contrast corpus' train part, each request text once; nothing that the contrast
    corpus' validation or test part holds (a text written twice may sit in two groups of different splits)."""
    request, response = package_data()
    contrast = load_contrast("train")
    request = request.join(reweighted(contrast.request, CONTRAST_WEIGHT))
    response = response.join(contrast.response)
    response.weights[-len(contrast.response.y):] *= CONTRAST_WEIGHT
    unseen = set()
    for split in ("validation", "test"):
        part = load_contrast(split)
        unseen |= set(part.request.texts) | set(part.response.prompts) | set(part.response.responses)
    unseen |= {c.prompt for c in load_hard_cases()} | {c.response for c in load_hard_cases() if c.response}
    seen: set[str] = set()
    keep = []
    for text in request.texts:
        keep.append(text not in seen and text not in unseen)
        seen.add(text)
    pairs = np.array([p not in unseen and r not in unseen for p, r in zip(response.prompts, response.responses,
                                                                          strict=True)], dtype=bool)
    return request.subset(np.array(keep, dtype=bool)), response.subset(pairs)


def train_model(request: RequestData | None, response: ResponseData | None, config: TuneConfig, out: Path,
                start: TunedLiteModel | None = None,
                keep_stages: bool = False) -> tuple[TunedLiteModel, dict[str, dict[str, Any]]]:
    """Both stages fine-tuned (from `start` where given), then the operating points chosen on validation data
    only: the contrast corpus' validation part and the development pairs, scored by the model as served (the
    draft is written to `out` for that). A stage whose data is None is not trained: `start`'s stage is kept
    (`keep_stages`: neither is trained, the stages already in `out` are kept). The model comes back with its
    points, and the points."""
    if keep_stages:
        start, request, response = TunedLiteModel.load(out), None, None
    if request is None:
        request_stage = _kept(start, "request")
    else:
        request_stage = tune_stage(request.texts, request.y, request.weights, REQUEST_MAX_LENGTH, config,
                                   "request stage", start.request if start else None)
    if response is None:
        response_stage = _kept(start, "response")
    else:
        pairs = list(zip(response.prompts, response.responses, strict=True))
        response_stage = tune_stage(pairs, response.y, response.weights, PAIR_MAX_LENGTH, config, "response stage",
                                    start.response if start else None)
    TunedLiteModel(request_stage, response_stage, {"request": 0.5, "response": 0.5}).save(out)
    points = choose_points(guard_scores(out, load_contrast("validation"), load_dev_pairs()))
    balanced = points["balanced"]
    thresholds = {"request": balanced["request"], "response": balanced["response"]}
    return TunedLiteModel(request_stage, response_stage, thresholds, points), points


def _kept(start: TunedLiteModel | None, stage: str) -> StageWeights:
    if start is None:
        raise ValueError(f"the {stage} stage is not trained, and there is no model to keep it from")
    return start.request if stage == "request" else start.response


def build_lite_model(out: Path, report_dir: Path, config: TuneConfig | None = None,
                     keep_stages: bool = False) -> TunedLiteModel:
    """The shipped model, trained and measured; `keep_stages`: the stages in `out` kept, only the operating
    points chosen and the figures measured again (minutes instead of a quarter of an hour)."""
    config = config or TuneConfig(seed=SEED)
    request, response = training_data()
    model, points = train_model(request, response, config, out, keep_stages=keep_stages)
    test = load_contrast("test")
    after_scores = guard_scores(out, test, None)  # the draft holds the same weights; scores need no thresholds
    after = evaluate_points(after_scores, points)
    before_scores = guard_scores(BEFORE, test, None)
    p5 = LiteModel.load(BEFORE)
    before = evaluate_points(before_scores, None, own=(p5.request.threshold, (p5.response or p5.request).threshold))
    evaluation = {"after": after, "before": before}
    metadata = {
        "trained_by": "trainer/lite_build.py (make train-lite)",
        "licences": {**LICENCES, "contrast": "CC0-1.0 (written by the project, trainer/data/contrast/)"},
        "examples": {"request": dict(sorted(Counter(s.split("/")[0] for s in request.sources).items())),
                     "response": dict(sorted(Counter(s.split("/")[0] for s in response.sources).items()))},
        "tuning": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()},
        "evaluation": evaluation,
    }
    model = replace(model, metadata=metadata)
    model.save(out)
    write_report(evaluation, points, report_dir, before_scores=before_scores, after_scores=after_scores)
    return model


__all__ = ["BASE_MODEL", "build_lite_model", "load_dev_pairs", "package_data", "train_model", "training_data"]
