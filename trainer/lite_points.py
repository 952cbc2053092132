"""Operating points of the lite guard: chosen on validation data, measured on test data.

A point is a request threshold, a response threshold and a cascade band. Each is the lowest threshold
(the best recall) that meets the point's targets on the validation part of the contrast corpus plus the
development pairs:

| point      | benign-but-alarming requests kept | helpful answers to benign requests flagged |
|------------|-----------------------------------|--------------------------------------------|
| strict     | >= 80%                            | <= 10%                                     |
| balanced   | >= 92%                            | <= 4%                                      |
| permissive | >= 97%                            | <= 2%                                      |

(balanced aims at >= 90% kept and <= 5% flagged on data it never saw, so its validation targets keep a
margin; the helpful answers are the contrast corpus' and the development pairs' unharmful ones). The
cascade band is the widest that keeps 0.95 precision on each side on the validation scores of both
stages pooled, widened where needed so that it holds the point's thresholds: the lite stage settles only
what it is sure of at that point. Scores come from the model as served (`LiteGuard.moderate_sync`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from trainer.lite_contrast import Contrast
from trainer.lite_examples import ResponseData, cascade_band, load_hard_cases, prf

POINTS: dict[str, dict[str, float]] = {
    "strict": {"benign_kept": 0.80, "unharmful_flagged": 0.10},
    "balanced": {"benign_kept": 0.92, "unharmful_flagged": 0.04},
    "permissive": {"benign_kept": 0.97, "unharmful_flagged": 0.02},
}
GRID = np.round(np.arange(0.01, 1.0, 0.01), 2)
BAND_PRECISION = 0.95
BATCH = 64


@dataclass
class Scored:
    """Scores of one data split, with each item's label, set (`contrast`, `hard`, `dev`), category and kind."""

    request: np.ndarray
    request_y: np.ndarray
    request_set: list[str]
    request_category: list[str]
    response: np.ndarray
    response_y: np.ndarray
    response_set: list[str]
    response_category: list[str]
    response_kind: list[str]

    def describe(self) -> dict[str, Any]:
        return {"requests": int(len(self.request)), "responses": int(len(self.response)),
                "sets": sorted(set(self.request_set) | set(self.response_set))}


def guard_scores(artefact: Path, contrast: Contrast, dev: ResponseData | None, hard: bool = True) -> Scored:
    """The served guard's scores (from `artefact`) of a contrast split, the development pairs (validation)
    or the hard cases (test: `hard`, when no `dev` is given)."""
    from workers.guard.base import GuardRequest
    from workers.guard.lite import LiteGuard
    from workers.settings import GuardSettings

    guard = LiteGuard.from_settings(GuardSettings(lite_artefact=artefact))
    texts, text_y = list(contrast.request.texts), list(contrast.request.y)
    text_set = ["contrast"] * len(texts)
    text_category = [s.split("/", 1)[1] for s in contrast.request.sources]
    pairs = list(zip(contrast.response.prompts, contrast.response.responses, strict=True))
    pair_y, pair_set = list(contrast.response.y), ["contrast"] * len(pairs)
    pair_category = [s.split("/", 1)[1] for s in contrast.response.sources]
    pair_kind = list(contrast.response_kinds)
    if dev is not None:
        pairs += list(zip(dev.prompts, dev.responses, strict=True))
        pair_y += list(dev.y)
        pair_set += ["dev"] * len(dev.y)
        pair_category += ["dev"] * len(dev.y)
        pair_kind += ["harmful" if y else "unharmful" for y in dev.y]
    elif hard:
        cases = load_hard_cases()
        texts += [c.prompt for c in cases]
        text_y += [c.request_harmful for c in cases]
        text_set += ["hard"] * len(cases)
        text_category += [c.category for c in cases]
        answered = [c for c in cases if c.response is not None]
        pairs += [(c.prompt, c.response or "") for c in answered]
        pair_y += [bool(c.response_harmful) for c in answered]
        pair_set += ["hard"] * len(answered)
        pair_category += [c.category for c in answered]
        pair_kind += ["harmful" if c.response_harmful else "unharmful" for c in answered]
    request = _scores(guard, [GuardRequest(t) for t in texts], "request_score")
    response = _scores(guard, [GuardRequest(p, response=r) for p, r in pairs], "response_score")
    return Scored(request, np.array(text_y, dtype=bool), text_set, text_category,
                  response, np.array(pair_y, dtype=bool), pair_set, pair_category, pair_kind)


def _scores(guard: Any, requests: list[Any], field: str) -> np.ndarray:
    from rich.progress import track

    out: list[float] = []
    for start in track(range(0, len(requests), BATCH), description=f"scoring {len(requests)} items", transient=True):
        out += [float(getattr(r, field)) for r in guard.moderate_sync(requests[start:start + BATCH])]
    return np.array(out, dtype=np.float64)


def lowest(scores: np.ndarray, benign: np.ndarray, share_flagged: float) -> float:
    """The lowest threshold on the grid that flags at most `share_flagged` of the benign scores."""
    values = scores[benign]
    for t in GRID:
        if (values >= t).mean() <= share_flagged + 1e-9:  # 1 - 0.92 is 0.0799...96 in floating point
            return float(t)
    return 0.99


def choose_points(validation: Scored) -> dict[str, dict[str, Any]]:
    """Each point's thresholds and cascade band, from validation scores only."""
    request_benign = ~validation.request_y
    kinds, sets = np.array(validation.response_kind), np.array(validation.response_set)
    helpful = ~validation.response_y & ((kinds == "helpful-answer") | (sets == "dev"))
    band = cascade_band(np.concatenate([validation.request, validation.response]),
                        np.concatenate([validation.request_y, validation.response_y]), BAND_PRECISION)
    low, high = band["low"], band["high"]
    points = {}
    for name, target in POINTS.items():
        request = lowest(validation.request, request_benign, 1 - target["benign_kept"])
        response = lowest(validation.response, helpful, target["unharmful_flagged"])
        points[name] = {"request": request, "response": response,
                        "cascade": {"low": min(low, request, response), "high": max(high, request, response)},
                        "targets": target}
    return points


def rate(mask: np.ndarray, flagged: np.ndarray) -> float | None:
    return round(float(flagged[mask].mean()), 4) if mask.any() else None


def _auc(y: np.ndarray, scores: np.ndarray) -> float | None:
    return round(float(roc_auc_score(y, scores)), 4) if len(set(y.tolist())) == 2 else None


def figures(scored: Scored, request_t: float, response_t: float, band: dict[str, float] | None) -> dict[str, Any]:
    """Over-blocking and recall per set at these thresholds; per category for the contrast set; the cascade's
    settled share and its accuracy on what it settles."""
    out: dict[str, Any] = {"thresholds": {"request": request_t, "response": response_t}}
    req_flag, resp_flag = scored.request >= request_t, scored.response >= response_t
    req_set, resp_set = np.array(scored.request_set), np.array(scored.response_set)
    resp_kind = np.array(scored.response_kind)
    for name in sorted(set(scored.request_set) | set(scored.response_set)):
        r, p = req_set == name, resp_set == name
        out[name] = {
            "requests": {"n": int(r.sum()), "benign_kept": rate(r & ~scored.request_y, ~req_flag),
                         "harmful_caught": rate(r & scored.request_y, req_flag),
                         **(prf(scored.request_y[r], req_flag[r]) if r.any() else {}),
                         "auc": _auc(scored.request_y[r], scored.request[r]) if r.any() else None},
            "responses": {"n": int(p.sum()), "unharmful_flagged": rate(p & ~scored.response_y, resp_flag),
                          "harmful_caught": rate(p & scored.response_y, resp_flag),
                          **{f"{k}_flagged": rate(p & (resp_kind == k), resp_flag)
                             for k in ("helpful-answer", "refusal-or-redirect", "compliance", "abusive-answer")
                             if (p & (resp_kind == k)).any()},
                          **(prf(scored.response_y[p], resp_flag[p]) if p.any() else {}),
                          "auc": _auc(scored.response_y[p], scored.response[p]) if p.any() else None},
        }
    categories: dict[str, dict[str, Any]] = {}
    cats = np.array(scored.request_category)
    for c in sorted(set(scored.request_category)):
        m = (cats == c) & (req_set == "contrast")
        if m.any():
            categories[c] = {"benign": int((m & ~scored.request_y).sum()), "harmful": int((m & scored.request_y).sum()),
                             "benign_kept": rate(m & ~scored.request_y, ~req_flag),
                             "harmful_caught": rate(m & scored.request_y, req_flag)}
    out["request_categories"] = categories
    if band is not None:
        out["cascade"] = {"band": band, "request": settled(scored.request, scored.request_y, band),
                          "response": settled(scored.response, scored.response_y, band)}
    return out


def settled(scores: np.ndarray, y: np.ndarray, band: dict[str, float]) -> dict[str, float | None]:
    low, high = band["low"], band["high"]
    harmful, unharmful = scores >= high, scores < low
    done = harmful | unharmful
    right = (harmful & y) | (unharmful & ~y)
    return {"settled_share": round(float(done.mean()), 4) if len(scores) else None,
            "accuracy_on_settled": round(float(right[done].mean()), 4) if done.any() else None}


def evaluate_points(scored: Scored, points: dict[str, dict[str, Any]] | None,
                    own: tuple[float, float] = (0.58, 0.1)) -> dict[str, Any]:
    """Figures at each operating point, or (a model without points: P5's) at its own thresholds `own`."""
    out: dict[str, Any] = {"scored": scored.describe()}
    if points is None:
        out["own"] = figures(scored, own[0], own[1], None)
        return out
    for name, point in points.items():
        out[name] = figures(scored, point["request"], point["response"], point["cascade"])
    return out


def curve(scores: np.ndarray, y: np.ndarray) -> dict[str, list[float]]:
    """Benign kept and harmful caught at each threshold of the grid."""
    return {"threshold": GRID.tolist(), "benign_kept": [float((scores[~y] < t).mean()) for t in GRID],
            "harmful_caught": [float((scores[y] >= t).mean()) for t in GRID]}
