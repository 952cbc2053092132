"""How much the cascade's lite stage settles, and how well, on the lite head's held-out texts.

For each (low, high) band: the share of held-out texts whose lite score falls outside the band (settled
by the lite stage) and the precision/recall/F1 of those lite-only decisions. Writes JSON and a plot.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from trainer.lite_data import load_examples
from trainer.lite_head import prf, split_examples
from workers.guard.lite import TextHead, embed, load_embedder

BANDS = [(0.02, 0.98), (0.05, 0.95), (0.1, 0.9), (0.2, 0.8), (0.3, 0.7), (0.5, 0.5)]


def cascade_rows(scores: np.ndarray, labels: np.ndarray, threshold: float) -> list[dict[str, float]]:
    rows = []
    for low, high in BANDS:
        settled = (scores < low) | (scores >= high)
        figures = prf(labels[settled], scores[settled] >= threshold) if settled.any() else {}
        rows.append({"low": low, "high": high, "settled_share": round(float(settled.mean()), 4), **figures})
    return rows


def cascade_report(out: Path, threads: int = 2) -> list[dict[str, float]]:
    held_out = split_examples(load_examples()).held_out
    head = TextHead.load()
    scores = head.scores(embed(load_embedder(threads), [e.text for e in held_out]))
    labels = np.array([e.harmful for e in held_out])
    rows = cascade_rows(scores, labels, head.threshold)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cascade.json").write_text(json.dumps(rows, indent=2) + "\n")
    _plot(rows, out / "cascade.png")
    return rows


def _plot(rows: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["settled_share"] for r in rows], [r["f1"] for r in rows], marker="o")
    for r in rows:
        ax.annotate(f"{r['low']}/{r['high']}", (r["settled_share"], r["f1"]), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("share settled by the lite stage")
    ax.set_ylabel("F1 of lite-only decisions")
    ax.set_title("cascade band (low/high) on held-out texts")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
