"""The release gate on scored evaluations: errors count against a candidate, and the random-sample part of
the held-out labels is reported and judged on its own; no guard, no network."""

from __future__ import annotations

from schemas.events import ChatEvent, ErrorInfo, ModelRef, Verdict, VerdictStatus
from trainer.evaluate import Evaluation, score
from trainer.gate import Composition, RandomPart, decide
from trainer.labelled import LabelledEvent
from trainer.settings import GateSettings

GATE = GateSettings(min_held_out=20, min_f1_gain=0.01, max_task_regression=0.02, max_error_rate=0.05)


def verdict(event: ChatEvent, answer: bool | None) -> Verdict:
    """An ok verdict saying `answer`, or an error verdict for None."""
    common = {"event_id": event.event_id, "conversation_id": event.conversation_id, "tenant": event.tenant,
              "model": ModelRef(name="m", version="1"), "policy_version": "1"}
    if answer is None:
        return Verdict(status=VerdictStatus.ERROR, error=ErrorInfo(code="output_unparseable", message="no answer"),
                       **common)
    return Verdict(status=VerdictStatus.OK, request_harmful=answer, **common)


def evaluation(total: int, right: int, errors: int = 0, prefix: str = "e") -> Evaluation:
    """`total` request labels, half harmful: the first `errors` answered with an error verdict, the next
    `right` correctly, the rest wrongly."""
    items = [LabelledEvent(ChatEvent(event_id=f"{prefix}{i}", conversation_id="c", text=f"text {i}"), i % 2 == 0)
             for i in range(total)]
    verdicts = [verdict(item.event, None if i < errors else item.request_harmful == (i < errors + right))
                for i, item in enumerate(items)]
    return score(items, verdicts)


def test_a_candidate_that_errors_on_most_items_and_is_right_on_the_rest_is_not_released() -> None:
    candidate, serving = evaluation(100, right=20, errors=80), evaluation(100, right=90)

    decision = decide(candidate, serving, 100, GATE)

    assert not decision.release
    assert serving.f1 == 0.9 and decision.candidate_f1 < decision.serving_f1
    assert decision.candidate_error_rate == 0.8 and decision.serving_error_rate == 0.0
    assert "gate.max_error_rate=0.05" in decision.reason


def test_a_better_candidate_that_errs_more_than_the_ceiling_is_refused_for_its_errors() -> None:
    candidate, serving = evaluation(100, right=94, errors=6), evaluation(100, right=80)
    assert candidate.f1 > serving.f1 + GATE.min_f1_gain

    decision = decide(candidate, serving, 100, GATE)

    assert not decision.release
    assert decision.reason == "the candidate errs on 0.0600 of its decisions, more than gate.max_error_rate=0.05"


def test_a_better_candidate_that_errs_within_the_ceiling_is_released() -> None:
    decision = decide(evaluation(100, right=96, errors=4), evaluation(100, right=80), 100, GATE)
    assert decision.release, decision.reason


def test_the_decision_says_what_the_held_out_set_is_made_of_and_the_figures_on_the_random_part() -> None:
    random_part = RandomPart(candidate=evaluation(20, right=18, prefix="r"), serving=evaluation(20, right=16, prefix="r"))
    composition = Composition.of([True] * 20 + [False] * 70 + [None] * 10)

    decision = decide(evaluation(100, right=95), evaluation(100, right=85), 100, GATE, composition, random_part)

    assert decision.release, decision.reason
    assert decision.composition == {"random": 20, "selected": 70, "unknown": 10}
    assert (decision.random_candidate_f1, decision.random_serving_f1) == (0.9, 0.8)
    assert "F1 on the 20 random-sample labels +0.1000" in decision.reason
    assert decide(evaluation(100, right=95), evaluation(100, right=85), 100, GATE).composition == {
        "random": 0, "selected": 0, "unknown": 100}


def test_a_candidate_better_overall_but_worse_on_the_random_sample_is_refused() -> None:
    # better on the selected (hard) events, which make most of the held-out set; worse on traffic as it comes
    random_part = RandomPart(candidate=evaluation(25, right=20, prefix="r"), serving=evaluation(25, right=24, prefix="r"))
    composition = Composition(random=25, selected=75)

    decision = decide(evaluation(100, right=90), evaluation(100, right=80), 100, GATE, composition, random_part)

    assert not decision.release
    assert decision.reason.startswith("F1 on the random-sample labels drops by")
    assert "gate.max_task_regression=0.02" in decision.reason


def test_a_random_sample_part_smaller_than_the_minimum_is_reported_not_judged() -> None:
    random_part = RandomPart(candidate=evaluation(10, right=5, prefix="r"), serving=evaluation(10, right=10, prefix="r"))

    decision = decide(evaluation(100, right=90), evaluation(100, right=80), 100, GATE,
                      Composition(random=10, selected=90), random_part)

    assert decision.release, decision.reason
    assert decision.random_candidate_f1 is not None and decision.random_candidate_f1 < decision.random_serving_f1  # type: ignore[operator]
    assert "10 random-sample labels, too few (gate.min_held_out=20) to judge on their own" in decision.reason


def with_harmless_responses(total: int, right: int, flagged_responses: int, prefix: str = "p") -> Evaluation:
    """`evaluation`'s request labels, each event with a response labelled harmless; the first
    `flagged_responses` responses are flagged harmful anyway."""
    items = [LabelledEvent(ChatEvent(event_id=f"{prefix}{i}", conversation_id="c", text=f"text {i}", response="ok"),
                           i % 2 == 0, False) for i in range(total)]
    verdicts = [verdict(item.event, item.request_harmful == (i < right)).model_copy(
        update={"response_harmful": i < flagged_responses}) for i, item in enumerate(items)]
    return score(items, verdicts)


def test_a_task_without_a_harmful_label_cannot_be_judged_and_the_candidate_is_not_released() -> None:
    # the candidate is better at requests but flags 5 harmless responses the serving model let through;
    # with no harmful response to find, both response F1s are undefined (n/a), which proves no "no regression"
    candidate = with_harmless_responses(100, right=98, flagged_responses=5)
    serving = with_harmless_responses(100, right=80, flagged_responses=0)
    assert candidate.f1 > serving.f1 + GATE.min_f1_gain

    decision = decide(candidate, serving, 100, GATE)

    assert not decision.release
    assert decision.task_change == {"request": 0.18, "response": None}
    assert decision.reason.startswith("cannot judge the response task:"), decision.reason
    assert "n/a" in decision.reason


def test_held_out_labels_without_any_harmful_one_cannot_be_judged() -> None:
    items = [LabelledEvent(ChatEvent(event_id=f"h{i}", conversation_id="c", text=f"text {i}"), False)
             for i in range(30)]
    quiet = score(items, [verdict(item.event, False) for item in items])
    eager = score(items, [verdict(item.event, i < 5) for i, item in enumerate(items)])

    for candidate, serving in ((quiet, eager), (eager, quiet)):
        decision = decide(candidate, serving, 30, GATE)
        assert not decision.release
        assert decision.reason.startswith("cannot judge: no held-out label is harmful"), decision.reason


def test_a_random_sample_part_without_a_harmful_label_is_reported_as_undefined_not_as_unchanged() -> None:
    harmless = [LabelledEvent(ChatEvent(event_id=f"r{i}", conversation_id="c", text=f"text {i}"), False)
                for i in range(20)]
    random_part = RandomPart(candidate=score(harmless, [verdict(h.event, True) for h in harmless]),
                             serving=score(harmless, [verdict(h.event, False) for h in harmless]))

    decision = decide(evaluation(100, right=95), evaluation(100, right=85), 100, GATE,
                      Composition(random=20, selected=80), random_part)

    assert "20 random-sample labels, none harmful: their F1 is undefined (n/a)" in decision.reason
    assert "+0.0000" not in decision.reason
