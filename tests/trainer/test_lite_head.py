"""The pieces of the lite model's training and evaluation, on small data of known shape."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer

from trainer.lite_data import MissingDataPackage, package_dir
from trainer.lite_eval import OutOfSource, cascade_band, combined_band, settled_share
from trainer.lite_head import ResponseData, best_threshold, fit_head, fit_lexical, prf
from workers.guard.lite_model import NGRAMS

HARMFUL = ["Sure, first buy the skimmer and fit it at night.", "Here is how: wear gloves and avoid the cameras.",
           "Step one, mix the chemicals in the garage.", "You can take the car; use a slim jim on the door."]
SAFE = ["That is illegal and dangerous; please talk to someone.", "Please don't. A counsellor can help you tonight.",
        "Doing that is a crime with serious consequences.", "It is not advisable, and the police take it seriously."]


def pairs(responses: list[str], harmful: bool, source: str = "s") -> ResponseData:
    return ResponseData(["q"] * len(responses), responses, np.array([harmful] * len(responses)), [source] * len(responses),
                        np.ones(len(responses)))


def test_a_missing_data_package_says_how_to_install_it() -> None:
    with pytest.raises(MissingDataPackage, match="make train-lite"):
        package_dir("no_such_package_for_guardstream")


def test_a_head_fitted_on_separable_data_scores_it_perfectly() -> None:
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(1, 0.2, (50, 8)), rng.normal(-1, 0.2, (50, 8))]).astype(np.float32)
    y = np.array([True] * 50 + [False] * 50)
    scores = fit_head(x, y).scores(x)
    assert prf(y, scores >= best_threshold(y, scores)) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}


def test_the_served_lexical_head_computes_what_scikit_learn_trained() -> None:
    data = pairs(HARMFUL * 3, True).join(pairs(SAFE * 3, False))
    head = fit_lexical(data)
    reference = TfidfVectorizer(ngram_range=NGRAMS, sublinear_tf=True, min_df=2, max_features=5000)
    reference.fit(data.responses)
    texts = ["wear gloves at night, it is illegal", "nothing in the vocabulary here", ""]
    expected = reference.transform(texts).toarray()
    assert np.allclose(head.matrix(texts).toarray(), expected, atol=1e-9)
    scores = head.scores(HARMFUL + SAFE)
    assert (scores[:4] > 0.5).all() and (scores[4:] < 0.5).all()


def test_out_of_source_rows_give_f1_only_where_a_source_has_both_labels() -> None:
    scores = np.array([0.9, 0.1, 0.8, 0.7, 0.2])
    y = np.array([True, False, True, False, False])
    rows = {r["source"]: r for r in OutOfSource(scores, y, ["a", "a", "b", "b", "c"]).rows(0.5)}
    assert rows["a"]["accuracy"] == 1.0 and rows["a"]["f1"] == 1.0
    assert rows["b"]["accuracy"] == 0.5 and "f1" in rows["b"]
    assert rows["c"] == {"source": "c", "n": 1, "harmful": 0.0, "accuracy": 1.0}


def test_the_cascade_band_keeps_the_precision_it_promises_on_both_sides() -> None:
    rng = np.random.default_rng(1)
    y = rng.random(2000) < 0.4
    scores = np.clip(np.where(y, 0.65, 0.35) + rng.normal(0, 0.2, 2000), 0, 1)
    band = cascade_band(scores, y, precision=0.95)
    figures = settled_share(scores, y, band["low"], band["high"])
    assert figures["harmful_precision"] >= 0.95 and figures["unharmful_precision"] >= 0.95
    assert 0 < figures["settled_share"] < 1
    looser = settled_share(scores, y, band["low"] + 0.05, band["high"] - 0.05)
    assert looser["settled_share"] > figures["settled_share"]
    assert combined_band({"low": 0.1, "high": 0.8}, {"low": 0.05, "high": 0.9}) == (0.05, 0.9)


def test_a_band_that_cannot_reach_the_precision_settles_nothing() -> None:
    y = np.array([True, False] * 50)
    band = cascade_band(np.full(100, 0.5), y)
    assert settled_share(np.full(100, 0.5), y, band["low"], band["high"])["settled_share"] == 0.0
