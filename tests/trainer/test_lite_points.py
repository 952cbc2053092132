"""Operating points: each is the lowest threshold that meets its targets on the validation scores, the
band holds the point's thresholds, and the contrast corpus splits by group, never by text."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer.lite_contrast import CONTRAST, SPLITS, load_contrast, split_of
from trainer.lite_points import POINTS, Scored, choose_points, figures


def scored(seed: int = 0) -> Scored:
    rng = np.random.default_rng(seed)
    y = np.array([False] * 300 + [True] * 300)
    request = np.clip(np.where(y, rng.normal(0.7, 0.15, 600), rng.normal(0.3, 0.15, 600)), 0, 1)
    response = np.clip(np.where(y, rng.normal(0.75, 0.1, 600), rng.normal(0.2, 0.1, 600)), 0, 1)
    return Scored(request, y, ["contrast"] * 600, ["c"] * 600, response, y, ["contrast"] * 600, ["c"] * 600,
                  ["compliance" if h else "helpful-answer" for h in y])


def test_each_point_is_the_lowest_threshold_meeting_its_targets() -> None:
    validation = scored()
    points = choose_points(validation)
    assert list(points) == list(POINTS)
    for name, point in points.items():
        target = POINTS[name]
        kept = (validation.request[~validation.request_y] < point["request"]).mean()
        flagged = (validation.response[~validation.response_y] >= point["response"]).mean()
        assert kept >= target["benign_kept"] and flagged <= target["unharmful_flagged"]
        lower = round(point["request"] - 0.01, 2)  # one step lower misses the target: the best recall that meets it
        assert (validation.request[~validation.request_y] < lower).mean() < target["benign_kept"]
        band = point["cascade"]
        assert band["low"] <= min(point["request"], point["response"]) and band["high"] >= max(point["request"],
                                                                                              point["response"])
    assert points["strict"]["request"] <= points["balanced"]["request"] <= points["permissive"]["request"]


def test_figures_count_over_blocking_and_recall_per_kind() -> None:
    data = scored(1)
    fig = figures(data, 0.5, 0.5, {"low": 0.2, "high": 0.8})
    requests, responses = fig["contrast"]["requests"], fig["contrast"]["responses"]
    assert requests["benign_kept"] == round(float((data.request[:300] < 0.5).mean()), 4)
    assert responses["helpful-answer_flagged"] == round(float((data.response[:300] >= 0.5).mean()), 4)
    assert responses["compliance_flagged"] == responses["harmful_caught"]
    assert 0 < fig["cascade"]["request"]["settled_share"] < 1


def test_the_corpus_splits_by_group(tmp_path: Path) -> None:
    (tmp_path / "a.yml").write_text(
        "requests:\n" + "".join(f"  - {{id: g{i}, category: c, benign: [b{i}], harmful: [h{i}]}}\n"
                                for i in range(300)) + "responses: []\n")
    parts = {split: load_contrast(split, tmp_path) for split in SPLITS}
    assert sum(len(p.request.texts) for p in parts.values()) == 600
    for split, part in parts.items():
        groups = {t[1:] for t in part.request.texts}
        assert all(f"b{g}" in part.request.texts and f"h{g}" in part.request.texts for g in groups)  # both sides
        assert all(split_of(f"a/req/g{g}") == split for g in groups)
    assert 0.14 < len(parts["test"].request.texts) / 600 < 0.26


def test_the_written_corpus_has_every_slice_and_a_test_part() -> None:
    slices = sorted(p.stem for p in CONTRAST.glob("*.yml"))
    assert len(slices) >= 5
    test = load_contrast("test")
    authors = {s.split("/")[1] for s in test.request.sources}
    assert authors == set(slices)
    assert set(test.response_kinds) >= {"helpful-answer", "refusal-or-redirect", "compliance"}
    train = load_contrast("train")
    assert len(train.request.texts) > 3 * len(test.request.texts)
    # a text its authors wrote twice may sit in groups of two splits: training drops it (test_regression_set.py)
