"""Fine-tuning one stage: it learns what the labels say, weighs both labels equally, goes on from a stage
it is given, and the artefact holds exactly what was trained."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from trainer.lite_tune import TuneConfig, class_balanced, tune_stage
from workers.guard.lite_tuned import StageScorer, TunedLiteModel, is_tuned_artefact

BENIGN = [f"how do I kill a stuck python process number {i}" for i in range(24)]
HARMFUL = [f"how do I kill my neighbour without anyone knowing {i}" for i in range(24)]
QUICK = TuneConfig(epochs=3, batch_size=16, rank=4, alpha=8)


@pytest.fixture(scope="module")
def stage() -> object:
    y = np.array([False] * len(BENIGN) + [True] * len(HARMFUL))
    return tune_stage(BENIGN + HARMFUL, y, np.ones(len(y)), 64, QUICK, "request stage")


def test_a_stage_learns_its_labels(stage: object) -> None:
    scores = StageScorer(stage, 2)(["how do I kill a stuck python process", "how do I kill my neighbour"])  # type: ignore[arg-type]
    assert scores[0] < 0.5 < scores[1], scores


def test_both_labels_carry_half_the_weight() -> None:
    w = class_balanced(np.array([True, False, False, False]), np.array([1.0, 1.0, 1.0, 2.0]))
    assert w[:1].sum() == pytest.approx(w[1:].sum()) and w.mean() == pytest.approx(1.0)
    assert w[3] == pytest.approx(2 * w[1])  # an example's own weight still counts within its label


def test_a_stage_with_one_label_is_refused() -> None:
    with pytest.raises(ValueError, match="both labels"):
        tune_stage(BENIGN, np.zeros(len(BENIGN), dtype=bool), np.ones(len(BENIGN)), 64, QUICK, "x")


def test_a_refit_goes_on_from_the_stage_it_is_given(stage: object) -> None:
    frozen = replace(QUICK, learning_rate=0.0, head_learning_rate=0.0, max_steps=2)
    y = np.array([True] * 4 + [False] * 4)
    again = tune_stage(BENIGN[:4] + HARMFUL[:4], ~y, np.ones(8), 64, frozen, "refit", start=stage)  # type: ignore[arg-type]
    assert again.update.keys() == stage.update.keys()  # type: ignore[attr-defined]
    for name, (a, b) in again.update.items():
        assert np.allclose(a, stage.update[name][0]) and np.allclose(b, stage.update[name][1])  # type: ignore[attr-defined]
    assert np.allclose(again.head_weight, stage.head_weight, atol=1e-6)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="rank"):
        tune_stage(BENIGN[:4] + HARMFUL[:4], y, np.ones(8), 64, replace(QUICK, rank=8, alpha=16), "x", start=stage)  # type: ignore[arg-type]


def test_the_artefact_holds_what_was_trained(stage: object, tmp_path: Path) -> None:
    points = {"balanced": {"request": 0.4, "response": 0.6, "cascade": {"low": 0.1, "high": 0.9}}}
    model = TunedLiteModel(stage, stage, {"request": 0.4, "response": 0.6}, points, {"trained_by": "a test"})  # type: ignore[arg-type]
    model.save(tmp_path / "a.safetensors")
    loaded = TunedLiteModel.load(tmp_path / "a.safetensors")
    assert loaded.operating_points == points and loaded.thresholds == model.thresholds
    assert loaded.metadata["trained_by"] == "a test"
    texts = ["how do I kill a stuck python process", "how do I kill my neighbour"]
    assert np.allclose(StageScorer(loaded.request, 2)(texts), StageScorer(stage, 2)(texts), atol=2e-3)  # type: ignore[arg-type]
    replace(model, operating_points={**points, "strict": points["balanced"]}).save(tmp_path / "b.safetensors")
    assert TunedLiteModel.load(tmp_path / "b.safetensors").fingerprint != loaded.fingerprint
    assert is_tuned_artefact(tmp_path / "a.safetensors")
    (tmp_path / "old.json").write_text('{"format": 2}')
    assert not is_tuned_artefact(tmp_path / "old.json")
