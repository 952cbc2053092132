"""The cascade with the real lite guard in front of the tiny reasoning model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from schemas.events import ChatEvent, ModelRef, StageVerdict, Verdict
from tests.factories import BENIGN, HARMFUL
from tests.tiny_qwen import LESSONS
from workers.emit import ok_verdict
from workers.errors import OutputUnparseable
from workers.guard.base import GuardRequest, GuardResult, Stage
from workers.guard.cascade import CascadeGuard, is_settled
from workers.guard.hf_transformers import TransformersGuard
from workers.guard.lite import LiteGuard


def test_only_decisive_scores_settle() -> None:
    def result(request: float, response: float | None = None) -> GuardResult:
        return GuardResult(request >= 0.5, None if response is None else response >= 0.5, "", "lite", request, response)

    assert is_settled(result(0.05), 0.1, 0.9) and is_settled(result(0.95), 0.1, 0.9)
    assert not is_settled(result(0.5), 0.1, 0.9)
    assert is_settled(result(0.95, 0.02), 0.1, 0.9)
    assert not is_settled(result(0.95, 0.3), 0.1, 0.9)


async def test_sure_items_stay_with_lite_and_the_rest_go_to_the_reasoner(lite_guard: LiteGuard, tiny_qwen: Path) -> None:
    requests = [GuardRequest(t) for t in HARMFUL + BENIGN] + [lesson.request for lesson in LESSONS]
    cascade = CascadeGuard(lite_guard, TransformersGuard.load(tiny_qwen, max_new_tokens=80), low=0.1, high=0.9)
    lite_results = await lite_guard.moderate(requests)
    outcomes = await cascade.moderate(requests)
    settled = [is_settled(r, 0.1, 0.9) for r in lite_results]  # type: ignore[arg-type]
    assert any(settled) and not all(settled)
    for was_settled, lite, outcome in zip(settled, lite_results, outcomes, strict=True):
        if was_settled:
            assert outcome == lite
        elif isinstance(outcome, GuardResult):  # untaught prompts may also come back unparseable: passed through
            assert outcome.decided_by == "transformers" and "lite stage unsure" in outcome.reasoning
        else:
            assert isinstance(outcome, OutputUnparseable)
    lessons = outcomes[len(HARMFUL + BENIGN):]
    assert not all(settled[len(HARMFUL + BENIGN):]), "no lesson was escalated: the reasoner was not exercised"
    for lesson, outcome, was_settled in zip(LESSONS, lessons, settled[len(HARMFUL + BENIGN):], strict=True):
        if not was_settled:  # the reasoner was taught these lessons: its answers are known
            assert isinstance(outcome, GuardResult) and outcome.request_harmful == lesson.harmful


async def test_the_registry_builds_the_cascade_from_settings_and_close_frees_both_stages(tiny_qwen: Path) -> None:
    from workers.guard.registry import load_backend
    from workers.settings import GuardSettings

    cascade = load_backend(GuardSettings(backend="cascade", cascade_backend="transformers", model_path=tiny_qwen,
                                         cascade_low=0.05, cascade_high=0.95))
    assert isinstance(cascade, CascadeGuard) and isinstance(cascade.reasoner, TransformersGuard)
    assert isinstance(cascade.lite, LiteGuard) and (cascade.low, cascade.high) == (0.05, 0.95)
    await cascade.close()
    for stage in (cascade.lite, cascade.reasoner):  # each stage's own thread is shut down (no leak per switch)
        with pytest.raises(RuntimeError, match="shutdown"):
            stage.executor.submit(int)


async def test_an_escalated_verdict_records_each_stage_and_a_settled_one_none(
    lite_guard: LiteGuard, tiny_qwen: Path
) -> None:
    requests = [GuardRequest(t) for t in HARMFUL + BENIGN] + [lesson.request for lesson in LESSONS]
    cascade = CascadeGuard(lite_guard, TransformersGuard.load(tiny_qwen, max_new_tokens=80), low=0.1, high=0.9)
    lite_results = await lite_guard.moderate(requests)
    outcomes = await cascade.moderate(requests)
    escalated = 0
    for i, (lite, outcome) in enumerate(zip(lite_results, outcomes, strict=True)):
        assert isinstance(lite, GuardResult)
        if is_settled(lite, 0.1, 0.9):
            assert isinstance(outcome, GuardResult) and outcome.stages == ()
            continue
        if not isinstance(outcome, GuardResult):  # an unparseable reasoner output has no stages to keep
            continue
        escalated += 1
        lite_stage, reasoner_stage = outcome.stages
        assert lite_stage == Stage("lite", lite.request_harmful, lite.response_harmful, lite.request_score,
                                   lite.response_score)
        assert reasoner_stage == Stage("transformers", outcome.request_harmful, outcome.response_harmful,
                                       outcome.request_score, outcome.response_score)
        assert "lite stage unsure" in outcome.reasoning  # the note stays for readers of the text
        if i >= len(HARMFUL + BENIGN):  # a taught lesson: the reasoner's label is known
            assert reasoner_stage.request_harmful == LESSONS[i - len(HARMFUL + BENIGN)].harmful
        event = ChatEvent(event_id=f"e{i}", conversation_id="c", text=requests[i].text or "x")
        verdict = ok_verdict(event, outcome, ModelRef(name="cascade", version="1"), "p1", "k", False, {})
        assert verdict.stages == [StageVerdict(name="lite", request_harmful=lite.request_harmful,
                                               response_harmful=lite.response_harmful,
                                               request_score=lite.request_score,
                                               response_score=lite.response_score),
                                  StageVerdict(name="transformers", request_harmful=outcome.request_harmful,
                                               response_harmful=outcome.response_harmful,
                                               request_score=outcome.request_score,
                                               response_score=outcome.response_score)]
        assert Verdict.model_validate_json(verdict.model_dump_json()) == verdict
    assert escalated, "no escalated item came back parsed: the stages were not exercised"


def test_a_result_with_stages_survives_the_cache_round_trip() -> None:
    result = GuardResult(True, None, "because", "transformers", stages=(
        Stage("lite", False, None, 0.42, None), Stage("transformers", True, None, None, None)))
    back = GuardResult.from_json(result.to_json())
    assert back == result and all(isinstance(stage, Stage) for stage in back.stages)


def test_a_cached_result_written_before_stages_still_loads() -> None:
    old = json.dumps({"request_harmful": True, "response_harmful": False, "reasoning": "because",
                      "decided_by": "lite", "request_score": 0.9, "response_score": 0.1, "prompt_tokens": None,
                      "completion_tokens": None})
    assert GuardResult.from_json(old) == GuardResult(True, False, "because", "lite", 0.9, 0.1)
    assert GuardResult.from_json(old).stages == ()


@pytest.mark.parametrize("stages", [
    "lite", [["lite", True]], [{"name": "lite"}], [{"name": "lite", "request_harmful": True, "colour": 1}],
    [{"name": 3, "request_harmful": True}], [{"name": "lite", "request_harmful": "yes"}],
])
def test_malformed_stages_in_a_cached_result_are_refused(stages: object) -> None:
    raw = json.dumps({"request_harmful": True, "response_harmful": None, "reasoning": "", "decided_by": "x",
                      "stages": stages})
    with pytest.raises((TypeError, ValueError)):
        GuardResult.from_json(raw)
