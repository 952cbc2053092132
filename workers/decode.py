"""Step 2: turn a record's bytes into a valid ChatEvent within the configured limits, or say why not.

The bytes go straight to pydantic's JSON parser (jiter), which refuses what Python's `json` lets
through and the rest of the path cannot take: invalid UTF-8, lone surrogate escapes, nesting beyond
its recursion limit, numbers out of range. So every way a record can be malformed ends here, as a
typed InputError, and an event that decodes is safe to hash, serialise and log.
"""

from __future__ import annotations

from pydantic import ValidationError

from schemas.events import ChatEvent
from workers.errors import DecodeError, LimitError, SchemaError
from workers.settings import LimitSettings

SCHEMA_ERRORS_SHOWN = 5  # a record can carry thousands; the first few say what is wrong


def decode_event(value: bytes | None, limits: LimitSettings) -> ChatEvent:
    """Raise DecodeError, SchemaError or LimitError (no event to answer: dead letter only)."""
    if value is None:
        raise DecodeError("record has no value (tombstone)")
    if len(value) > limits.max_record_bytes:
        raise LimitError(f"record is {len(value)} bytes, limit {limits.max_record_bytes}")
    try:
        return ChatEvent.model_validate_json(value)
    except ValidationError as exc:
        raise _input_error(exc) from None  # the chained pydantic error would repeat every message


def _input_error(exc: ValidationError) -> DecodeError | SchemaError:
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    if errors[0]["type"] == "json_invalid":
        return DecodeError(f"value is not UTF-8 JSON: {errors[0]['msg']}")
    shown = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'event'}: {e['msg']}" for e in errors[:SCHEMA_ERRORS_SHOWN])
    more = len(errors) - SCHEMA_ERRORS_SHOWN
    return SchemaError(f"not a valid ChatEvent: {shown}" + (f"; and {more} more errors" if more > 0 else ""))


def check_limits(event: ChatEvent, limits: LimitSettings) -> None:
    """Raise LimitError for a valid event over a limit (it is answered with an error verdict too)."""
    if len(event.text) > limits.max_text_chars:
        raise LimitError(f"text is {len(event.text)} characters, limit {limits.max_text_chars}")
    if event.response is not None and len(event.response) > limits.max_response_chars:
        raise LimitError(f"response is {len(event.response)} characters, limit {limits.max_response_chars}")
    if len(event.images) > limits.max_images:
        raise LimitError(f"event has {len(event.images)} images, limit {limits.max_images}")
