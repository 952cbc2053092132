"""The quality page's figures: how good the serving model's verdicts are, estimated from reviewers' labels.

Reviewers label a uniform random sample of verdicts, so the sample's confusion counts estimate the serving
model's confusion rates without bias. Each `Judged` row is one verdict scored against the reviewers' label for
one task ("request": was the prompt harmful; "response": was the AI's answer harmful). The positive class is
"harmful".

Point estimates, from the counts of true/false positives and negatives:

- precision = tp / (tp + fp): undefined (None) when the model predicted no positive;
- recall = tp / (tp + fn): undefined when the sample holds no harmful item;
- F1 = 2tp / (2tp + fp + fn), computed from the counts rather than from precision and recall, so it is
  defined whenever the sample holds a predicted or a true positive (it is 0 when there are positives but no
  true positive), and undefined only when there is neither.

Confidence intervals, at a confidence c (default 0.95) with z the standard normal's (1 + c) / 2 quantile:

- precision and recall are binomial proportions (successes tp out of tp + fp, or out of tp + fn) and get the
  Wilson score interval, (p + z²/2m ± z·sqrt(p(1 - p)/m + z²/4m²)) / (1 + z²/m) for m trials, which unlike the
  normal (Wald) interval stays within [0, 1] and keeps near its nominal coverage for small m and p near 0 or 1;
- F1 is not a proportion, so it gets a percentile bootstrap: the rows are resampled with replacement (as many
  as there are), F1 is computed on each resample, resamples where F1 is undefined are dropped, and the
  interval is the (1 - c)/2 and (1 + c)/2 quantiles of the rest. Since a row enters F1 only through its cell
  of the confusion table, drawing n rows with replacement is drawing the four cell counts from a multinomial
  with the observed cell shares, which is how it is done here (cost independent of n). The generator is
  seeded, so the same rows give the same interval.

Reviewer agreement is Cohen's kappa for two raters on the binary harmful label: with observed agreement p_o
(the share of items where the two reviewers agree) and chance agreement p_e = a·b + (1 - a)(1 - b), where a
and b are the shares of items each rater called harmful, kappa = (p_o - p_e) / (1 - p_e); undefined when
p_e = 1 (both raters gave one and the same answer throughout).

`plot_quality` draws the figures as a PNG with matplotlib's Agg canvas directly (no pyplot, no global backend
switch), so it is safe to call from a server.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from statistics import NormalDist
from typing import Literal, TypeVar

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure

Task = Literal["request", "response"]
Modality = Literal["text", "image"]

TASKS: tuple[str, ...] = ("request", "response")
MODALITIES: tuple[str, ...] = ("text", "image")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EMPTY_MESSAGE = "no labelled random-sample verdicts yet"
MEASURES: tuple[str, ...] = ("precision", "recall", "f1")
_MEASURE_LABELS = {"precision": "precision", "recall": "recall", "f1": "F1"}
_MEASURE_COLOURS = {"precision": "tab:blue", "recall": "tab:orange", "f1": "tab:green"}

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Judged:
    """One verdict of a randomly sampled event, scored against the reviewers' label for one task."""

    task: Task
    modality: Modality
    model: str  # "name:version" of the model that produced the verdict
    judged_at: datetime  # when the verdict was produced (timezone-aware UTC)
    predicted: bool  # the model said harmful
    truth: bool  # the reviewer said harmful

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, not {self.task!r}")
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, not {self.modality!r}")
        if self.judged_at.tzinfo is None or self.judged_at.utcoffset() is None:
            raise ValueError("judged_at must be timezone-aware (UTC)")


@dataclass(frozen=True)
class Interval:
    """A confidence interval, low <= high, both within [0, 1]."""

    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    @property
    def width(self) -> float:
        return self.high - self.low


@dataclass(frozen=True)
class Estimate:
    """Confusion counts of a set of judged verdicts, precision, recall and F1 (None where undefined) and their
    confidence intervals (None where the estimate is undefined or, for F1, there are fewer than 2 rows)."""

    n: int
    tp: int
    fp: int
    fn: int
    tn: int
    precision: float | None
    recall: float | None
    f1: float | None
    precision_ci: Interval | None
    recall_ci: Interval | None
    f1_ci: Interval | None


@dataclass(frozen=True)
class Agreement:
    """Agreement of two reviewers over `items` items: the share they agree on, and Cohen's kappa."""

    items: int
    observed: float | None
    kappa: float | None


@dataclass(frozen=True)
class Counts:
    """The confusion table of a set of judged verdicts (positive = harmful)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.fn + self.tn


def counts(rows: Sequence[Judged]) -> Counts:
    """The confusion counts of `rows`."""
    tp = sum(1 for r in rows if r.predicted and r.truth)
    fp = sum(1 for r in rows if r.predicted and not r.truth)
    fn = sum(1 for r in rows if not r.predicted and r.truth)
    return Counts(tp=tp, fp=fp, fn=fn, tn=len(rows) - tp - fp - fn)


def ratio(numerator: int, denominator: int) -> float | None:
    """numerator / denominator, None when the denominator is 0."""
    return numerator / denominator if denominator else None


def f1_score(tp: int, fp: int, fn: int) -> float | None:
    """2tp / (2tp + fp + fn); None when there is neither a predicted nor a true positive."""
    return ratio(2 * tp, 2 * tp + fp + fn)


def z_value(confidence: float) -> float:
    """The standard normal quantile for a two-sided interval at `confidence` (1.959964 at 0.95)."""
    _check_confidence(confidence)
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(successes: int, trials: int, confidence: float = 0.95) -> Interval | None:
    """The Wilson score interval of the proportion successes / trials; None when there are no trials."""
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return None
    z = z_value(confidence)
    p = successes / trials
    z2_m = z * z / trials
    centre = (p + z2_m / 2) / (1 + z2_m)
    half = z * math.sqrt(p * (1 - p) / trials + z2_m / (4 * trials)) / (1 + z2_m)
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exactly 0 and 1 at the edges, not float residue
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return Interval(low=low, high=high)


def bootstrap_f1(tally: Counts, confidence: float = 0.95, resamples: int = 1000, seed: int = 0) -> Interval | None:
    """Percentile bootstrap interval of F1 over rows with the confusion counts `tally`.

    Resampling n rows with replacement is drawing the four cell counts from a multinomial with the observed
    cell shares; resamples without any positive (F1 undefined) are dropped. None when there are fewer than
    2 rows, F1 is undefined, or every resample was dropped.
    """
    _check_confidence(confidence)
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    n = tally.n
    if n < 2 or f1_score(tally.tp, tally.fp, tally.fn) is None:
        return None
    shares = np.array([tally.tp, tally.fp, tally.fn, tally.tn], dtype=float) / n
    draws = np.random.default_rng(seed).multinomial(n, shares, size=resamples)
    tp, fp, fn = draws[:, 0], draws[:, 1], draws[:, 2]
    denominator = 2 * tp + fp + fn
    defined = denominator > 0
    if not defined.any():
        return None
    scores = 2 * tp[defined] / denominator[defined]
    alpha = 1 - confidence
    low, high = np.quantile(scores, [alpha / 2, 1 - alpha / 2])
    return Interval(low=float(low), high=float(high))


def estimate(rows: Sequence[Judged], confidence: float = 0.95, resamples: int = 1000, seed: int = 0) -> Estimate:
    """Counts, precision, recall and F1 of `rows` with their confidence intervals (see the module docstring)."""
    tally = counts(rows)
    return Estimate(
        n=tally.n, tp=tally.tp, fp=tally.fp, fn=tally.fn, tn=tally.tn,
        precision=ratio(tally.tp, tally.tp + tally.fp),
        recall=ratio(tally.tp, tally.tp + tally.fn),
        f1=f1_score(tally.tp, tally.fp, tally.fn),
        precision_ci=wilson(tally.tp, tally.tp + tally.fp, confidence),
        recall_ci=wilson(tally.tp, tally.tp + tally.fn, confidence),
        f1_ci=bootstrap_f1(tally, confidence, resamples, seed),
    )


def group(rows: Sequence[Judged], key: Callable[[Judged], K]) -> dict[K, list[Judged]]:
    """`rows` grouped by `key`, keys sorted, only keys present."""
    groups: dict[K, list[Judged]] = defaultdict(list)
    for row in rows:
        groups[key(row)].append(row)
    return {k: groups[k] for k in sorted(groups)}  # type: ignore[type-var]


def by_task_and_modality(rows: Sequence[Judged], *, confidence: float = 0.95, resamples: int = 1000,
                         seed: int = 0) -> dict[tuple[str, str], Estimate]:
    """An estimate per (task, modality) present in `rows`, keys sorted."""
    return {key: estimate(part, confidence, resamples, seed)
            for key, part in group(rows, lambda r: (r.task, r.modality)).items()}


def by_model(rows: Sequence[Judged], *, confidence: float = 0.95, resamples: int = 1000,
             seed: int = 0) -> dict[str, Estimate]:
    """An estimate per model ("name:version") present in `rows`, keys sorted."""
    return {model: estimate(part, confidence, resamples, seed)
            for model, part in group(rows, lambda r: r.model).items()}


def bucket_start(moment: datetime, bucket: timedelta = timedelta(days=1)) -> datetime:
    """The start (UTC) of the bucket holding `moment`: buckets are whole multiples of `bucket` since the epoch."""
    _check_bucket(bucket)
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("moment must be timezone-aware")
    return EPOCH + ((moment.astimezone(UTC) - EPOCH) // bucket) * bucket


def over_time(rows: Sequence[Judged], bucket: timedelta = timedelta(days=1), *, confidence: float = 0.95,
              resamples: int = 1000, seed: int = 0) -> list[tuple[datetime, Estimate]]:
    """An estimate per time bucket of `judged_at`, as (bucket start in UTC, estimate), sorted, non-empty only."""
    _check_bucket(bucket)
    return [(start, estimate(part, confidence, resamples, seed))
            for start, part in group(rows, lambda r: bucket_start(r.judged_at, bucket)).items()]


def agreement(pairs: Sequence[tuple[bool, bool]]) -> Agreement:
    """Cohen's kappa of two reviewers on the binary harmful label; each pair is their two answers for one item.

    observed is None without pairs; kappa is None without pairs or when chance agreement is 1.
    """
    n = len(pairs)
    if n == 0:
        return Agreement(items=0, observed=None, kappa=None)
    agree = sum(1 for a, b in pairs if bool(a) == bool(b))
    first = sum(1 for a, _ in pairs if a)
    second = sum(1 for _, b in pairs if b)
    chance_n2 = first * second + (n - first) * (n - second)  # p_e · n², exact in integers
    observed = agree / n
    if chance_n2 == n * n:
        return Agreement(items=n, observed=observed, kappa=None)
    kappa = (agree * n - chance_n2) / (n * n - chance_n2)  # (p_o - p_e) / (1 - p_e), multiplied through by n²
    return Agreement(items=n, observed=observed, kappa=kappa)


def plot_quality(rows: Sequence[Judged], bucket: timedelta = timedelta(days=1), *, confidence: float = 0.95,
                 resamples: int = 1000, seed: int = 0) -> bytes:
    """A PNG (about 10x4 inches at 100 dpi): precision, recall and F1 over time for all rows, and per model
    version, each with its confidence interval as error bars; a PNG saying so when there are no rows."""
    figure = Figure(figsize=(10, 4), dpi=100)
    if not rows:
        figure.text(0.5, 0.5, EMPTY_MESSAGE, ha="center", va="center", fontsize=14, color="dimgray")
        return _png(figure)
    _check_bucket(bucket)
    timeline = over_time(rows, bucket, confidence=confidence, resamples=resamples, seed=seed)
    models = by_model(rows, confidence=confidence, resamples=resamples, seed=seed)
    time_axes, model_axes = figure.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    _plot_over_time(time_axes, timeline, bucket)
    _plot_by_model(model_axes, models)
    figure.suptitle(f"Verdict quality on the reviewed random sample (n = {len(rows)}); error bars: "
                    f"{confidence:.0%} CI (Wilson for precision and recall, bootstrap for F1)", fontsize=10)
    handles, labels = model_axes.get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(MEASURES), fontsize=9, frameon=False)
    figure.tight_layout(rect=(0, 0.06, 1, 0.97))
    return _png(figure)


def _error_bar(point: float, interval: Interval | None) -> tuple[float, float]:
    if interval is None:
        return (0.0, 0.0)
    return (max(0.0, point - interval.low), max(0.0, interval.high - point))


def _values(estimate_: Estimate, measure: str) -> tuple[float | None, Interval | None]:
    return getattr(estimate_, measure), getattr(estimate_, f"{measure}_ci")


def _plot_over_time(axes: Axes, timeline: list[tuple[datetime, Estimate]], bucket: timedelta) -> None:
    offsets = {"precision": -0.15, "recall": 0.0, "f1": 0.15}  # of a bucket, so the error bars do not overlap
    for measure in MEASURES:
        xs, ys, low, high = [], [], [], []
        for start, found in timeline:
            point, interval = _values(found, measure)
            if point is None:
                continue
            below, above = _error_bar(point, interval)
            xs.append(start + bucket * offsets[measure])
            ys.append(point)
            low.append(below)
            high.append(above)
        if xs:
            axes.errorbar(xs, ys, yerr=[low, high], fmt="o-", capsize=3, markersize=4, linewidth=1.2,
                          color=_MEASURE_COLOURS[measure], label=_MEASURE_LABELS[measure])
    locator = AutoDateLocator(tz=UTC, minticks=3, maxticks=6)
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator, tz=UTC))
    if len(timeline) == 1:
        start = timeline[0][0]
        axes.set_xlim(start - bucket, start + bucket)
    axes.set_ylim(0, 1.05)
    axes.set_title(f"Over time (all models, buckets of {_duration(bucket)})", fontsize=10)
    axes.set_xlabel("bucket start (UTC)")
    axes.set_ylabel("score")
    axes.grid(True, alpha=0.3)


def _plot_by_model(axes: Axes, models: dict[str, Estimate]) -> None:
    names = list(models)
    width = 0.8 / len(MEASURES)
    positions = np.arange(len(names), dtype=float)
    for index, measure in enumerate(MEASURES):
        heights, low, high = [], [], []
        for found in models.values():
            point, interval = _values(found, measure)
            below, above = _error_bar(point, interval) if point is not None else (0.0, 0.0)
            heights.append(0.0 if point is None else point)
            low.append(below)
            high.append(above)
        axes.bar(positions + (index - 1) * width, heights, width, yerr=[low, high], capsize=3,
                 color=_MEASURE_COLOURS[measure], label=_MEASURE_LABELS[measure], error_kw={"linewidth": 1})
    axes.set_xticks(positions, [f"{name}\n(n = {models[name].n})" for name in names], fontsize=8,
                    rotation=15 if len(names) > 3 else 0)
    centre, half = (len(names) - 1) / 2, max(len(names), 2) / 2 + 0.25  # a lone model's bars stay bar-wide
    axes.set_xlim(centre - half, centre + half)
    axes.set_ylim(0, 1.05)
    axes.set_title("Per model version", fontsize=10)
    axes.set_xlabel("model")
    axes.set_ylabel("score")
    axes.grid(True, axis="y", alpha=0.3)


def _duration(bucket: timedelta) -> str:
    seconds = int(bucket.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return str(bucket)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")


def _check_bucket(bucket: timedelta) -> None:
    if bucket <= timedelta(0):
        raise ValueError(f"bucket must be positive, got {bucket}")
