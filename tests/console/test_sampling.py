"""The sampling policy: which verdicts enter the review queue, and a random sample that is uniform over events."""

from __future__ import annotations

from console.sampling import Reason, in_random_sample, reasons_for, wants_two_reviews
from console.settings import SamplingSettings
from schemas.events import StageVerdict
from tests.console.conftest import verdict

OFF = SamplingSettings(random_rate=0.0)


def test_each_rule_fires_on_its_own_kind_of_verdict() -> None:
    assert reasons_for(verdict("a", error="backend_failed"), OFF) == [Reason.ERROR]
    assert reasons_for(verdict("b", score=0.60), OFF) == [Reason.NEAR_THRESHOLD]  # request threshold 0.58
    assert reasons_for(verdict("c", score=0.70), OFF) == []
    response = verdict("d", score=0.01, response_harmful=False).model_copy(update={"response_score": 0.12})
    assert reasons_for(response, OFF) == [Reason.NEAR_THRESHOLD]  # response threshold 0.10
    split = [StageVerdict(name="lite", request_harmful=False), StageVerdict(name="reasoner", request_harmful=True)]
    assert reasons_for(verdict("e", score=0.9, stages=split), OFF) == [Reason.DISAGREEMENT, Reason.ESCALATED]
    same = [StageVerdict(name="lite", request_harmful=True, response_harmful=False),
            StageVerdict(name="reasoner", request_harmful=True, response_harmful=True)]
    assert reasons_for(verdict("f", score=0.9, stages=same), OFF) == [Reason.DISAGREEMENT, Reason.ESCALATED]
    agree = [StageVerdict(name="lite", request_harmful=True), StageVerdict(name="reasoner", request_harmful=True)]
    assert reasons_for(verdict("g", score=0.9, stages=agree), OFF) == [Reason.ESCALATED]


def test_rules_turned_off_fire_nothing() -> None:
    off = SamplingSettings(errors=False, near_threshold=0, escalations=False, disagreements=False, random_rate=0)
    split = [StageVerdict(name="lite", request_harmful=False), StageVerdict(name="reasoner", request_harmful=True)]
    for v in (verdict("a", error="x"), verdict("b", score=0.58), verdict("c", stages=split)):
        assert reasons_for(v, off) == []


def test_the_random_sample_is_uniform_and_the_same_for_every_verdict_of_an_event() -> None:
    ids = [f"event-{n}" for n in range(20_000)]
    share = sum(in_random_sample(i, 0.05) for i in ids) / len(ids)
    assert 0.045 < share < 0.055
    always = SamplingSettings(random_rate=1.0)
    assert Reason.RANDOM in reasons_for(verdict("x"), always)
    sampled = next(i for i in ids if in_random_sample(i, 0.05))
    policy = SamplingSettings(random_rate=0.05)
    assert all(Reason.RANDOM in reasons_for(verdict(sampled, model=m), policy) for m in ("1", "2", "3"))
    # the double-review draw is independent of the random-sample draw
    both = sum(in_random_sample(i, 0.5) and wants_two_reviews(i, 0.5) for i in ids) / len(ids)
    assert 0.23 < both < 0.27
