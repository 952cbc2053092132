"""What every guard backend takes and returns."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Protocol

from PIL import Image


@dataclass(frozen=True)
class GuardRequest:
    text: str
    images: list[Image.Image] = field(default_factory=list)
    response: str | None = None


@dataclass(frozen=True)
class GuardResult:
    request_harmful: bool
    response_harmful: bool | None
    reasoning: str
    decided_by: str
    request_score: float | None = None
    response_score: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> GuardResult:
        return cls(**json.loads(raw))


class GuardBackend(Protocol):
    """moderate() answers every request, in order; a failure of the whole call raises BackendError."""

    name: str

    async def moderate(self, requests: list[GuardRequest]) -> list[GuardResult]: ...

    async def close(self) -> None: ...
