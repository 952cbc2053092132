"""Step 2: turn a record's bytes into a valid ChatEvent within the configured limits, or say why not."""

from __future__ import annotations

import json

from pydantic import ValidationError

from schemas.events import ChatEvent
from workers.errors import DecodeError, LimitError, SchemaError
from workers.settings import LimitSettings


def decode_event(value: bytes | None, limits: LimitSettings) -> ChatEvent:
    """Raise DecodeError or SchemaError (no event to answer: dead letter only)."""
    if value is None:
        raise DecodeError("record has no value (tombstone)")
    if len(value) > limits.max_record_bytes:
        raise LimitError(f"record is {len(value)} bytes, limit {limits.max_record_bytes}")
    try:
        data = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DecodeError(f"value is not UTF-8 JSON: {exc}") from exc
    try:
        event = ChatEvent.model_validate(data)
    except ValidationError as exc:
        errors = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'event'}: {e['msg']}" for e in exc.errors())
        raise SchemaError(f"not a valid ChatEvent: {errors}") from exc
    return event


def check_limits(event: ChatEvent, limits: LimitSettings) -> None:
    """Raise LimitError for a valid event over a limit (it is answered with an error verdict too)."""
    if len(event.text) > limits.max_text_chars:
        raise LimitError(f"text is {len(event.text)} characters, limit {limits.max_text_chars}")
    if event.response is not None and len(event.response) > limits.max_response_chars:
        raise LimitError(f"response is {len(event.response)} characters, limit {limits.max_response_chars}")
    if len(event.images) > limits.max_images:
        raise LimitError(f"event has {len(event.images)} images, limit {limits.max_images}")
