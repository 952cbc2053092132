"""The pieces of the lite head's training that do not need the data packages."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.lite_data import Example, MissingDataPackage, package_dir
from trainer.lite_head import best_threshold, fit_head, prf, split_examples
from workers.guard.lite import TextHead


def test_a_missing_data_package_says_how_to_install_it() -> None:
    with pytest.raises(MissingDataPackage, match="make train-lite"):
        package_dir("no_such_package_for_guardstream")


def test_the_split_is_stratified_and_reproducible() -> None:
    examples = [Example(f"t{i}", i % 4 == 0, "s") for i in range(200)]
    a, b = split_examples(examples), split_examples(examples)
    assert a == b and len(a.held_out) == 40
    assert sum(e.harmful for e in a.held_out) == 10


def test_a_head_fitted_on_separable_data_scores_it_perfectly() -> None:
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(1, 0.2, (50, 8)), rng.normal(-1, 0.2, (50, 8))]).astype(np.float32)
    y = np.array([True] * 50 + [False] * 50)
    weights, bias = fit_head(x, y)
    scores = TextHead(weights, bias, 0.5).scores(x)
    assert prf(y, scores >= best_threshold(y, scores)) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}


def test_the_cascade_report_counts_settled_items_and_scores_only_those() -> None:
    from trainer.cascade_report import cascade_rows

    scores = np.array([0.01, 0.5, 0.99, 0.95, 0.04])
    labels = np.array([False, True, True, False, True])
    rows = {(r["low"], r["high"]): r for r in cascade_rows(scores, labels, 0.5)}
    band = rows[(0.05, 0.95)]  # settles 0.01, 0.99, 0.95, 0.04: one false positive, one false negative
    assert band["settled_share"] == 0.8
    assert (band["precision"], band["recall"]) == (0.5, 0.5)
    assert rows[(0.5, 0.5)]["settled_share"] == 1.0
