"""A figure with nothing to divide by is undefined, not zero: "n/a" in the report, null in the JSON, left out of a
release's metrics; counts stay integers. No guard, no network."""

from __future__ import annotations

import json
from pathlib import Path

from runtime.input_lines import BadLine
from schemas.events import ModelRelease
from tests.trainer.test_evaluate import chat, ok
from trainer.eval_report import render_markdown, write_report
from trainer.evaluate import Evaluation, score
from trainer.labelled import LabelledEvent


def without_harmful_requests(predicted_harmful_response: bool = True) -> Evaluation:
    """Requests all unharmful and judged so; responses with a harmful one among them."""
    events = [chat("a", response="fine"), chat("b", response="a threat"), chat("c")]
    items = [LabelledEvent(events[0], False, False), LabelledEvent(events[1], False, True),
             LabelledEvent(events[2], False)]
    verdicts = [ok(events[0], False, False), ok(events[1], False, predicted_harmful_response), ok(events[2], False)]
    return score(items, verdicts)


def test_a_group_without_harmful_items_has_undefined_figures_not_zero() -> None:
    evaluation = without_harmful_requests()
    request = evaluation.to_dict()["tasks"]["request"]["figures"]
    assert (request["precision"], request["recall"], request["f1"]) == (None, None, None)
    assert evaluation.to_dict()["tasks"]["response"]["figures"]["f1"] == 1.0
    figures = evaluation.figures()
    assert figures["request_f1"] is None and figures["response_f1"] == 1.0
    assert all(isinstance(figures[name], int) for name in ("n", "errors", "request_n", "request_text_n"))


def test_the_report_writes_n_a_and_the_json_null(tmp_path: Path) -> None:
    evaluation = without_harmful_requests()
    report = write_report(evaluation, tmp_path, "t").read_text()
    assert "| request | all | 3 | n/a | n/a | n/a |" in report and "F1 per task: request n/a, response 1.0000" in report
    assert "0.0000" not in report.split("## Confusion")[0]
    assert json.loads((tmp_path / "evaluation.json").read_text())["tasks"]["request"]["figures"]["f1"] is None


def test_a_comparison_with_an_undefined_side_has_no_difference() -> None:
    markdown = render_markdown(without_harmful_requests(), "t", set(), baseline=without_harmful_requests(False))
    [row] = [line for line in markdown.splitlines() if line.startswith("| request | 3 / 3 |")]
    assert row.count("n/a") == 9  # F1, precision and recall: both sides and the difference


def test_a_release_keeps_only_the_defined_figures() -> None:
    metrics = without_harmful_requests().metrics()
    assert "request_f1" not in metrics and metrics["response_f1"] == 1.0 and metrics["n"] == 5
    release = ModelRelease(name="m", version="v", backend="lite", artefact_uri="/x", metrics=metrics)
    assert release.metrics["response_f1"] == 1.0


def test_the_report_lists_the_lines_not_read(tmp_path: Path) -> None:
    unread = [BadLine(Path("f.jsonl"), 2, "request_label", "'maybe' is not a label"),
              BadLine(Path("f.jsonl"), 5, "", "not a JSON object")]
    report = write_report(without_harmful_requests(), tmp_path, "t", unread=unread).read_text()
    assert "| 2 | request\\_label | 'maybe' is not a label |" in report
    assert "| 5 | (the whole line) | not a JSON object |" in report
    saved = json.loads((tmp_path / "evaluation.json").read_text())["unread_lines"]
    assert saved == [{"line": 2, "field": "request_label", "problem": "'maybe' is not a label"},
                     {"line": 5, "field": None, "problem": "not a JSON object"}]
