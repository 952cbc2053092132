"""What every guard backend takes and returns."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Protocol

from PIL import Image

from workers.errors import GuardstreamError
from workers.settings import OperatingPoint


@dataclass(frozen=True)
class GuardRequest:
    """One item to judge. `operating_point` is its tenant's: a backend with per-point thresholds (the lite
    guard, the cascade's band) judges it at that point; one without judges every point alike."""

    text: str
    images: list[Image.Image] = field(default_factory=list)
    response: str | None = None
    operating_point: OperatingPoint = OperatingPoint.BALANCED


@dataclass(frozen=True)
class Stage:
    """What one stage of a multi-stage guard (a cascade) answered; `name` is that stage's decided_by."""

    name: str
    request_harmful: bool
    response_harmful: bool | None = None
    request_score: float | None = None
    response_score: float | None = None

    @classmethod
    def of(cls, result: GuardResult) -> Stage:
        return cls(result.decided_by, result.request_harmful, result.response_harmful, result.request_score,
                   result.response_score)


@dataclass(frozen=True)
class GuardResult:
    request_harmful: bool
    response_harmful: bool | None
    reasoning: str
    decided_by: str
    request_score: float | None = None
    response_score: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    stages: tuple[Stage, ...] = ()  # each stage's answer, in order, when more than one judged (a cascade)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> GuardResult:
        """Raise ValueError or TypeError for anything but an entry this version wrote."""
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise TypeError(f"a cached result is a JSON object, not {type(data).__name__}")
        stages = data.pop("stages", [])  # an entry written before stages were kept has none
        if not isinstance(stages, list) or not all(isinstance(s, dict) for s in stages):
            raise TypeError("a cached result's stages are a list of JSON objects")
        result = cls(**data, stages=tuple(Stage(**s) for s in stages))
        if not isinstance(result.request_harmful, bool) or not isinstance(result.reasoning, str):
            raise TypeError("a cached result has labels of the wrong type")
        if not all(isinstance(s.name, str) and isinstance(s.request_harmful, bool) for s in result.stages):
            raise TypeError("a cached result has a stage of the wrong type")
        return result


GuardOutcome = GuardResult | GuardstreamError


class GuardBackend(Protocol):
    """moderate() answers every request, in order: a result, or the error of that one item (an output
    that does not parse, say). A failure of the whole call raises (BackendError or any exception).

    A backend that batches on its own (a continuous-batching engine, a server) says how many requests it
    takes at once in `concurrent_requests`: the worker then hands it each request as it arrives, up to
    that many, instead of micro-batches that hold their slot until their longest request ends."""

    name: str

    async def moderate(self, requests: list[GuardRequest]) -> list[GuardOutcome]: ...

    async def close(self) -> None: ...


def concurrent_requests(backend: GuardBackend) -> int | None:
    """The requests `backend` batches by itself at once, or None for a backend fed micro-batches."""
    value = getattr(backend, "concurrent_requests", None)
    return value if isinstance(value, int) and value > 0 else None
