"""`guardstream audit FILE` judges a JSONL offline (no broker) and `guardstream eval` scores a backend on
labelled data; both write the report when there are labels. A line that gets no answer (here, an image
outside the file's folder) makes the audit partial (exit 6); the one-line failures are in
tests/test_batch_commands.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from guardstream.cli import app
from runtime.cli_errors import Exit, describe
from schemas.events import Verdict
from tests.factories import BENIGN, HARMFUL, png
from trainer.labelled import BadLabelledFile, labelled_from_jsonl


@pytest.fixture
def audit_file(tmp_path: Path) -> Path:
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "red.png").write_bytes(png())
    lines = [{"id": f"b{i}", "prompt": t, "request_label": "unharmful"} for i, t in enumerate(BENIGN)]
    lines += [{"id": f"h{i}", "prompt": t, "prompt_label": "harmful"} for i, t in enumerate(HARMFUL)]
    lines.append({"id": "img", "prompt": "What is this?", "image": "pics/red.png", "request_label": "unharmful"})
    lines.append({"id": "resp", "prompt": "How do I pick a lock?", "response": "I can't help with breaking in.",
                  "request_label": "harmful", "response_label": "unharmful"})
    lines.append({"id": "outside", "prompt": "look", "image": "/etc/hostname"})  # outside the file's folder
    lines.append({"id": "nolabel", "prompt": "Hello there"})
    path = tmp_path / "audit.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def test_audit_writes_a_verdict_per_line_in_order_and_a_report_for_the_labelled_ones(audit_file: Path) -> None:
    result = CliRunner().invoke(app, ["audit", str(audit_file)])
    assert result.exception is not None and describe(result.exception)[0] == Exit.PARTIAL, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    verdicts = [Verdict.model_validate_json(line) for line in Path(summary["verdicts"]).read_text().splitlines()]
    assert [v.event_id for v in verdicts][-4:] == ["img", "resp", "outside", "nolabel"]
    assert len(verdicts) == len(BENIGN) + len(HARMFUL) + 4 == summary["items"]
    by_id = {v.event_id: v for v in verdicts}
    assert by_id["outside"].error is not None and by_id["outside"].error.code == "image_not_allowed"
    assert "/etc/hostname" in by_id["outside"].error.message
    assert by_id["img"].error is None and by_id["resp"].response_harmful is not None
    assert summary["labelled"] == len(BENIGN) + len(HARMFUL) + 2 and summary["errors"] == 1
    report = Path(summary["report"]).read_text()
    assert "response" in report and "text+image" in report


def test_eval_scores_a_backend_on_a_reference_layout_file(audit_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", "--data", str(audit_file), "--out", str(out)])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert 0 <= figures["f1"] <= 1 and figures["n"] >= len(BENIGN) + len(HARMFUL)
    assert (out / "report.md").exists() and (out / "f1_by_task_modality.png").exists()


def test_a_line_that_is_not_an_item_is_an_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok", "request_label": "harmful"}\n{"prompt": 5}\n')
    with pytest.raises(BadLabelledFile, match="bad.jsonl:2: prompt: Input should be a valid string"):
        labelled_from_jsonl(path)


@pytest.mark.parametrize("label", ["maybe", 3, 0.5])
def test_a_label_that_is_not_one_names_its_field_and_the_words_labels_are(tmp_path: Path, label: object) -> None:
    path = tmp_path / "labels.jsonl"
    path.write_text(json.dumps({"prompt": "hi", "prompt_label": label}) + "\n")
    with pytest.raises(BadLabelledFile, match="labels.jsonl:1: prompt_label: .* is not a label: labels are harmful "
                       "or unharmful"):
        labelled_from_jsonl(path)


@pytest.mark.parametrize(("label", "harmful"), [("harmful", True), ("Unharmful", False), (True, True), (0, False),
                                                ("unsafe", True), (None, None)])
def test_the_documented_label_words_are_read(tmp_path: Path, label: object, harmful: bool | None) -> None:
    path = tmp_path / "labels.jsonl"
    path.write_text(json.dumps({"prompt": "hi", "request_label": label, "response_label": "harmful"}) + "\n")
    [item] = labelled_from_jsonl(path)
    assert item.request_harmful is harmful
