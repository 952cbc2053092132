"""The lite guard's two models, and the artefact that holds them.

- The **request head** is a logistic regression over the request text's all-MiniLM-L6-v2 embedding.
- The **lexical head** is a logistic regression over the response's tf-idf (words and word pairs): it
  learns the wording that separates enabling answers from warnings, refusals and counter-speech, which a
  mean-pooled sentence embedding blurs.
- The **response head** judges a (prompt, response) pair, not the response alone, from seven signals:
  the request head's score of the prompt and of the response, the refusal detector, the profanity
  model's score, the cosine of the two embeddings (is the answer about what was asked), the prompt's
  score where no refusal was detected (a response that goes along with a harmful request is harmful even
  in mild words), and the lexical head's score. Few inputs: it generalised better, on data it never saw,
  than the same model with the embeddings themselves as inputs.

Both heads, their thresholds and where their training data came from live in one JSON artefact
(`format: 2`). An artefact of the first format (one head, used for requests and responses alike)
still loads: its responses are scored as before.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_ARTEFACT = "lite_text_head.json"
FORMAT = 2
EMBEDDING_DIM = 384
SIGNALS = ("prompt_request_score", "response_request_score", "refusal", "profanity", "cosine", "complies_with_request",
           "lexical_score")
SIGNAL_SCALE = 4.0  # signals in [0, 1] scaled so the L2 penalty lets the head use their full range
NGRAMS = (1, 2)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@dataclass(frozen=True)
class TextHead:
    """Logistic regression over L2-normalised sentence embeddings."""

    weights: np.ndarray
    bias: float
    threshold: float

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        return sigmoid(embeddings @ self.weights + self.bias)

    def to_dict(self) -> dict[str, Any]:
        return {"weights": [round(float(w), 7) for w in self.weights], "bias": round(self.bias, 7),
                "threshold": self.threshold}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextHead:
        return cls(np.asarray(data["weights"], dtype=np.float32), float(data["bias"]), float(data["threshold"]))


@dataclass(frozen=True)
class LexicalHead:
    """Logistic regression over tf-idf of words and word pairs (sublinear tf, l2 rows), as scikit-learn's
    TfidfVectorizer computes it; the vocabulary and idf are stored, so serving needs no fitted object."""

    terms: tuple[str, ...]
    idf: np.ndarray
    weights: np.ndarray
    bias: float

    def matrix(self, texts: list[str]) -> Any:
        from sklearn.feature_extraction.text import CountVectorizer
        from sklearn.preprocessing import normalize

        counts = CountVectorizer(vocabulary={t: i for i, t in enumerate(self.terms)}, ngram_range=NGRAMS)
        x = counts.transform(texts).astype(np.float64)
        x.data = 1.0 + np.log(x.data)
        return normalize(x.multiply(self.idf).tocsr())

    def scores(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0, dtype=np.float32)
        return sigmoid(np.asarray(self.matrix(texts) @ self.weights).ravel() + self.bias).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"terms": list(self.terms), "idf": [round(float(v), 6) for v in self.idf],
                "weights": [round(float(w), 6) for w in self.weights], "bias": round(self.bias, 7),
                "ngrams": list(NGRAMS)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LexicalHead:
        return cls(tuple(data["terms"]), np.asarray(data["idf"], dtype=np.float64),
                   np.asarray(data["weights"], dtype=np.float64), float(data["bias"]))


@dataclass(frozen=True)
class PairSignals:
    """What the response head knows of each pair besides the two embeddings (one row per pair)."""

    refusal: np.ndarray  # 1.0 where the detector found a refusal
    profanity: np.ndarray  # the profanity model's probability
    has_prompt: np.ndarray  # 0.0 where the request had no text (an image-only request)
    lexical: np.ndarray  # the lexical head's score of the response


def pair_features(prompts: np.ndarray, responses: np.ndarray, prompt_scores: np.ndarray,
                  response_scores: np.ndarray, signals: PairSignals) -> np.ndarray:
    """One row per pair; `*_scores` are the request head's scores of the prompt and of the response."""
    prompt_scores = prompt_scores * signals.has_prompt
    scalars = np.column_stack([
        prompt_scores,
        response_scores,
        signals.refusal,
        signals.profanity,
        np.sum(prompts * responses, axis=1),
        prompt_scores * (1.0 - signals.refusal),
        signals.lexical,
    ])
    return (SIGNAL_SCALE * scalars).astype(np.float32)


@dataclass(frozen=True)
class LiteModel:
    request: TextHead
    response: TextHead | None  # None: a first-format artefact, whose request head scores responses too
    lexical: LexicalHead | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """Changes whenever a head does, so a retrained model never reads the old one's cached answers."""
        digest = hashlib.sha256()
        for head in (self.request, self.response):
            if head is not None:
                digest.update(head.weights.astype(np.float32).tobytes())
                digest.update(f"{head.bias:.9g}:{head.threshold:.9g}".encode())
        if self.lexical is not None:
            digest.update("\n".join(self.lexical.terms).encode())
            for values in (self.lexical.idf, self.lexical.weights):
                digest.update(values.astype(np.float32).tobytes())
        return digest.hexdigest()[:16]

    def save(self, path: Path) -> None:
        body: dict[str, Any] = {"format": FORMAT, "request": self.request.to_dict()}
        if self.response is not None:
            body["response"] = {**self.response.to_dict(), "features": list(SIGNALS), "signal_scale": SIGNAL_SCALE}
        if self.lexical is not None:
            body["lexical"] = self.lexical.to_dict()
        path.write_text(json.dumps({**body, **self.metadata}, indent=1) + "\n")

    @classmethod
    def load(cls, path: Path | None = None) -> LiteModel:
        if path is None:
            raw = resources.files("workers.guard.artefacts").joinpath(DEFAULT_ARTEFACT).read_text()
        else:
            raw = path.read_text()
        data = json.loads(raw)
        if data.get("format") != FORMAT:  # the first format: one head at the top level
            head = TextHead(np.asarray(data.pop("weights"), dtype=np.float32), float(data.pop("bias")),
                            float(data.pop("threshold")))
            return cls(head, None, None, data)
        request = TextHead.from_dict(data.pop("request"))
        response = TextHead.from_dict(data.pop("response")) if "response" in data else None
        lexical = LexicalHead.from_dict(data.pop("lexical")) if "lexical" in data else None
        if (response is None) != (lexical is None):
            raise ValueError("a lite artefact has both a response and a lexical head, or neither")
        data.pop("format")
        return cls(request, response, lexical, data)
