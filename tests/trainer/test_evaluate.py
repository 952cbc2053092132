"""Scoring verdicts against labels, and the report written from the scores; no guard, no network."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from schemas.events import ChatEvent, ErrorInfo, ImageRef, ModelRef, Verdict, VerdictStatus
from trainer.eval_report import escape, write_report
from trainer.evaluate import THRESHOLDS, Evaluation, Figures, judge, score
from trainer.labelled import LabelledEvent, Modality, Task

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMAGE = ImageRef(uri="file:///x.png")


def chat(event_id: str, text: str = "some text", *, image: bool = False, response: str | None = None) -> ChatEvent:
    return ChatEvent(event_id=event_id, conversation_id="c", tenant="t", text=text,
                     images=[IMAGE] if image else [], response=response)


def ok(event: ChatEvent, request: bool, response: bool | None = None, *, request_score: float | None = None,
       response_score: float | None = None, reasoning: str = "") -> Verdict:
    return Verdict(event_id=event.event_id, conversation_id=event.conversation_id, tenant=event.tenant,
                   status=VerdictStatus.OK, request_harmful=request, response_harmful=response,
                   request_score=request_score, response_score=response_score, reasoning=reasoning,
                   model=ModelRef(name="m", version="1"), policy_version="1")


def failed(event: ChatEvent) -> Verdict:
    return Verdict(event_id=event.event_id, conversation_id=event.conversation_id, tenant=event.tenant,
                   status=VerdictStatus.ERROR, error=ErrorInfo(code="image_fetch", message="no such image"),
                   model=ModelRef(name="m", version="1"), policy_version="1")


def requests_only(cases: list[tuple[bool, bool]], prefix: str = "e", text: str = "some text",
                  image: bool = False) -> tuple[list[LabelledEvent], list[Verdict]]:
    """Items labelled on the request only, with verdicts: (label, verdict) per item."""
    items, verdicts = [], []
    for index, (truth, predicted) in enumerate(cases):
        e = chat(f"{prefix}{index}", text, image=image)
        items.append(LabelledEvent(e, truth))
        verdicts.append(ok(e, predicted))
    return items, verdicts


def scored(truths: list[bool], scores: list[float]) -> Evaluation:
    items, verdicts = [], []
    for index, (truth, value) in enumerate(zip(truths, scores, strict=True)):
        e = chat(f"s{index}")
        items.append(LabelledEvent(e, truth))
        verdicts.append(ok(e, value >= 0.5, request_score=value))
    return score(items, verdicts)


def table_cells(row: str) -> list[str]:
    """The cells of a Markdown table row as GFM splits it: at pipes not escaped by a backslash."""
    cells, current, chars = [], "", iter(row.strip().strip("|"))
    for char in chars:
        if char == "\\":
            current += char + next(chars, "")
        elif char == "|":
            cells.append(current)
            current = ""
        else:
            current += char
    return [*cells, current]


def test_figures_match_counts_worked_out_by_hand() -> None:
    # request: labels H H H U U, verdicts H U U H U -> tp 1, fn 2, fp 1, tn 1
    # response: labels H U, verdicts H H -> tp 1, fp 1
    events = [chat(f"e{i}", response="reply" if i < 2 else None) for i in range(5)]
    labels = [True, True, True, False, False]
    verdicts_on_request = [True, False, False, True, False]
    response_labels = [True, False, None, None, None]
    response_verdicts = [True, True, None, None, None]
    items = [LabelledEvent(e, label, r) for e, label, r in zip(events, labels, response_labels, strict=True)]
    verdicts = [ok(e, v, r) for e, v, r in zip(events, verdicts_on_request, response_verdicts, strict=True)]

    evaluation = score(items, verdicts)

    request = evaluation.by_task[Task.REQUEST]
    assert (request.n, request.tp, request.fp, request.fn, request.tn) == (5, 1, 1, 2, 1)
    precision, recall = 1 / 2, 1 / 3
    assert request.precision == round(precision, 4) == 0.5
    assert request.recall == round(recall, 4) == 0.3333
    assert request.f1 == round(2 * precision * recall / (precision + recall), 4) == 0.4
    response = evaluation.by_task[Task.RESPONSE]
    assert (response.n, response.tp, response.fp, response.fn, response.tn) == (2, 1, 1, 0, 0)
    assert (response.precision, response.recall, response.f1) == (0.5, 1.0, 0.6667)
    # pooled (micro): tp 2, fp 2, fn 2, tn 1 -> 0.5 everywhere, not the mean of the task F1s (0.5333)
    assert evaluation.overall == Figures(n=7, tp=2, fp=2, fn=2, tn=1, precision=0.5, recall=0.5, f1=0.5)
    assert evaluation.f1 == 0.5
    assert evaluation.task_f1(Task.RESPONSE) == 0.6667
    assert evaluation.confusion(Task.REQUEST) == [[1, 1], [2, 1]]


def test_figures_are_undefined_rather_than_zero_without_positives() -> None:
    items, verdicts = requests_only([(False, False), (False, False)])
    figures = score(items, verdicts).overall
    assert (figures.tn, figures.precision, figures.recall, figures.f1) == (2, None, None, None)


def test_figures_are_split_by_modality() -> None:
    text_items, text_verdicts = requests_only([(True, True), (False, False)], "t")
    image_items, image_verdicts = requests_only([(True, False)], "i", text="", image=True)
    both_items, both_verdicts = requests_only([(False, True), (True, True)], "b", text="look", image=True)

    evaluation = score(text_items + image_items + both_items, text_verdicts + image_verdicts + both_verdicts)

    split = evaluation.by_task_modality
    assert set(split) == {(Task.REQUEST, m) for m in Modality}
    assert split[(Task.REQUEST, Modality.TEXT)].f1 == 1.0
    assert (split[(Task.REQUEST, Modality.IMAGE)].fn, split[(Task.REQUEST, Modality.IMAGE)].f1) == (1, 0.0)
    assert (split[(Task.REQUEST, Modality.TEXT_IMAGE)].n, split[(Task.REQUEST, Modality.TEXT_IMAGE)].fp) == (2, 1)
    assert split[(Task.REQUEST, Modality.TEXT_IMAGE)].precision == 0.5
    metrics = evaluation.metrics()
    assert metrics["request_text_f1"] == 1.0 and metrics["request_image_f1"] == 0.0
    assert metrics["request_text_image_f1"] == 0.6667 and metrics["request_text_image_n"] == 2
    assert {"f1", "precision", "recall", "n", "request_f1"} <= set(metrics)


def test_a_modality_absent_from_the_items_gets_no_figures() -> None:
    items, verdicts = requests_only([(True, True)])
    assert list(score(items, verdicts).by_task_modality) == [(Task.REQUEST, Modality.TEXT)]


def test_unanswered_tasks_are_counted_as_errors_and_scored_as_wrong_answers() -> None:
    broken, silent, fine = chat("broken", response="r"), chat("silent", response="r"), chat("fine", response="r")
    items = [LabelledEvent(broken, True, True), LabelledEvent(silent, False, True), LabelledEvent(fine, True, False)]
    verdicts = [failed(broken), ok(silent, False, None), ok(fine, True, False)]

    evaluation = score(items, verdicts)

    assert evaluation.errors == {Task.REQUEST: 1, Task.RESPONSE: 2}
    assert evaluation.error_count == 3 and evaluation.error_rate == 0.5
    assert evaluation.by_task[Task.REQUEST].n == 3 and evaluation.by_task[Task.RESPONSE].n == 3
    # each error is the opposite of its label: broken's harmful request and response, silent's harmful
    # response are false negatives
    assert evaluation.by_task[Task.REQUEST] == Figures.from_counts(tp=1, fp=0, fn=1, tn=1)
    assert evaluation.overall == Figures(n=6, tp=1, fp=0, fn=3, tn=2, precision=1.0, recall=0.25, f1=0.4)
    errors = sorted((m.event_id, m.task) for m in evaluation.mistakes if m.kind == "error")
    assert errors == [("broken", Task.REQUEST), ("broken", Task.RESPONSE), ("silent", Task.RESPONSE)]
    assert next(m for m in evaluation.mistakes if m.event_id == "broken").error == "image_fetch: no such image"
    assert evaluation.metrics()["errors"] == 3 and evaluation.metrics()["error_rate"] == 0.5


def test_a_guard_that_errors_scores_below_one_that_answers_wrongly_less_often() -> None:
    cases = [(index % 2 == 0, index % 2 == 0) for index in range(100)]
    items, right = requests_only(cases)
    answering = right[:90] + [ok(item.event, not item.request_harmful) for item in items[90:]]
    erring = [failed(item.event) for item in items[:80]] + right[80:]

    assert score(items, answering).f1 == 0.9
    assert score(items, erring).f1 < 0.4 and score(items, erring).error_rate == 0.8


def test_the_sweep_reads_the_answered_decisions_only() -> None:
    items, verdicts = requests_only([(True, True), (False, False), (True, True)])
    verdicts = [v.model_copy(update={"request_score": 0.9 if v.request_harmful else 0.1}) for v in verdicts]
    verdicts[2] = failed(items[2].event)

    evaluation = score(items, verdicts)

    assert evaluation.sweeps[Task.REQUEST].best_f1 == 1.0 and evaluation.f1 == 0.6667


def test_mistakes_list_each_wrong_decision_with_its_text_cut_short() -> None:
    long = chat("long", "x" * 1000, response="y" * 1000)
    right = chat("right")
    items = [LabelledEvent(long, False, True), LabelledEvent(right, True)]
    verdicts = [ok(long, True, False, request_score=0.9, reasoning="z" * 2000), ok(right, True)]

    mistakes = score(items, verdicts).mistakes

    assert [(m.event_id, m.task, m.kind) for m in mistakes] == [
        ("long", Task.REQUEST, "false_positive"), ("long", Task.RESPONSE, "false_negative")]
    first = mistakes[0]
    assert (first.truth, first.predicted, first.score, first.modality) == (False, True, 0.9, Modality.TEXT)
    assert len(first.text) == 300 and len(first.response or "") == 300 and len(first.reasoning) == 500


def test_the_sweep_finds_the_threshold_that_separates_the_scores() -> None:
    evaluation = scored([True, True, False, False], [0.62, 0.9, 0.1, 0.58])

    sweep = evaluation.sweeps[Task.REQUEST]

    assert [p.threshold for p in sweep.points] == [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55,
                                                   0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    assert list(THRESHOLDS) == [p.threshold for p in sweep.points]
    assert (sweep.best_threshold, sweep.best_f1, sweep.auc) == (0.6, 1.0, 1.0)
    at = {p.threshold: p for p in sweep.points}
    assert (at[0.5].precision, at[0.5].recall) == (0.6667, 1.0)
    assert (at[0.95].recall, at[0.95].f1) == (0.0, 0.0)
    assert evaluation.metrics()["request_best_threshold"] == 0.6


def test_ties_in_the_sweep_go_to_the_threshold_nearest_one_half() -> None:
    sweep = scored([True, False], [0.9, 0.1]).sweeps[Task.REQUEST]
    assert (sweep.best_threshold, sweep.best_f1) == (0.5, 1.0)


def test_the_auc_is_none_when_only_one_class_is_labelled() -> None:
    sweep = scored([False, False, False], [0.2, 0.7, 0.4]).sweeps[Task.REQUEST]
    assert sweep.auc is None
    assert "request_auc" not in scored([False, False], [0.2, 0.7]).metrics()


def test_there_is_no_sweep_when_a_verdict_has_no_score() -> None:
    items, verdicts = requests_only([(True, True), (False, False)])
    verdicts[0] = verdicts[0].model_copy(update={"request_score": 0.8})
    assert score(items, verdicts).sweeps == {}


@pytest.mark.parametrize("cut", ["length", "order"])
def test_lists_that_are_not_parallel_are_refused(cut: str) -> None:
    items, verdicts = requests_only([(True, True), (False, False)])
    verdicts = verdicts[:1] if cut == "length" else verdicts[::-1]
    with pytest.raises(ValueError, match="verdict"):
        score(items, verdicts)


async def test_judging_moderates_in_batches_and_keeps_the_order() -> None:
    events = [chat(f"j{i}") for i in range(5)]

    class Moderator:
        def __init__(self) -> None:
            self.batches: list[int] = []

        async def moderate(self, batch: list[ChatEvent]) -> list[Verdict]:
            self.batches.append(len(batch))
            return [ok(e, True) for e in batch]

    moderator = Moderator()
    verdicts = await judge(moderator, events, batch_size=2)  # type: ignore[arg-type]
    assert moderator.batches == [2, 2, 1]
    assert [v.event_id for v in verdicts] == [e.event_id for e in events]


def test_escaping_keeps_text_inside_its_cell() -> None:
    assert escape("a|b") == "a\\|b"
    assert escape("<b>`x`</b>\nnext") == "&lt;b&gt;\\`x\\`&lt;/b&gt; next"
    hostile = escape("x\\|y")  # a backslash of its own must not unescape the pipe
    assert hostile == "x\\\\\\|y"
    assert table_cells(f"| {hostile} | z |") == [f" {hostile} ", " z "]


def attack_evaluation() -> Evaluation:
    hostile = chat("hostile", "<script>alert(1)</script> a | b `rm -rf`\n| injected | row |", response="<img src=x>")
    calm = chat("calm", "hello", image=True)
    items = [LabelledEvent(hostile, False, False), LabelledEvent(calm, True)]
    verdicts = [ok(hostile, True, False, request_score=0.7, response_score=0.1, reasoning="it said </td>|"),
                ok(calm, True, request_score=0.8)]
    return score(items, verdicts)


def test_the_report_escapes_event_text_and_writes_valid_plots(tmp_path: Path) -> None:
    evaluation = attack_evaluation()

    report = write_report(evaluation, tmp_path / "out", "Eval <of> guard")

    markdown = report.read_text(encoding="utf-8")
    assert report == tmp_path / "out" / "report.md"
    assert "<script>" not in markdown and "<img" not in markdown and "</td>" not in markdown
    assert "&lt;script&gt;alert(1)&lt;/script&gt; a \\| b \\`rm -rf\\` \\| injected \\| row \\|" in markdown
    assert "# Eval &lt;of&gt; guard" in markdown
    mistake_rows = [line for line in markdown.splitlines() if line.startswith("| hostile")]
    assert len(mistake_rows) == 1 and len(table_cells(mistake_rows[0])) == 10
    assert re.search(r"(?<!\\)`", mistake_rows[0]) is None
    for name in ("f1_by_task_modality.png", "threshold_sweep.png", "confusion.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == PNG_SIGNATURE
        assert f"]({name})" in markdown
    assert json.loads((tmp_path / "out" / "evaluation.json").read_text()) == evaluation.to_dict()
    assert "Best threshold **0.75**" in markdown and "ROC AUC 1.0000" in markdown
    assert "## Compared with" not in markdown


def test_the_report_has_no_sweep_plot_when_no_task_has_scores(tmp_path: Path) -> None:
    items, verdicts = requests_only([(True, True), (False, True)])
    (tmp_path / "threshold_sweep.png").write_bytes(PNG_SIGNATURE)  # left by an earlier run

    markdown = write_report(score(items, verdicts), tmp_path, "no scores").read_text()

    assert not (tmp_path / "threshold_sweep.png").exists()
    assert "threshold_sweep.png" not in markdown
    assert (tmp_path / "confusion.png").read_bytes()[:8] == PNG_SIGNATURE


def test_the_report_lists_at_most_fifty_mistakes_and_says_how_many_more(tmp_path: Path) -> None:
    items, verdicts = requests_only([(True, False)] * 53 + [(False, False)])
    markdown = write_report(score(items, verdicts), tmp_path, "many").read_text()
    assert "53 mistakes; the first 50 are shown, 3 more are in evaluation.json." in markdown
    assert sum(re.match(r"\| e\d+ \|", line) is not None for line in markdown.splitlines()) == 50


def test_a_baseline_adds_a_side_by_side_comparison(tmp_path: Path) -> None:
    items, worse = requests_only([(True, False), (True, True), (False, False)])
    better = [ok(item.event, bool(item.request_harmful)) for item in items]

    markdown = write_report(score(items, better), tmp_path, "candidate", baseline=score(items, worse),
                            baseline_name="serving|v1").read_text()

    assert "## Compared with serving\\|v1" in markdown
    rows = {table_cells(line)[0].strip(): table_cells(line) for line in markdown.splitlines() if line.startswith("| ")}
    header = [cell.strip() for cell in rows["scope"]]
    assert header[2:5] == ["F1 serving\\|v1", "F1 this", "difference"]
    overall = [cell.strip() for cell in rows["overall"]]
    assert overall[1:5] == ["3 / 3", "0.6667", "1.0000", "+0.3333"]
    assert [cell.strip() for cell in rows["request · text"]][4] == "+0.3333"
    assert "F1 of serving\\|v1: 0.6667 (difference +0.3333)" in markdown
    assert (tmp_path / "f1_by_task_modality.png").read_bytes()[:8] == PNG_SIGNATURE
