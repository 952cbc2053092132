"""The lite guard's labelled examples and the small measures its build takes of them.

- `RequestData`: request texts with labels, sources and weights; `ResponseData`: (prompt, response) pairs
  with the same.
- `HardCase`, `load_hard_cases`: the hand-written hard cases (`trainer/data/hard_cases.jsonl`), never
  trained on.
- `prf`, `cascade_band`: precision/recall/F1, and the widest band whose settled decisions keep a precision.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import precision_recall_fscore_support

HARD_CASES = Path(__file__).resolve().parent / "data" / "hard_cases.jsonl"
PRECISION = 0.95


@dataclass
class RequestData:
    texts: list[str]
    y: np.ndarray
    sources: list[str]
    weights: np.ndarray

    def subset(self, keep: np.ndarray) -> RequestData:
        return RequestData([t for t, k in zip(self.texts, keep, strict=True) if k], self.y[keep],
                           [s for s, k in zip(self.sources, keep, strict=True) if k], self.weights[keep])

    def join(self, other: RequestData) -> RequestData:
        return RequestData(self.texts + other.texts, np.concatenate([self.y, other.y]), self.sources + other.sources,
                           np.concatenate([self.weights, other.weights]))


@dataclass
class ResponseData:
    prompts: list[str]
    responses: list[str]
    y: np.ndarray
    sources: list[str]
    weights: np.ndarray

    def subset(self, keep: np.ndarray) -> ResponseData:
        return ResponseData([t for t, k in zip(self.prompts, keep, strict=True) if k],
                            [t for t, k in zip(self.responses, keep, strict=True) if k], self.y[keep],
                            [s for s, k in zip(self.sources, keep, strict=True) if k], self.weights[keep])

    def join(self, other: ResponseData) -> ResponseData:
        return ResponseData(self.prompts + other.prompts, self.responses + other.responses,
                            np.concatenate([self.y, other.y]), self.sources + other.sources,
                            np.concatenate([self.weights, other.weights]))


def rows_mask(n: int, rows: np.ndarray | list[int]) -> np.ndarray:
    keep = np.zeros(n, dtype=bool)
    keep[rows] = True
    return keep


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


def prf(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="binary", zero_division=0)
    return {"precision": round(float(p), 4), "recall": round(float(r), 4), "f1": round(float(f), 4)}


def cascade_band(scores: np.ndarray, y: np.ndarray, precision: float = PRECISION) -> dict[str, float]:
    """The lowest `high` whose harmful calls keep `precision`, the highest `low` whose unharmful calls do."""
    grid = np.round(np.linspace(0.01, 0.99, 99), 2)
    high = next((float(t) for t in grid if (scores >= t).any() and y[scores >= t].mean() >= precision), 1.0)
    low = next((float(t) for t in grid[::-1] if (scores < t).any() and 1 - y[scores < t].mean() >= precision), 0.0)
    low = min(low, high)
    settled = (scores < low) | (scores >= high)
    return {"low": low, "high": high, "settled_share": round(float(settled.mean()), 4),
            "harmful_settled": int((scores >= high).sum()), "unharmful_settled": int((scores < low).sum())}
