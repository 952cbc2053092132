"""The quality page's estimators, against numbers worked out by hand."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest
from matplotlib.image import imread

from console.quality import (
    EMPTY_MESSAGE,
    Agreement,
    Estimate,
    Interval,
    Judged,
    agreement,
    bootstrap_f1,
    bucket_start,
    by_model,
    by_task_and_modality,
    counts,
    estimate,
    over_time,
    plot_quality,
    wilson,
)

DAY_ONE = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


def judged(predicted: bool, truth: bool, *, task: str = "request", modality: str = "text", model: str = "guard:1",
           at: datetime = DAY_ONE) -> Judged:
    return Judged(task=task, modality=modality, model=model,  # type: ignore[arg-type]
                  judged_at=at, predicted=predicted, truth=truth)


def table(tp: int, fp: int, fn: int, tn: int, **fields: object) -> list[Judged]:
    """Rows with the given confusion counts."""
    return ([judged(True, True, **fields) for _ in range(tp)] + [judged(True, False, **fields) for _ in range(fp)]
            + [judged(False, True, **fields) for _ in range(fn)] + [judged(False, False, **fields) for _ in range(tn)])


# ---- point estimates


def test_counts_and_point_estimates_by_hand() -> None:
    rows = [judged(True, True), judged(True, True), judged(True, True),  # 3 tp
            judged(True, False),  # 1 fp
            judged(False, True), judged(False, True),  # 2 fn
            judged(False, False), judged(False, False), judged(False, False), judged(False, False)]  # 4 tn
    found = estimate(rows)
    assert (found.n, found.tp, found.fp, found.fn, found.tn) == (10, 3, 1, 2, 4)
    assert found.precision == pytest.approx(3 / 4)
    assert found.recall == pytest.approx(3 / 5)
    assert found.f1 == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))  # 2/3 = harmonic mean of 0.75 and 0.6
    assert found.f1 == pytest.approx(2 * 0.75 * 0.6 / (0.75 + 0.6))
    assert counts(rows).n == 10


def test_no_predicted_positive_leaves_precision_undefined() -> None:
    found = estimate(table(tp=0, fp=0, fn=3, tn=5))
    assert found.precision is None and found.precision_ci is None
    assert found.recall == 0.0 and found.recall_ci is not None
    assert found.f1 == 0.0  # positives exist but none was found


def test_no_positive_at_all_leaves_everything_undefined() -> None:
    found = estimate(table(tp=0, fp=0, fn=0, tn=6))
    assert (found.precision, found.recall, found.f1) == (None, None, None)
    assert (found.precision_ci, found.recall_ci, found.f1_ci) == (None, None, None)


def test_no_rows() -> None:
    found = estimate([])
    assert found == Estimate(n=0, tp=0, fp=0, fn=0, tn=0, precision=None, recall=None, f1=None,
                             precision_ci=None, recall_ci=None, f1_ci=None)


# ---- Wilson intervals


def test_wilson_matches_the_known_value() -> None:
    interval = wilson(8, 10)
    assert interval is not None
    assert interval.low == pytest.approx(0.4902, abs=5e-4)
    assert interval.high == pytest.approx(0.9433, abs=5e-4)


def test_wilson_at_another_confidence_is_narrower_or_wider() -> None:
    at_95, at_90, at_99 = wilson(8, 10, 0.95), wilson(8, 10, 0.90), wilson(8, 10, 0.99)
    assert at_95 is not None and at_90 is not None and at_99 is not None
    assert at_90.width < at_95.width < at_99.width


def test_wilson_edges() -> None:
    assert wilson(0, 0) is None
    none_of = wilson(0, 10)
    all_of = wilson(10, 10)
    assert none_of is not None and none_of.low == 0.0 and 0 < none_of.high < 0.35
    assert all_of is not None and all_of.high == 1.0 and 0.65 < all_of.low < 1
    with pytest.raises(ValueError):
        wilson(11, 10)
    with pytest.raises(ValueError):
        wilson(1, 10, confidence=1.0)


def test_intervals_contain_the_estimate_and_shrink_as_n_grows() -> None:
    widths: list[tuple[float, float]] = []
    for scale in (1, 4, 16):
        found = estimate(table(tp=6 * scale, fp=2 * scale, fn=3 * scale, tn=9 * scale), resamples=500)
        assert found.precision is not None and found.precision_ci is not None
        assert found.recall is not None and found.recall_ci is not None
        assert found.f1 is not None and found.f1_ci is not None
        assert found.precision_ci.contains(found.precision)
        assert found.recall_ci.contains(found.recall)
        assert found.f1_ci.contains(found.f1)
        widths.append((found.precision_ci.width, found.recall_ci.width))
    assert widths[0][0] > widths[1][0] > widths[2][0]
    assert widths[0][1] > widths[1][1] > widths[2][1]


# ---- the F1 bootstrap


def test_bootstrap_f1_is_deterministic_for_a_seed_and_contains_the_point() -> None:
    rows = table(tp=12, fp=4, fn=5, tn=30)
    first, again, other = estimate(rows, seed=7), estimate(rows, seed=7), estimate(rows, seed=8)
    assert first.f1_ci is not None and first.f1 is not None
    assert first.f1_ci == again.f1_ci
    assert first.f1_ci != other.f1_ci
    assert first.f1_ci.low < first.f1 < first.f1_ci.high
    assert first.f1_ci.low >= 0 and first.f1_ci.high <= 1
    assert first.f1_ci.width < 0.5


def test_bootstrap_f1_narrows_with_more_rows() -> None:
    small = estimate(table(tp=6, fp=2, fn=3, tn=9)).f1_ci
    large = estimate(table(tp=60, fp=20, fn=30, tn=90)).f1_ci
    assert small is not None and large is not None
    assert large.width < small.width


def test_bootstrap_f1_undefined_cases() -> None:
    assert estimate([judged(True, True)]).f1_ci is None  # fewer than 2 rows
    assert estimate(table(tp=0, fp=0, fn=0, tn=5)).f1_ci is None  # F1 undefined
    with pytest.raises(ValueError):
        bootstrap_f1(counts(table(tp=3, fp=1, fn=1, tn=1)), resamples=0)


def test_bootstrap_f1_of_a_perfect_model_is_one() -> None:
    interval = estimate(table(tp=5, fp=0, fn=0, tn=5)).f1_ci
    assert interval == Interval(1.0, 1.0)


# ---- grouping


def test_by_task_and_modality() -> None:
    rows = (table(tp=2, fp=1, fn=0, tn=1, task="response", modality="image")
            + table(tp=1, fp=0, fn=1, tn=2, task="request", modality="text")
            + table(tp=0, fp=0, fn=0, tn=3, task="request", modality="image"))
    found = by_task_and_modality(rows)
    assert list(found) == [("request", "image"), ("request", "text"), ("response", "image")]
    assert (found[("response", "image")].tp, found[("response", "image")].fp) == (2, 1)
    assert found[("response", "image")].precision == pytest.approx(2 / 3)
    assert found[("request", "text")].recall == pytest.approx(1 / 2)
    assert found[("request", "image")].n == 3 and found[("request", "image")].precision is None
    assert ("response", "text") not in found


def test_by_model() -> None:
    rows = table(tp=3, fp=1, fn=0, tn=0, model="guard:2") + table(tp=1, fp=0, fn=1, tn=4, model="guard:1")
    found = by_model(rows)
    assert list(found) == ["guard:1", "guard:2"]
    assert found["guard:1"].n == 6 and found["guard:1"].recall == pytest.approx(0.5)
    assert found["guard:2"].n == 4 and found["guard:2"].precision == pytest.approx(0.75)


# ---- time buckets


def test_over_time_two_days_two_buckets() -> None:
    day_two = datetime(2026, 3, 2, 23, 59, tzinfo=UTC)
    rows = (table(tp=1, fp=1, fn=0, tn=0, at=day_two) + table(tp=2, fp=0, fn=1, tn=1, at=DAY_ONE)
            + [judged(False, False, at=datetime(2026, 3, 1, 0, 0, tzinfo=UTC))])
    found = over_time(rows)
    assert [start for start, _ in found] == [datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC)]
    assert [e.n for _, e in found] == [5, 2]
    assert found[0][1].recall == pytest.approx(2 / 3)
    assert found[1][1].precision == pytest.approx(0.5)


def test_over_time_aligns_buckets_to_the_epoch_in_utc_and_skips_empty_ones() -> None:
    zone = timezone(timedelta(hours=2))
    early = datetime(2026, 3, 1, 1, 30, tzinfo=zone)  # 2026-02-28 23:30 UTC
    later = datetime(2026, 3, 1, 13, 10, tzinfo=UTC)
    found = over_time([judged(True, True, at=early), judged(True, False, at=later)], bucket=timedelta(hours=6))
    assert [start for start, _ in found] == [datetime(2026, 2, 28, 18, tzinfo=UTC),
                                             datetime(2026, 3, 1, 12, tzinfo=UTC)]
    assert all(start.tzinfo is not None and start.utcoffset() == timedelta(0) for start, _ in found)
    assert bucket_start(later, timedelta(hours=6)) == datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert over_time([]) == []
    with pytest.raises(ValueError):
        over_time([judged(True, True)], bucket=timedelta(0))


def test_judged_rejects_a_naive_time_and_unknown_labels() -> None:
    with pytest.raises(ValueError):
        judged(True, True, at=datetime(2026, 3, 1))
    with pytest.raises(ValueError):
        judged(True, True, task="answer")


# ---- reviewer agreement


def test_kappa_perfect_agreement() -> None:
    found = agreement([(True, True), (False, False), (True, True), (False, False)])
    assert found == Agreement(items=4, observed=1.0, kappa=1.0)


def test_kappa_known_table() -> None:
    # 20 items: both harmful 7, both unharmful 7, each way of disagreeing 3 -> observed 0.7; each reviewer calls
    # half harmful -> expected 0.5 * 0.5 + 0.5 * 0.5 = 0.5; kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4.
    pairs = [(True, True)] * 7 + [(False, False)] * 7 + [(True, False)] * 3 + [(False, True)] * 3
    found = agreement(pairs)
    assert found.items == 20
    assert found.observed == pytest.approx(0.7)
    assert found.kappa == pytest.approx(0.4)


def test_kappa_below_chance_is_negative() -> None:
    found = agreement([(True, False), (False, True)])
    assert found.observed == 0.0 and found.kappa == pytest.approx(-1.0)


def test_kappa_undefined() -> None:
    assert agreement([]) == Agreement(items=0, observed=None, kappa=None)
    same_answer = agreement([(False, False)] * 5)  # expected agreement 1
    assert same_answer.observed == 1.0 and same_answer.kappa is None


# ---- the plot


def _image(png: bytes) -> np.ndarray:
    return imread(io.BytesIO(png), format="png")


def test_plot_of_no_rows_is_a_png() -> None:
    png = plot_quality([])
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert _image(png).shape[:2] == (400, 1000)
    assert EMPTY_MESSAGE == "no labelled random-sample verdicts yet"


def test_plot_of_rows_is_a_small_png() -> None:
    rows = (table(tp=5, fp=2, fn=1, tn=10, model="guard:1", at=DAY_ONE)
            + table(tp=7, fp=1, fn=3, tn=12, model="guard:2", at=DAY_ONE + timedelta(days=1))
            + table(tp=0, fp=0, fn=2, tn=3, model="guard:3", at=DAY_ONE + timedelta(days=3)))
    png = plot_quality(rows, resamples=200)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) < 150_000
    image = _image(png)
    assert image.shape[:2] == (400, 1000)
    assert image.std() > 0.05  # something is drawn
    assert png != plot_quality([])


def test_plot_of_a_single_bucket_and_model() -> None:
    png = plot_quality([judged(True, True), judged(False, False)], bucket=timedelta(hours=1))
    assert png.startswith(b"\x89PNG")
