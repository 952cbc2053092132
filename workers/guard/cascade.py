"""The `cascade` guard: the lite guard answers what it is sure of, the reasoning backend the rest.

An item is settled by the lite stage only if every score it has (request text, each image, response)
is below its band's low end (sure it is unharmful) or every relevant one is decisive: the request at or above
the high end and the response, if any, outside the uncertain band. Everything else is escalated.
The band is the request's operating point's: `cascade_low` / `cascade_high` where set, else the lite
artefact's band for that point, else 0.03 / 0.99.
The verdict's `decided_by` says which stage decided; an escalated item's `stages` keeps what each stage
answered (the lite stage, then the reasoner), so that disagreements between them can be audited.
"""

from __future__ import annotations

from dataclasses import replace

from workers.guard.base import GuardBackend, GuardOutcome, GuardRequest, GuardResult, Stage
from workers.guard.lite import LiteGuard
from workers.settings import GuardSettings, OperatingPoint

# the band without an artefact's: it keeps 0.95 precision on text the lite model never trained on (README: Cascade)
DEFAULT_LOW = 0.03
DEFAULT_HIGH = 0.99

LITE_NOTE = "[lite stage unsure at operating point "  # how the last line of a cascade's reasoning begins


def is_settled(result: GuardResult, low: float, high: float) -> bool:
    def decisive(score: float | None) -> bool:
        return score is None or score < low or score >= high

    return decisive(result.request_score) and decisive(result.response_score)


def cascade_bands(lite: LiteGuard, low: float | None = None,
                  high: float | None = None) -> dict[OperatingPoint, tuple[float, float]]:
    """Each operating point's (low, high): `low` / `high` where given, else the lite artefact's band for the
    point, else the defaults."""
    bands = {}
    for point in OperatingPoint:
        declared = lite.artefact_points.get(point)
        band = declared.cascade if declared is not None else None
        point_low = low if low is not None else (band.low if band is not None else DEFAULT_LOW)
        point_high = high if high is not None else (band.high if band is not None else DEFAULT_HIGH)
        if point_low > point_high:
            raise ValueError(f"the cascade band at {point} has low {point_low} above high {point_high}")
        bands[point] = (point_low, point_high)
    return bands


class CascadeGuard:
    name = "cascade"

    def __init__(self, lite: LiteGuard, reasoner: GuardBackend, low: float | None = None, high: float | None = None,
                 owns_lite: bool = False) -> None:
        """`low` / `high`, where given, hold at every operating point (see `cascade_bands`)."""
        self.lite = lite
        self.reasoner = reasoner
        self.bands = cascade_bands(lite, low, high)
        self.owns_lite = owns_lite  # a lite guard it made itself it closes (its thread); one it was given, not

    @property
    def low(self) -> float:
        """The default (balanced) point's low end."""
        return self.bands[OperatingPoint.BALANCED][0]

    @property
    def high(self) -> float:
        """The default (balanced) point's high end."""
        return self.bands[OperatingPoint.BALANCED][1]

    @classmethod
    def from_settings(cls, settings: GuardSettings) -> CascadeGuard:
        from workers.guard.registry import load_backend

        reasoner = load_backend(settings.model_copy(update={"backend": settings.cascade_backend}))
        return cls(LiteGuard.from_settings(settings), reasoner, settings.cascade_low, settings.cascade_high,
                   owns_lite=True)

    async def moderate(self, requests: list[GuardRequest]) -> list[GuardOutcome]:
        first = await self.lite.moderate(requests)
        outcomes: list[GuardOutcome] = list(first)
        escalate = [i for i, (r, o) in enumerate(zip(requests, first, strict=True))
                    if not (isinstance(o, GuardResult) and is_settled(o, *self.bands[r.operating_point]))]
        if escalate:
            second = await self.reasoner.moderate([requests[i] for i in escalate])
            for i, outcome in zip(escalate, second, strict=True):
                outcomes[i] = self._with_lite_evidence(outcome, first[i], requests[i].operating_point)
        return outcomes

    async def close(self) -> None:
        await self.reasoner.close()
        if self.owns_lite:
            await self.lite.close()

    @staticmethod
    def _with_lite_evidence(outcome: GuardOutcome, lite: GuardOutcome, point: OperatingPoint) -> GuardOutcome:
        if not isinstance(outcome, GuardResult) or not isinstance(lite, GuardResult):
            return outcome
        note = (f"{LITE_NOTE}{point}: request score {lite.request_score}, "
                f"response score {lite.response_score}]")
        return replace(outcome, reasoning=f"{outcome.reasoning}\n{note}", stages=(Stage.of(lite), Stage.of(outcome)))
