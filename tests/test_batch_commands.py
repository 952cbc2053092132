"""The batch commands keep going past bad lines and fail in one line: `audit`, `eval` and `produce` do every good
line, name each bad one (line and field) and exit 6; `--strict` stops at the first (exit 3); a missing file, a
backend without its model, a missing topic or a release that is not there each end in one line on stderr.

Each runs the real console script, as a user would, against the test fixtures' broker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from schemas.events import ModelRelease, Verdict
from tests.conftest import P5
from tests.factories import BENIGN, HARMFUL, event, png
from tests.kafka_io import read_until
from topics.io import produce_raw
from topics.local_broker import LocalBroker
from topics.registry import TopicNames
from workers.settings import GuardSettings

GUARDSTREAM = Path(sys.executable).parent / "guardstream"


def guardstream(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The console script run as a user runs it, with only the settings given here."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("GUARDSTREAM_")}
    return subprocess.run([str(GUARDSTREAM), *args], capture_output=True, text=True, cwd=cwd, timeout=240,
                          env={**clean, **(env or {})}, check=False)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The failure's single line on stderr (asserted to be the only one)."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("guardstream: "), result.stderr
    return lines[0]


def kafka_env(broker: LocalBroker, topics: TopicNames) -> dict[str, str]:
    return {"GUARDSTREAM_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "GUARDSTREAM_KAFKA__TOPIC_PREFIX": topics.prefix}


def write_jsonl(path: Path, lines: list[dict[str, object] | str]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


@pytest.fixture
def vlm_file(tmp_path: Path) -> Path:
    """A reference-layout file with good lines among a bad label, a truncated line, a missing image and an
    image outside the file's folder."""
    (tmp_path / "red.png").write_bytes(png())
    return write_jsonl(tmp_path / "vlm.jsonl", [
        {"id": "good-1", "prompt": BENIGN[0], "request_label": "unharmful"},
        {"id": "maybe", "prompt": BENIGN[1], "request_label": "maybe"},
        '{"id": "cut", "prompt": "no end"',
        {"id": "harm", "prompt": HARMFUL[0], "request_label": "harmful"},
        {"id": "missing", "prompt": "What is this?", "image": "pics/missing.png"},
        {"id": "outside", "prompt": "look", "image": "/etc/hostname"},
        {"id": "good-2", "prompt": "What is this?", "image": "red.png", "request_label": "unharmful"},
    ])


def test_audit_judges_every_good_line_and_gives_each_bad_one_an_error_verdict_in_order(vlm_file: Path) -> None:
    result = guardstream("audit", str(vlm_file), cwd=vlm_file.parent)
    assert result.returncode == 6, result.stderr
    line = one_line(result)
    assert "vlm.jsonl:2: request_label" in line and "error verdict" in line
    summary = json.loads(result.stdout.splitlines()[-1])
    verdicts = [Verdict.model_validate_json(v) for v in Path(vlm_file.parent / summary["verdicts"]).read_text()
                .splitlines()]
    assert [v.event_id for v in verdicts] == ["good-1", "maybe", "line-3", "harm", "missing", "outside", "good-2"]
    by_id = {v.event_id: v for v in verdicts}
    assert {v.event_id for v in verdicts if v.error is None} == {"good-1", "harm", "good-2"}
    maybe = by_id["maybe"].error
    assert maybe is not None and "vlm.jsonl:2: request_label" in maybe.message
    assert "harmful or unharmful" in maybe.message
    assert "vlm.jsonl:3" in by_id["line-3"].error.message  # type: ignore[union-attr]
    assert [(bad["line"], bad["field"]) for bad in summary["unread_lines"]] == [(2, "request_label"), (3, None)]


def test_offline_image_errors_say_which_image_and_how_to_allow_it(vlm_file: Path) -> None:
    result = guardstream("audit", str(vlm_file), "--out", "v.jsonl", cwd=vlm_file.parent)
    assert result.returncode == 6, result.stderr
    by_id = {v.event_id: v for v in map(Verdict.model_validate_json,
                                         (vlm_file.parent / "v.jsonl").read_text().splitlines())}
    missing, outside = by_id["missing"].error, by_id["outside"].error
    assert missing is not None and missing.code == "image_not_found"
    assert str(vlm_file.parent / "pics" / "missing.png") in missing.message
    assert outside is not None and outside.code == "image_not_allowed"
    assert "/etc/hostname" in outside.message and "GUARDSTREAM_FETCH__FILE_ROOT" in outside.message


def test_an_image_error_never_shows_a_password(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "secret.jsonl",
                         [{"id": "s", "prompt": "look", "image": "https://user:hunter2@images.example/x.png"}])
    result = guardstream("audit", str(source), cwd=tmp_path)
    assert result.returncode == 6, result.stderr
    [verdict] = map(Verdict.model_validate_json, (tmp_path / "secret.verdicts.jsonl").read_text().splitlines())
    assert verdict.error is not None and verdict.error.code == "image_not_allowed"
    assert "images.example" in verdict.error.message and "hunter2" not in verdict.error.message
    assert "hunter2" not in result.stdout + result.stderr


def test_audit_strict_stops_at_the_first_bad_line_naming_file_line_and_field(vlm_file: Path) -> None:
    result = guardstream("audit", "--strict", str(vlm_file), cwd=vlm_file.parent)
    assert result.returncode == 3
    line = one_line(result)
    assert f"{vlm_file}:2: request_label: 'maybe' is not a label" in line and "harmful or unharmful" in line
    assert not (vlm_file.parent / "vlm.verdicts.jsonl").exists() and result.stdout == ""


def test_eval_scores_the_good_lines_and_lists_each_bad_one_in_the_report(vlm_file: Path) -> None:
    out = vlm_file.parent / "report"
    result = guardstream("eval", "--data", str(vlm_file), "--out", str(out), cwd=vlm_file.parent)
    assert result.returncode == 6, result.stderr
    assert "vlm.jsonl:2: request_label" in one_line(result)
    figures = json.loads(result.stdout.splitlines()[-1])
    assert figures["n"] == 3 and isinstance(figures["n"], int) and figures["unread_lines"] == 2
    saved = json.loads((out / "evaluation.json").read_text())
    assert [(bad["line"], bad["field"]) for bad in saved["unread_lines"]] == [(2, "request_label"), (3, None)]
    report = (out / "report.md").read_text()
    assert "## Lines not read" in report and "| 2 | request\\_label |" in report


def test_eval_strict_stops_at_the_first_bad_line(vlm_file: Path) -> None:
    result = guardstream("eval", "--strict", "--data", str(vlm_file), "--out", "r", cwd=vlm_file.parent)
    assert result.returncode == 3
    assert f"{vlm_file}:2: request_label" in one_line(result)


@pytest.mark.parametrize("command", [["eval", "--data"], ["audit"]])
def test_a_missing_file_is_one_line(tmp_path: Path, command: list[str]) -> None:
    result = guardstream(*command, "missing.jsonl", cwd=tmp_path)
    assert result.returncode == 3
    assert one_line(result) == "guardstream: missing.jsonl: no such file or folder"


def test_eval_of_a_file_without_labels_says_what_labels_are(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": "hello"}, {"prompt": "hi", "request_label": "maybe"}])
    result = guardstream("eval", "--data", str(source), cwd=tmp_path)
    assert result.returncode == 3
    line = one_line(result)
    assert f"no labelled items in {source} (unreadable lines: 1, first {source}:2: request_label" in line
    assert line.endswith("label lines with request_label or response_label (harmful or unharmful; true/false also "
                         "work)")


def test_audit_with_the_transformers_backend_and_no_model_says_which_setting_to_set(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "one.jsonl", [{"prompt": "hello"}])
    result = guardstream("audit", "--backend", "transformers", str(source), cwd=tmp_path)
    assert result.returncode == 4
    assert "GUARDSTREAM_GUARD__MODEL_PATH" in one_line(result)


def test_undefined_figures_are_null_and_counts_integers(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "benign.jsonl",
                         [{"prompt": text, "request_label": "unharmful"} for text in BENIGN[:3]])
    result = guardstream("eval", "--data", str(source), "--out", "r", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.splitlines()[-1])
    assert (figures["f1"], figures["precision"], figures["recall"]) == (None, None, None)
    assert figures["n"] == 3 and isinstance(figures["n"], int) and isinstance(figures["errors"], int)
    report = (tmp_path / "r" / "report.md").read_text()
    assert "**F1 n/a**" in report and "| request | all | 3 | n/a | n/a | n/a |" in report
    assert json.loads((tmp_path / "r" / "evaluation.json").read_text())["overall"]["f1"] is None


async def test_produce_publishes_the_good_lines_and_names_the_field_of_each_bad_one(
        broker: LocalBroker, topics: TopicNames, tmp_path: Path) -> None:
    first, last = event("first", conversation="one"), event("last", conversation="one")
    unknown = {**json.loads(event("typo", conversation="one").model_dump_json()), "colour": "red"}
    source = write_jsonl(tmp_path / "events.jsonl",
                         [first.model_dump_json(), unknown, '{"event_id": "x"', last.model_dump_json()])
    env = kafka_env(broker, topics)

    strict = await asyncio.to_thread(guardstream, "produce", "--strict", str(source), cwd=tmp_path, env=env)
    assert strict.returncode == 3
    assert f"{source}:2: colour: not a known field" in one_line(strict)

    result = await asyncio.to_thread(guardstream, "produce", str(source), cwd=tmp_path, env=env)
    assert result.returncode == 6, result.stderr
    assert "2 of 4 lines" in one_line(result)
    assert f"not published: {source}:2: colour: not a known field (Extra inputs are not permitted)" in result.stdout
    assert f"not published: {source}:3: not a JSON object" in result.stdout
    assert f"published 2 events to {topics.events}" in result.stdout
    # one conversation, one partition: whatever the strict run had sent would come before these
    wanted = {first.event_id, last.event_id}
    records = await read_until(broker.bootstrap_servers, topics.events,
                               lambda rs: wanted <= {json.loads(r.value)["event_id"] for r in rs})
    assert [json.loads(r.value)["event_id"] for r in records] == [first.event_id, last.event_id]


def test_produce_of_a_file_without_a_good_line_is_refused_in_one_line(broker: LocalBroker, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "bad.jsonl", [{"event_id": "x", "conversation_id": "c", "text": "hi", "extra": 1}])
    result = guardstream("produce", str(source), cwd=tmp_path,
                         env={"GUARDSTREAM_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers})
    assert result.returncode == 3
    assert f"{source}:1: extra: not a known field" in one_line(result)


def test_tail_of_a_topic_that_does_not_exist_says_so(broker: LocalBroker, topics: TopicNames, tmp_path: Path) -> None:
    result = guardstream("tail", f"{topics.prefix}no-such-topic", cwd=tmp_path, env=kafka_env(broker, topics))
    assert result.returncode == 3
    assert f"topic {topics.prefix}no-such-topic does not exist" in one_line(result)


async def test_eval_release_latest_scores_the_model_the_trainer_released_last(
        broker: LocalBroker, topics: TopicNames, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "labelled.jsonl",
                         [{"prompt": BENIGN[0], "request_label": "unharmful"},
                          {"prompt": HARMFUL[0], "request_label": "harmful"}])
    env = kafka_env(broker, topics)
    none_yet = await asyncio.to_thread(guardstream, "eval", "--release", "latest", "--data", str(source),
                                       cwd=tmp_path, env=env)
    assert none_yet.returncode == 3
    assert f"no release of {GuardSettings().model_name} on {topics.models}" in one_line(none_yet)

    name = GuardSettings().model_name.encode()
    releases = [ModelRelease(name=GuardSettings().model_name, version=version, backend="lite", artefact_uri=str(P5))
                for version in ("p5-older", "p5-latest")]
    await produce_raw(broker.bootstrap_servers, topics.models, [(name, r.model_dump_json().encode()) for r in releases])
    result = await asyncio.to_thread(guardstream, "eval", "--release", "latest", "--data", str(source), "--out",
                                     "r", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["model"] == {"backend": "lite", "version": "p5-latest"}
    assert (tmp_path / "r" / "report.md").read_text().startswith("# lite p5-latest on labelled.jsonl")
