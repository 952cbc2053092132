"""Which verdicts enter the review queue, and why.

Every rule that fires becomes one of the item's reasons. The random rule hashes the event id, so every
verdict of a sampled event is sampled (and none of an unsampled one): its items are a uniform sample of
events, the only ones the quality page estimates precision and recall from. `reported` is not decided
here: a report puts its event in the queue whatever the verdict said.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum

from console.settings import SamplingSettings
from schemas.events import StageVerdict, Verdict, VerdictStatus


class Reason(StrEnum):
    REPORTED = "reported"
    ERROR = "error"
    DISAGREEMENT = "disagreement"
    ESCALATED = "escalated"
    NEAR_THRESHOLD = "near_threshold"
    RANDOM = "random"


PRIORITY = {reason: rank for rank, reason in enumerate(Reason)}  # lower is reviewed first


def unit_hash(text: str, salt: str) -> float:
    """A number in [0, 1) fixed by `text`: the same event always gets the same draw."""
    digest = hashlib.sha256(f"{salt}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def in_random_sample(event_id: str, rate: float) -> bool:
    return unit_hash(event_id, "random-sample") < rate


def wants_two_reviews(event_id: str, rate: float) -> bool:
    return unit_hash(event_id, "double-review") < rate


def reasons_for(verdict: Verdict, policy: SamplingSettings) -> list[Reason]:
    reasons: list[Reason] = []
    if policy.errors and verdict.status is VerdictStatus.ERROR:
        reasons.append(Reason.ERROR)
    stages = verdict.stages
    if policy.disagreements and len(stages) > 1 and _disagree(stages[0], stages[-1]):
        reasons.append(Reason.DISAGREEMENT)
    if policy.escalations and len(stages) > 1:
        reasons.append(Reason.ESCALATED)
    if policy.near_threshold > 0 and _near(verdict, policy):
        reasons.append(Reason.NEAR_THRESHOLD)
    if in_random_sample(verdict.event_id, policy.random_rate):
        reasons.append(Reason.RANDOM)
    return reasons


def _disagree(first: StageVerdict, last: StageVerdict) -> bool:
    if first.request_harmful != last.request_harmful:
        return True
    a, b = first.response_harmful, last.response_harmful
    return a is not None and b is not None and a != b


def _near(verdict: Verdict, policy: SamplingSettings) -> bool:
    pairs = ((verdict.request_score, policy.request_threshold), (verdict.response_score, policy.response_threshold))
    return any(score is not None and abs(score - threshold) <= policy.near_threshold for score, threshold in pairs)
