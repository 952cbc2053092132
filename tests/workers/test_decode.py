import pytest

from tests.factories import event
from workers.decode import check_limits, decode_event
from workers.errors import DecodeError, LimitError, SchemaError
from workers.settings import LimitSettings

LIMITS = LimitSettings(max_record_bytes=2_000, max_text_chars=100, max_response_chars=50, max_images=1)


def test_a_valid_event_decodes() -> None:
    original = event("hello", response="hi")
    assert decode_event(original.model_dump_json().encode(), LIMITS) == original


@pytest.mark.parametrize(
    ("value", "error", "code"),
    [
        (None, DecodeError, "decode_failed"),
        (b"\xff\xfe", DecodeError, "decode_failed"),
        (b"[1, 2", DecodeError, "decode_failed"),
        (b"[]", SchemaError, "schema_invalid"),
        (b'{"event_id": "e", "conversation_id": "c"}', SchemaError, "schema_invalid"),
        (b'{"event_id": "e", "conversation_id": "c", "text": "x", "schema_version": 2}', SchemaError, "schema_invalid"),
        (b'{"event_id": "e", "conversation_id": "c", "text": "x", "extra": 1}', SchemaError, "schema_invalid"),
        (b"x" * 2_001, LimitError, "limit_exceeded"),
    ],
)
def test_undecodable_records_raise_typed_errors(value: bytes | None, error: type, code: str) -> None:
    with pytest.raises(error) as caught:
        decode_event(value, LIMITS)
    assert caught.value.code == code and str(caught.value)


def test_schema_errors_name_the_field() -> None:
    with pytest.raises(SchemaError, match="images.0.sha256"):
        decode_event(b'{"event_id": "e", "conversation_id": "c", "images": [{"uri": "s3://b/k", "sha256": "zz"}]}',
                     LIMITS)


@pytest.mark.parametrize(
    ("overrides", "what"),
    [({"text": "x" * 101}, "text"), ({"text": "x", "response": "y" * 51}, "response")],
)
def test_limits_are_enforced(overrides: dict[str, str], what: str) -> None:
    with pytest.raises(LimitError, match=what):
        check_limits(event(**overrides), LIMITS)
