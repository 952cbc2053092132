"""The fine-tuned lite guard's evaluation report: `lite-eval.json`, `lite-eval.md` and `lite-eval.png`.

Every figure is on test data (the contrast corpus' test part and the hard cases), beside P5's model on the
same texts; the plot draws benign kept against harmful caught across thresholds, before and after, with
the operating points marked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from trainer.lite_points import Scored, curve

P5_REPORT = "lite-eval-p5.md"


def write_report(evaluation: dict[str, Any], points: dict[str, dict[str, Any]], report_dir: Path,
                 before_scores: Scored, after_scores: Scored) -> None:
    report_dir.mkdir(parents=True, exist_ok=True)
    curves = {name: {task: curve(*_task(scores, task)) for task in ("request", "response")}
              for name, scores in (("before", before_scores), ("after", after_scores))}
    (report_dir / "lite-eval.json").write_text(json.dumps({**evaluation, "points": points, "curves": curves},
                                                          indent=1) + "\n")
    (report_dir / "lite-eval.md").write_text(markdown(evaluation, points))
    plot(curves, points, report_dir / "lite-eval.png")


def _task(scores: Scored, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels of the contrast test set for one task."""
    if task == "request":
        keep = np.array(scores.request_set) == "contrast"
        return scores.request[keep], scores.request_y[keep]
    keep = np.array(scores.response_set) == "contrast"
    return scores.response[keep], scores.response_y[keep]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def markdown(evaluation: dict[str, Any], points: dict[str, dict[str, Any]]) -> str:
    after, before = evaluation["after"], evaluation["before"]["own"]
    lines = [
        "# Lite guard: fine-tuned stages, measured on data no choice was made on", "",
        "Test data: the test part of the written contrast corpus (groups never trained on, never used to choose "
        "anything) and the hand-written hard cases. *Before* is P5's model (frozen embeddings and logistic heads, "
        f"`{P5_REPORT}`) at its own thresholds, on the same texts. Operating points were chosen on the "
        "validation part and the development pairs only (`trainer/lite_points.py`).", "",
        "## Over-blocking and recall (contrast test set)", "",
        "| model | benign-but-alarming requests kept | harmful requests caught | request F1 | request AUC | "
        "helpful answers flagged | refusals flagged | compliant answers caught | abusive answers caught | "
        "response F1 | response AUC |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [("P5 (before)", before)] + [(f"**{name}**", after[name]) for name in points]
    for label, fig in rows:
        req, resp = fig["contrast"]["requests"], fig["contrast"]["responses"]
        lines.append(f"| {label} | {_pct(req['benign_kept'])} | {_pct(req['harmful_caught'])} | {_num(req.get('f1'))} | "
                     f"{_num(req['auc'])} | {_pct(resp.get('helpful-answer_flagged'))} | "
                     f"{_pct(resp.get('refusal-or-redirect_flagged'))} | {_pct(resp.get('compliance_flagged'))} | "
                     f"{_pct(resp.get('abusive-answer_flagged'))} | {_num(resp.get('f1'))} | {_num(resp['auc'])} |")
    n = after["balanced"]["contrast"]
    lines += ["", f"{n['requests']['n']} requests and {n['responses']['n']} responses.", "",
              "## Hard cases (hand-written, never trained on)", "",
              "| model | benign kept | harmful caught | request F1 | unharmful responses flagged | harmful responses caught | response F1 |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for label, fig in rows:
        req, resp = fig["hard"]["requests"], fig["hard"]["responses"]
        lines.append(f"| {label} | {_pct(req['benign_kept'])} | {_pct(req['harmful_caught'])} | {_num(req.get('f1'))} | "
                     f"{_pct(resp['unharmful_flagged'])} | {_pct(resp['harmful_caught'])} | {_num(resp.get('f1'))} |")
    lines += ["", "## Per category (contrast test requests, balanced; before in brackets)", "",
              "| category | benign | harmful | benign kept | harmful caught |", "|---|---:|---:|---:|---:|"]
    was = before["request_categories"]
    for cat, row in after["balanced"]["request_categories"].items():
        old = was.get(cat, {})
        lines.append(f"| {cat} | {row['benign']} | {row['harmful']} | {_pct(row['benign_kept'])} "
                     f"({_pct(old.get('benign_kept'))}) | {_pct(row['harmful_caught'])} "
                     f"({_pct(old.get('harmful_caught'))}) |")
    lines += ["", "## Operating points and the cascade band", "",
              "| point | request threshold | response threshold | band low | band high | requests settled | "
              "accuracy on them | responses settled | accuracy on them |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, point in points.items():
        c = after[name]["cascade"]
        lines.append(f"| {name} | {point['request']} | {point['response']} | {point['cascade']['low']} | "
                     f"{point['cascade']['high']} | {_pct(c['request']['settled_share'])} | "
                     f"{_pct(c['request']['accuracy_on_settled'])} | {_pct(c['response']['settled_share'])} | "
                     f"{_pct(c['response']['accuracy_on_settled'])} |")
    lines += ["", "Settled shares and accuracies are on the whole test data (contrast and hard cases). "
              "Leave-one-source-out was not rerun for the fine-tuned stages (each fold is a full fine-tune); "
              f"P5's table is in `{P5_REPORT}`.", "", "![benign kept against harmful caught](lite-eval.png)", ""]
    return "\n".join(lines)


def plot(curves: dict[str, dict[str, dict[str, list[float]]]], points: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, task in zip(axes, ("request", "response"), strict=True):
        for name, colour in (("before", "#bbbbbb"), ("after", "#3b7dd8")):
            c = curves[name][task]
            ax.plot(c["benign_kept"], c["harmful_caught"], color=colour, label="P5" if name == "before" else "fine-tuned")
        c = curves["after"][task]
        for point, marker in zip(points, ("v", "o", "^"), strict=False):
            i = int(np.argmin(np.abs(np.array(c["threshold"]) - points[point][task])))
            ax.plot(c["benign_kept"][i], c["harmful_caught"][i], marker, color="#d83b3b")
            ax.annotate(point, (c["benign_kept"][i], c["harmful_caught"][i]), fontsize=8,
                        xytext=(4, -10), textcoords="offset points")
        ax.set_xlabel("benign kept" if task == "request" else "unharmful responses kept")
        ax.set_ylabel("harmful caught")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{task}s (contrast test set), across thresholds")
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
