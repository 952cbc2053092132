"""The `cascade` guard: the lite guard answers what it is sure of, the reasoning backend the rest.

An item is settled by the lite stage only if every score it has (request text, each image, response)
is below `cascade_low` (sure it is unharmful) or every relevant one is decisive: the request at or above
`cascade_high` and the response, if any, outside the uncertain band. Everything else is escalated.
The verdict's `decided_by` says which stage decided; an escalated item's `stages` keeps what each stage
answered (the lite stage, then the reasoner), so that disagreements between them can be audited.
"""

from __future__ import annotations

from dataclasses import replace

from workers.guard.base import GuardBackend, GuardOutcome, GuardRequest, GuardResult, Stage
from workers.guard.lite import LiteGuard
from workers.settings import GuardSettings


def is_settled(result: GuardResult, low: float, high: float) -> bool:
    def decisive(score: float | None) -> bool:
        return score is None or score < low or score >= high

    return decisive(result.request_score) and decisive(result.response_score)


class CascadeGuard:
    name = "cascade"

    def __init__(self, lite: LiteGuard, reasoner: GuardBackend, low: float, high: float,
                 owns_lite: bool = False) -> None:
        self.lite = lite
        self.reasoner = reasoner
        self.low = low
        self.high = high
        self.owns_lite = owns_lite  # a lite guard it made itself it closes (its thread); one it was given, not

    @classmethod
    def from_settings(cls, settings: GuardSettings) -> CascadeGuard:
        from workers.guard.registry import load_backend

        reasoner = load_backend(settings.model_copy(update={"backend": settings.cascade_backend}))
        return cls(LiteGuard.from_settings(settings), reasoner, settings.cascade_low, settings.cascade_high,
                   owns_lite=True)

    async def moderate(self, requests: list[GuardRequest]) -> list[GuardOutcome]:
        first = await self.lite.moderate(requests)
        outcomes: list[GuardOutcome] = list(first)
        escalate = [i for i, o in enumerate(first)
                    if not (isinstance(o, GuardResult) and is_settled(o, self.low, self.high))]
        if escalate:
            second = await self.reasoner.moderate([requests[i] for i in escalate])
            for i, outcome in zip(escalate, second, strict=True):
                outcomes[i] = self._with_lite_evidence(outcome, first[i])
        return outcomes

    async def close(self) -> None:
        await self.reasoner.close()
        if self.owns_lite:
            await self.lite.close()

    @staticmethod
    def _with_lite_evidence(outcome: GuardOutcome, lite: GuardOutcome) -> GuardOutcome:
        if not isinstance(outcome, GuardResult) or not isinstance(lite, GuardResult):
            return outcome
        note = f"[lite stage unsure: request score {lite.request_score}, response score {lite.response_score}]"
        return replace(outcome, reasoning=f"{outcome.reasoning}\n{note}", stages=(Stage.of(lite), Stage.of(outcome)))
