from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

import schemas
from schemas.events import (
    MAX_LABEL_CLOCK_SKEW,
    SCHEMA_VERSION,
    AuditLabel,
    ChatEvent,
    DeadLetter,
    ErrorInfo,
    ModelRef,
    ModelRelease,
    SourceRef,
    StageVerdict,
    Verdict,
    VerdictStatus,
    WireModel,
)
from schemas.export import EXPORTED, export_schemas


def test_every_wire_model_is_exported_and_has_a_json_schema() -> None:
    wire_models = {m.__name__ for m in WireModel.__subclasses__()}
    assert wire_models <= set(schemas.__all__)
    assert wire_models == {m.__name__ for m in EXPORTED}


def test_export_writes_a_valid_json_schema_per_model(tmp_path: Path) -> None:
    written = export_schemas(tmp_path)
    assert sorted(p.name for p in written) == sorted(f"{m.__name__}.schema.json" for m in EXPORTED)
    chat = json.loads((tmp_path / "ChatEvent.schema.json").read_text())
    assert {"event_id", "conversation_id", "images", "response", "schema_version"} <= set(chat["properties"])
    assert chat["properties"]["schema_version"]["maximum"] == SCHEMA_VERSION


def test_an_event_needs_content_and_rejects_unknown_fields() -> None:
    with pytest.raises(ValidationError, match="text or at least one image"):
        ChatEvent(event_id="e", conversation_id="c", text=" ")
    with pytest.raises(ValidationError):
        ChatEvent.model_validate({"event_id": "e", "conversation_id": "c", "text": "x", "colour": "red"})


def test_a_newer_schema_version_is_refused() -> None:
    with pytest.raises(ValidationError):
        ChatEvent(event_id="e", conversation_id="c", text="x", schema_version=SCHEMA_VERSION + 1)


def test_verdict_status_and_error_agree() -> None:
    common = dict(event_id="e", conversation_id="c", tenant="t", model=ModelRef(name="m", version="1"),
                  policy_version="p")
    with pytest.raises(ValidationError):
        Verdict(status=VerdictStatus.OK, **common)  # an ok verdict must say whether the request was harmful
    with pytest.raises(ValidationError):
        Verdict(status=VerdictStatus.ERROR, **common)
    error = Verdict(status=VerdictStatus.ERROR, error=ErrorInfo(code="x", message="m"), **common)
    assert Verdict.model_validate_json(error.model_dump_json()) == error


def test_a_verdict_keeps_its_stages_through_json() -> None:
    stages = [StageVerdict(name="lite", request_harmful=False, request_score=0.42),
              StageVerdict(name="transformers", request_harmful=True, response_harmful=False)]
    verdict = Verdict(event_id="e", conversation_id="c", tenant="t", model=ModelRef(name="m", version="1"),
                      policy_version="p", status=VerdictStatus.OK, request_harmful=True, decided_by="transformers",
                      stages=stages)
    back = Verdict.model_validate_json(verdict.model_dump_json())
    assert back == verdict and back.stages == stages
    single = Verdict(event_id="e", conversation_id="c", tenant="t", model=ModelRef(name="m", version="1"),
                     policy_version="p", status=VerdictStatus.OK, request_harmful=False)
    assert single.stages == []
    with pytest.raises(ValidationError):  # a stage is as strict as every wire record
        StageVerdict.model_validate({"name": "lite", "request_harmful": True, "colour": "red"})


def _label(**fields: object) -> AuditLabel:
    return AuditLabel.model_validate({"event_id": "e", "request_harmful": True, "labeller": "r", **fields})


def test_a_naive_label_time_is_read_as_utc_and_compares_with_an_aware_one() -> None:
    naive = _label(labelled_at="2026-05-01T12:00:00")
    aware = _label(labelled_at="2026-05-01T12:00:01+00:00")
    assert naive.labelled_at == datetime(2026, 5, 1, 12, tzinfo=UTC)
    assert naive.labelled_at < aware.labelled_at  # the trainer's latest-wins check, which raised TypeError


def test_an_offset_time_is_normalised_to_utc_in_every_wire_model() -> None:
    at = "2026-05-01T14:00:00+02:00"
    models = [
        ChatEvent.model_validate({"event_id": "e", "conversation_id": "c", "text": "x", "created_at": at}).created_at,
        Verdict.model_validate({**_VERDICT, "produced_at": at}).produced_at,
        DeadLetter.model_validate({"source": _SOURCE, "raw_value_b64": "", "reason": "r", "message": "m",
                                   "failed_at": at}).failed_at,
        _label(labelled_at=at).labelled_at,
        ModelRelease.model_validate({"name": "m", "version": "1", "backend": "lite", "artefact_uri": "s3://b/k",
                                     "released_at": at}).released_at,
    ]
    assert all(t.tzinfo is UTC and t == datetime(2026, 5, 1, 12, tzinfo=UTC) for t in models)


@pytest.mark.parametrize("at", ["9999-12-31T23:59:59", "9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+01:00"])
def test_a_time_out_of_range_in_utc_is_a_validation_error(at: str) -> None:
    with pytest.raises(ValidationError):  # not OverflowError, which no consumer counts as undecodable
        _label(labelled_at=at)


def test_a_label_from_the_future_is_refused_within_a_small_skew() -> None:
    now = datetime.now(UTC)
    with pytest.raises(ValidationError, match="in the future"):
        _label(labelled_at=(now + MAX_LABEL_CLOCK_SKEW + timedelta(minutes=1)).isoformat())
    assert _label(labelled_at=(now + MAX_LABEL_CLOCK_SKEW / 2).isoformat())  # a fast clock within the skew is fine


@pytest.mark.parametrize("source", [
    {"partition": -1}, {"offset": -1}, {"partition": 2**31}, {"offset": 2**63},
    {"topic": ""}, {"topic": "."}, {"topic": ".."}, {"topic": "a b"}, {"topic": "a/b"}, {"topic": "é"},
    {"topic": "t" * 250},
])
def test_coordinates_a_broker_cannot_have_are_validation_errors(source: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        SourceRef.model_validate({**_SOURCE, **source})
    with pytest.raises(ValidationError):  # in a label too: it is what the trainer seeks to
        _label(verdict={**_SOURCE, **source})


@pytest.mark.parametrize("topic", ["chat.events", "a", "A-b_c.9", "t" * 249, "..."])
def test_kafka_legal_topic_names_are_accepted(topic: str) -> None:
    assert SourceRef.model_validate({**_SOURCE, "topic": topic}).topic == topic


def test_a_label_says_whether_it_came_from_the_random_sample_and_defaults_to_unknown() -> None:
    assert _label().random_sample is None
    for value in (True, False):
        label = _label(random_sample=value)
        assert AuditLabel.model_validate_json(label.model_dump_json()) == label
        assert label.random_sample is value
    assert "random_sample" in AuditLabel.model_json_schema()["properties"]


_SOURCE = {"topic": "chat.events", "partition": 0, "offset": 0}
_VERDICT = {"event_id": "e", "conversation_id": "c", "tenant": "t", "status": "ok", "request_harmful": False,
            "model": {"name": "m", "version": "1"}, "policy_version": "p"}
