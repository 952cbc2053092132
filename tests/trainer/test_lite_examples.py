"""The small measures of the lite build, on data of known shape."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.lite_data import MissingDataPackage, package_dir
from trainer.lite_examples import cascade_band, prf
from trainer.lite_points import settled


def test_a_missing_data_package_says_how_to_install_it() -> None:
    with pytest.raises(MissingDataPackage, match="make train-lite"):
        package_dir("no_such_package_for_guardstream")


def test_the_cascade_band_keeps_the_precision_it_promises_on_both_sides() -> None:
    rng = np.random.default_rng(1)
    y = rng.random(2000) < 0.4
    scores = np.clip(np.where(y, 0.65, 0.35) + rng.normal(0, 0.2, 2000), 0, 1)
    band = cascade_band(scores, y, precision=0.95)
    harmful, unharmful = scores >= band["high"], scores < band["low"]
    assert y[harmful].mean() >= 0.95 and (~y[unharmful]).mean() >= 0.95
    figures = settled(scores, y, band)
    assert 0 < figures["settled_share"] < 1 and figures["accuracy_on_settled"] >= 0.95  # type: ignore[operator]
    looser = settled(scores, y, {"low": band["low"] + 0.05, "high": band["high"] - 0.05})
    assert looser["settled_share"] > figures["settled_share"]  # type: ignore[operator]
    assert prf(y, scores >= 0.5)["recall"] > 0.5


def test_a_band_that_cannot_reach_the_precision_settles_nothing() -> None:
    y = np.array([True, False] * 50)
    band = cascade_band(np.full(100, 0.5), y)
    assert settled(np.full(100, 0.5), y, band)["settled_share"] == 0.0
