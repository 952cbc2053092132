"""An evaluation as files a person reads and a release keeps: `report.md`, `evaluation.json` and PNG plots.

The report quotes events, responses and reasoning, which whoever sent the events wrote: every piece of
text is escaped so that it stays inside its table cell and renders as text, never as markup or HTML.
A figure that is undefined (F1 of a group without harmful items) is written "n/a", and null in the JSON;
"—" marks a group one of two compared models has no figures for. Lines of the input file that could not
be read are listed (line, field, problem) in both (`unread_lines`, only where there are some).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runtime.input_lines import BadLine
from trainer.evaluate import Evaluation, Figures, Mistake, Sweep
from trainer.labelled import Modality, Task

MISTAKES_SHOWN = 50
THIS = "this"
UNDEFINED = "n/a"
ABSENT = "—"
F1_PLOT = "f1_by_task_modality.png"
SWEEP_PLOT = "threshold_sweep.png"
CONFUSION_PLOT = "confusion.png"

_ESCAPES = {"\\": "\\\\", "|": "\\|", "`": "\\`", "*": "\\*", "_": "\\_", "[": "\\[", "]": "\\]",
            "&": "&amp;", "<": "&lt;", ">": "&gt;"}

Scope = tuple[str, Task | None, Modality | None]


def escape(text: str) -> str:
    """`text` as one line of literal Markdown: line breaks become spaces; what could end a table cell,
    open a code span, link, image or emphasis, or be read as HTML is escaped."""
    line = " ".join(text.splitlines())
    return "".join(_ESCAPES.get(char, char) for char in line)


def write_report(evaluation: Evaluation, out: Path, title: str, baseline: Evaluation | None = None,
                 baseline_name: str = "serving", unread: Sequence[BadLine] = ()) -> Path:
    """Write `out/report.md`, `out/evaluation.json` and the plots (a stale plot this evaluation has no
    data for is removed); the report's path. `unread`: the input's lines that could not be read."""
    out.mkdir(parents=True, exist_ok=True)
    document = evaluation.to_dict() | ({"unread_lines": [bad.to_dict() for bad in unread]} if unread else {})
    (out / "evaluation.json").write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n",
                                         encoding="utf-8")
    plots = write_plots(evaluation, out, baseline, baseline_name)
    report = out / "report.md"
    report.write_text(render_markdown(evaluation, title, plots, baseline, baseline_name, unread), encoding="utf-8")
    return report


def render_markdown(evaluation: Evaluation, title: str, plots: set[str], baseline: Evaluation | None = None,
                    baseline_name: str = "serving", unread: Sequence[BadLine] = ()) -> str:
    """The report's Markdown; `plots` names the image files written beside it."""
    sections = [
        [f"# {escape(title)}", ""],
        _headline(evaluation, baseline, baseline_name),
        _comparison(evaluation, baseline, baseline_name) if baseline is not None else [],
        _figures_table(evaluation, plots),
        _confusions(evaluation, plots),
        _sweeps(evaluation, plots),
        _errors(evaluation),
        _unread(unread),
        _mistakes(evaluation.mistakes),
    ]
    return "\n".join(line for section in sections for line in section).rstrip() + "\n"


def _number(value: float | None) -> str:
    return UNDEFINED if value is None else f"{value:.4f}"


def _difference(new: float | None, old: float | None) -> str:
    return UNDEFINED if new is None or old is None else f"{new - old:+.4f}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows), ""]


def _headline(evaluation: Evaluation, baseline: Evaluation | None, baseline_name: str) -> list[str]:
    overall = evaluation.overall
    lines = [
        f"- **F1 {_number(overall.f1)}** (precision {_number(overall.precision)}, "
        f"recall {_number(overall.recall)}), pooled over every task",
        f"- {overall.n} decisions on {evaluation.items} labelled events; "
        f"{evaluation.error_count} without an answer (errors, {evaluation.error_rate:.2%} of the decisions, "
        "scored as wrong answers)",
    ]
    if evaluation.by_task:
        per_task = ", ".join(f"{task.value} {_number(figures.f1)}" for task, figures in evaluation.by_task.items())
        lines.append(f"- F1 per task: {per_task}")
    if baseline is not None:
        lines.append(f"- F1 of {escape(baseline_name)}: {_number(baseline.overall.f1)} "
                     f"(difference {_difference(overall.f1, baseline.overall.f1)})")
    return [*lines, ""]


def scopes(*evaluations: Evaluation) -> list[Scope]:
    """Overall, then each task followed by its modalities, over the union of `evaluations`."""
    found: list[Scope] = [("overall", None, None)]
    for task in Task:
        if any(task in e.by_task for e in evaluations):
            found.append((task.value, task, None))
        for modality in Modality:
            if any((task, modality) in e.by_task_modality for e in evaluations):
                found.append((f"{task.value} · {modality.value}", task, modality))
    return found


def figures_at(evaluation: Evaluation, scope: Scope) -> Figures | None:
    _, task, modality = scope
    if task is None:
        return evaluation.overall
    if modality is None:
        return evaluation.by_task.get(task)
    return evaluation.by_task_modality.get((task, modality))


def _comparison(evaluation: Evaluation, baseline: Evaluation, baseline_name: str) -> list[str]:
    name = escape(baseline_name)
    header = ["scope", f"n ({name} / {THIS})"]
    for measure in ("F1", "precision", "recall"):
        header += [f"{measure} {name}", f"{measure} {THIS}", "difference"]
    rows = []
    for scope in scopes(baseline, evaluation):
        before, after = figures_at(baseline, scope), figures_at(evaluation, scope)
        row = [scope[0], f"{before.n if before else ABSENT} / {after.n if after else ABSENT}"]
        for measure in ("f1", "precision", "recall"):
            old = _number(getattr(before, measure)) if before else ABSENT
            new = _number(getattr(after, measure)) if after else ABSENT
            change = _difference(getattr(after, measure), getattr(before, measure)) if before and after else ABSENT
            row += [old, new, change]
        rows.append(row)
    return [f"## Compared with {name}", "", *_table(header, rows)]


def _figures_table(evaluation: Evaluation, plots: set[str]) -> list[str]:
    rows = []
    for scope in scopes(evaluation)[1:]:
        figures = figures_at(evaluation, scope)
        if figures is None:
            continue
        _, task, modality = scope
        rows.append([task.value if task else "", modality.value if modality else "all", str(figures.n),
                     _number(figures.precision), _number(figures.recall), _number(figures.f1)])
    lines = ["## By task and modality", "", *_table(["task", "modality", "n", "precision", "recall", "F1"], rows)]
    if F1_PLOT in plots:
        lines += [f"![F1 by task and modality]({F1_PLOT})", ""]
    return lines


def _confusions(evaluation: Evaluation, plots: set[str]) -> list[str]:
    lines = ["## Confusion matrices", "", "Rows are the label, columns the verdict.", ""]
    for task in evaluation.tasks:
        (tn, fp), (fn, tp) = evaluation.confusion(task)
        lines += [f"### {task.value}", "",
                  *_table(["label \\ verdict", "unharmful", "harmful"],
                          [["unharmful", str(tn), str(fp)], ["harmful", str(fn), str(tp)]])]
    if CONFUSION_PLOT in plots:
        lines += [f"![confusion matrices]({CONFUSION_PLOT})", ""]
    return lines


def _sweeps(evaluation: Evaluation, plots: set[str]) -> list[str]:
    lines = ["## Threshold sweep", "",
             "Harmful when the verdict's score is at least the threshold; only for a task whose every verdict "
             "carries a score.", ""]
    for task in evaluation.tasks:
        sweep = evaluation.sweeps.get(task)
        lines += [f"### {task.value}", ""]
        lines += _sweep_table(sweep) if sweep else ["No sweep: not every verdict for this task carries a score.", ""]
    if SWEEP_PLOT in plots:
        lines += [f"![threshold sweep]({SWEEP_PLOT})", ""]
    return lines


def _sweep_table(sweep: Sweep) -> list[str]:
    auc = _number(sweep.auc) if sweep.auc is not None else "— (only one class among the labels)"
    rows = [[f"**{p.threshold:.2f}**" if p.threshold == sweep.best_threshold else f"{p.threshold:.2f}",
             _number(p.precision), _number(p.recall), _number(p.f1)] for p in sweep.points]
    return [f"Best threshold **{sweep.best_threshold:.2f}** (F1 {_number(sweep.best_f1)}); ROC AUC {auc}.", "",
            *_table(["threshold", "precision", "recall", "F1"], rows)]


def _errors(evaluation: Evaluation) -> list[str]:
    per_task = ", ".join(f"{task.value}: {count}" for task, count in evaluation.errors.items())
    return ["## Errors", "",
            f"{evaluation.error_count} decisions without an answer ({per_task or 'no task'}): error verdicts, or "
            "verdicts without a label for the task. They are listed among the mistakes and scored as wrong answers "
            "(the opposite of the label); the threshold sweep, which reads scores, leaves them out.",
            ""]


def _unread(unread: Sequence[BadLine]) -> list[str]:
    if not unread:
        return []
    rows = [[str(bad.number), escape(bad.field) or "(the whole line)", escape(bad.problem)] for bad in unread]
    return ["## Lines not read", "",
            f"{len(unread)} line{'' if len(unread) == 1 else 's'} of the file could not be read and "
            f"{'is' if len(unread) == 1 else 'are'} not scored:", "",
            *_table(["line", "field", "problem"], rows)]


def _label(value: bool | None) -> str:
    return "—" if value is None else ("harmful" if value else "unharmful")


def _mistake_row(mistake: Mistake) -> list[str]:
    explanation = f"error: {mistake.error}" if mistake.error else mistake.reasoning
    return [escape(mistake.event_id), mistake.task.value, mistake.modality.value, mistake.kind.replace("_", " "),
            _label(mistake.truth), _label(mistake.predicted),
            "—" if mistake.score is None else f"{mistake.score:.3f}", escape(mistake.text),
            "—" if mistake.response is None else escape(mistake.response), escape(explanation)]


def _mistakes(mistakes: list[Mistake]) -> list[str]:
    if not mistakes:
        return ["## Mistakes", "", "None.", ""]
    hidden = len(mistakes) - MISTAKES_SHOWN
    note = (f"{len(mistakes)} mistakes; the first {MISTAKES_SHOWN} are shown, {hidden} more are in evaluation.json."
            if hidden > 0 else f"{len(mistakes)} mistake{'' if len(mistakes) == 1 else 's'}.")
    header = ["event", "task", "modality", "kind", "label", "verdict", "score", "text", "response", "reasoning"]
    return ["## Mistakes", "", note, "", *_table(header, [_mistake_row(m) for m in mistakes[:MISTAKES_SHOWN]])]


def write_plots(evaluation: Evaluation, out: Path, baseline: Evaluation | None = None,
                baseline_name: str = "serving") -> set[str]:
    """The plots there are data for, in `out`; the names of those written (others of ours are removed)."""
    written = {F1_PLOT}
    _plot_f1(evaluation, baseline, baseline_name, out / F1_PLOT)
    if evaluation.sweeps:
        _plot_sweeps(evaluation, out / SWEEP_PLOT)
        written.add(SWEEP_PLOT)
    if evaluation.tasks:
        _plot_confusions(evaluation, out / CONFUSION_PLOT)
        written.add(CONFUSION_PLOT)
    for stale in {F1_PLOT, SWEEP_PLOT, CONFUSION_PLOT} - written:
        (out / stale).unlink(missing_ok=True)
    return written


def _pyplot() -> Any:
    """pyplot on the Agg backend, imported only when a plot is drawn: it is slow to import and needs no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plotted(value: float | None) -> float:
    """A figure as a plot takes it: an undefined one is NaN, which draws nothing."""
    return float("nan") if value is None else value


def _bar_label(figures: Figures | None) -> str:
    if figures is None:
        return ""
    return UNDEFINED if figures.f1 is None else f"{figures.f1:.2f}"


def _plot_f1(evaluation: Evaluation, baseline: Evaluation | None, baseline_name: str, path: Path) -> None:
    plt = _pyplot()
    models = [(baseline_name, baseline), (THIS, evaluation)] if baseline is not None else [(THIS, evaluation)]
    found = scopes(*(e for _, e in models if e is not None))
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(found)), 4))
    for index, (name, model) in enumerate(models):
        positions = [x - 0.4 + width * (index + 0.5) for x in range(len(found))]
        figures = [figures_at(model, scope) for scope in found]
        bars = ax.bar(positions, [_plotted(f.f1 if f else None) for f in figures], width, label=name)
        ax.bar_label(bars, labels=[_bar_label(f) for f in figures], fontsize=7)
    ax.set_xticks(range(len(found)), [label.replace(" · ", "\n") for label, _, _ in found])
    ax.set_ylim(0, 1.25)
    ax.set_ylabel("F1")
    ax.set_title("F1 by task and modality")
    if baseline is not None:
        ax.legend(loc="upper right", ncols=2, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_sweeps(evaluation: Evaluation, path: Path) -> None:
    plt = _pyplot()
    swept = list(evaluation.sweeps.items())
    fig, axes = plt.subplots(1, len(swept), figsize=(5 * len(swept), 3.5), squeeze=False)
    for ax, (task, sweep) in zip(axes[0], swept, strict=True):
        thresholds = [p.threshold for p in sweep.points]
        for measure in ("precision", "recall", "f1"):
            ax.plot(thresholds, [_plotted(getattr(p, measure)) for p in sweep.points], marker=".", label=measure)
        ax.axvline(sweep.best_threshold, color="grey", linestyle="--", linewidth=1)
        auc = f"{sweep.auc:.3f}" if sweep.auc is not None else "n/a"
        ax.set_title(f"{task.value}: best {sweep.best_threshold:.2f}, AUC {auc}")
        ax.set_xlabel("threshold")
        ax.set_ylim(0, 1.05)
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_confusions(evaluation: Evaluation, path: Path) -> None:
    plt = _pyplot()
    tasks = evaluation.tasks
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.4), squeeze=False)
    labels = ["unharmful", "harmful"]
    for ax, task in zip(axes[0], tasks, strict=True):
        matrix = evaluation.confusion(task)
        ax.imshow(matrix, cmap="Blues", vmin=0)
        peak = max(max(row) for row in matrix) or 1
        for row in range(2):
            for column in range(2):
                count = matrix[row][column]
                ax.text(column, row, str(count), ha="center", va="center",
                        color="white" if count > peak / 2 else "black")
        ax.set_xticks([0, 1], labels)
        ax.set_yticks([0, 1], labels)
        ax.set_xlabel("verdict")
        ax.set_ylabel("label")
        ax.set_title(task.value)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
