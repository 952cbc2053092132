from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

import schemas
from schemas.events import (
    SCHEMA_VERSION,
    ChatEvent,
    ErrorInfo,
    ModelRef,
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
