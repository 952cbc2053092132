"""Evaluation of the lite guard that cannot flatter itself.

- **Leave one source out.** For each source, the heads are trained without it and score it. Most
  sources hold one label, so the per-source figure is accuracy (the share judged right); the pooled
  out-of-source scores give F1 and ROC AUC per task. Thresholds are chosen on these pooled scores,
  never on the hard cases.
- **Hard cases** (`trainer/data/hard_cases.jsonl`): hand-written, never trained on, scored once by the
  finished model.
- **Cascade bands** from the out-of-source scores: the widest band whose settled decisions keep 0.95
  precision on each side, and the share of items it settles.
- **Before**: the first recipe (one head trained on requests from the package sources, reading the
  response alone), evaluated the same way, so the two rows of each table compare like with like.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from trainer.lite_head import (
    REQUEST_C,
    RESPONSE_C,
    Heads,
    RequestData,
    ResponseData,
    Vectors,
    cross_fitted_lexical,
    cross_fitted_scores,
    fit_head,
    fit_lexical,
    prf,
    response_features,
    score_pairs,
)

HARD_CASES = Path(__file__).resolve().parent / "data" / "hard_cases.jsonl"
FIRST_RECIPE_SOURCES = ("donotanswer", "harmbench", "rtp", "normal_instructions", "falseclaims", "chatterbot")
PRECISION = 0.95


def family(source: str) -> str:
    return source.split("/")[0]


@dataclass(frozen=True)
class HardCase:
    id: str
    category: str
    prompt: str
    response: str | None
    request_harmful: bool
    response_harmful: bool | None


def load_hard_cases(path: Path = HARD_CASES) -> list[HardCase]:
    return [HardCase(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass
class OutOfSource:
    """Each item's score from heads that never saw its source; rows in the data's order."""

    scores: np.ndarray
    y: np.ndarray
    sources: list[str]

    def rows(self, threshold: float) -> list[dict[str, object]]:
        out = []
        for name in sorted(set(self.sources)):
            mask = np.array([s == name for s in self.sources])
            y, predicted = self.y[mask], self.scores[mask] >= threshold
            row = {"source": name, "n": int(mask.sum()), "harmful": round(float(y.mean()), 3),
                   "accuracy": round(float(np.mean(predicted == y)), 4)}
            if 0 < y.mean() < 1:  # both labels: F1 and AUC mean something
                row |= {"f1": prf(y, predicted)["f1"], "auc": round(float(roc_auc_score(y, self.scores[mask])), 4)}
            out.append(row)
        return out

    def pooled(self, threshold: float) -> dict[str, float]:
        return {**prf(self.y, self.scores >= threshold), "auc": round(float(roc_auc_score(self.y, self.scores)), 4),
                "threshold": threshold, "n": len(self.y)}


def loso_request(request: RequestData, vectors: Vectors, only: tuple[str, ...] | None = None) -> OutOfSource:
    families = [family(s) for s in request.sources]
    train_on = np.array([only is None or f in only for f in families])
    scores = np.zeros(len(request.y), dtype=np.float32)
    for name in sorted(set(families)):
        held = np.array([f == name for f in families])
        train = request.subset(train_on & ~held)
        head = fit_head(vectors(train.texts), train.y, train.weights, c=REQUEST_C)
        scores[held] = head.scores(vectors(request.subset(held).texts))
    return OutOfSource(scores, request.y, families)


def loso_response(request: RequestData, response: ResponseData, vectors: Vectors) -> OutOfSource:
    """Each source scored by a response head and a lexical head that were trained without it."""
    request_head = fit_head(vectors(request.texts), request.y, request.weights, c=REQUEST_C)
    known = cross_fitted_scores(request, vectors)
    families = [family(s) for s in response.sources]
    scores = np.zeros(len(response.y), dtype=np.float32)
    for name in sorted(set(families)):
        held = np.array([f == name for f in families])
        train, test = response.subset(~held), response.subset(held)
        features = response_features(train, vectors, request_head, cross_fitted_lexical(train), known)
        head = fit_head(features, train.y, train.weights, c=RESPONSE_C)
        lexical = fit_lexical(train).scores(test.responses)
        scores[held] = head.scores(response_features(test, vectors, request_head, lexical, known))
    return OutOfSource(scores, response.y, families)


def loso_first_recipe_response(request: RequestData, response: ResponseData, vectors: Vectors) -> OutOfSource:
    """The first recipe on the pairs: a head trained on package requests scores the response text alone."""
    keep = np.array([family(s) in FIRST_RECIPE_SOURCES for s in request.sources])
    head = fit_head(vectors(request.subset(keep).texts), request.y[keep], request.weights[keep], c=REQUEST_C)
    return OutOfSource(head.scores(vectors(response.responses)), response.y, [family(s) for s in response.sources])


def cascade_band(scores: np.ndarray, y: np.ndarray, precision: float = PRECISION) -> dict[str, float]:
    """The lowest `high` whose harmful calls keep `precision`, the highest `low` whose unharmful calls do."""
    grid = np.round(np.linspace(0.01, 0.99, 99), 2)
    high = next((float(t) for t in grid if (scores >= t).any() and y[scores >= t].mean() >= precision), 1.0)
    low = next((float(t) for t in grid[::-1] if (scores < t).any() and 1 - y[scores < t].mean() >= precision), 0.0)
    low = min(low, high)
    settled = (scores < low) | (scores >= high)
    return {"low": low, "high": high, "settled_share": round(float(settled.mean()), 4),
            "harmful_settled": int((scores >= high).sum()), "unharmful_settled": int((scores < low).sum())}


def combined_band(request: dict[str, float], response: dict[str, float]) -> tuple[float, float]:
    """One band for both scores (the cascade has one): the stricter end of each."""
    return min(request["low"], response["low"]), max(request["high"], response["high"])


def settled_share(scores: np.ndarray, y: np.ndarray, low: float, high: float) -> dict[str, float]:
    settled = (scores < low) | (scores >= high)
    harmful, unharmful = scores >= high, scores < low
    return {"settled_share": round(float(settled.mean()), 4),
            "harmful_precision": round(float(y[harmful].mean()), 4) if harmful.any() else None,
            "unharmful_precision": round(float(1 - y[unharmful].mean()), 4) if unharmful.any() else None}


@dataclass(frozen=True)
class HardCaseScores:
    request: np.ndarray  # one per case
    response: np.ndarray  # one per case with a response


def judge_hard_cases(heads: Heads, cases: list[HardCase], vectors: Vectors) -> HardCaseScores:
    with_response = [c for c in cases if c.response is not None]
    pairs = ResponseData([c.prompt for c in with_response], [c.response or "" for c in with_response],
                         np.array([bool(c.response_harmful) for c in with_response]), ["hard"] * len(with_response),
                         np.ones(len(with_response)))
    return HardCaseScores(heads.request.scores(vectors([c.prompt for c in cases])), score_pairs(heads, pairs, vectors))


def hard_case_figures(heads: Heads, cases: list[HardCase], scores: HardCaseScores) -> dict[str, object]:
    request_threshold, response_threshold = heads.request.threshold, heads.response.threshold
    y_request = np.array([c.request_harmful for c in cases])
    with_response = [c for c in cases if c.response is not None]
    y_response = np.array([bool(c.response_harmful) for c in with_response])
    request_ok = (scores.request >= request_threshold) == y_request
    response_ok = (scores.response >= response_threshold) == y_response
    per_case = {c.id: bool(ok) for c, ok in zip(cases, request_ok, strict=True)}
    for c, ok in zip(with_response, response_ok, strict=True):
        per_case[c.id] = per_case[c.id] and bool(ok)
    categories: dict[str, list[bool]] = {}
    for c in cases:
        categories.setdefault(c.category, []).append(per_case[c.id])
    return {
        "cases": len(cases),
        "request": {**prf(y_request, scores.request >= request_threshold), "accuracy": round(float(request_ok.mean()), 4)},
        "response": {**prf(y_response, scores.response >= response_threshold),
                     "accuracy": round(float(response_ok.mean()), 4), "n": len(with_response)},
        "passed": int(sum(per_case.values())),
        "by_category": {k: f"{sum(v)}/{len(v)}" for k, v in sorted(categories.items())},
        "failed": sorted(k for k, ok in per_case.items() if not ok),
    }
