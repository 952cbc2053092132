"""The cascade with the real lite guard in front of the tiny reasoning model."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.factories import BENIGN, HARMFUL
from tests.tiny_qwen import LESSONS
from workers.errors import OutputUnparseable
from workers.guard.base import GuardRequest, GuardResult
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
