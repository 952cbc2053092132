"""A training job's figures, step by step: loss, reward, clip range and tokens per second, kept from the
trainer's logs (a `transformers.TrainerCallback`), written as `figures.json` and plotted in `figures.png`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

FIGURES = ("loss", "reward", "clip_range", "tokens_per_s")


class FiguresCallback(TrainerCallback):  # type: ignore[misc]
    """`clip_range` reads the clip range the trainer holds when it logs (None: the job has none)."""

    def __init__(self, clip_range: Callable[[], float] | None = None) -> None:
        self.clip_range = clip_range
        self.rows: list[dict[str, Any]] = []
        self._started = time.monotonic()
        self._last: tuple[float, float] | None = None  # (elapsed, tokens) at the previous log

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **_kwargs: Any) -> None:
        if not logs or "train_runtime" in logs:  # the closing summary is no step
            return
        elapsed = time.monotonic() - self._started
        tokens = _number(logs.get("num_tokens"))
        rate = None
        if tokens is not None and self._last is not None and elapsed > self._last[0]:
            rate = (tokens - self._last[1]) / (elapsed - self._last[0])
        if tokens is not None:
            self._last = (elapsed, tokens)
        self.rows.append({"step": state.global_step, "elapsed_s": round(elapsed, 3),
                          "loss": _number(logs.get("loss")), "reward": _number(logs.get("reward")),
                          "clip_range": self.clip_range() if self.clip_range else None,
                          "tokens": tokens, "tokens_per_s": None if rate is None else round(rate, 2)})

    def summary(self) -> dict[str, Any]:
        """First and last value of each figure, and the mean tokens per second."""
        out: dict[str, Any] = {"steps": len(self.rows)}
        for name in FIGURES:
            values = [row[name] for row in self.rows if row[name] is not None]
            if values:
                out[f"first_{name}"], out[f"last_{name}"] = values[0], values[-1]
        rates = [row["tokens_per_s"] for row in self.rows if row["tokens_per_s"] is not None]
        out["mean_tokens_per_s"] = round(sum(rates) / len(rates), 2) if rates else None
        return out

    def write(self, folder: Path, title: str) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        data = folder / "figures.json"
        data.write_text(json.dumps({"summary": self.summary(), "steps": self.rows}, indent=2))
        return [data, plot(self.rows, folder / "figures.png", title)]


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(2, 2, figsize=(9, 6), sharex=True)
    for axis, name in zip(axes.flat, FIGURES, strict=True):
        points = [(row["step"], row[name]) for row in rows if row[name] is not None]
        if points:
            axis.plot(*zip(*points, strict=True), marker="o", markersize=3)
        else:
            axis.text(0.5, 0.5, "not measured by this job", ha="center", va="center", transform=axis.transAxes)
        axis.set_title(name.replace("_", " "))
        axis.grid(alpha=0.3)
    for axis in axes[1]:
        axis.set_xlabel("optimiser step")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


def _number(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None
