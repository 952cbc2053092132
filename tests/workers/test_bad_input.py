"""Input that can never be moderated lands in the DLQ with its reason; the worker goes on."""

from __future__ import annotations

import base64

from schemas.events import DeadLetter, VerdictStatus
from tests.conftest import S3, running_worker, verdicts_for
from tests.factories import event, image_ref, png, sha256
from tests.kafka_io import read_topic
from topics.io import produce_events, produce_raw
from workers import errors
from workers.settings import WorkerSettings

ERRORS = {cls.code: cls for cls in vars(errors).values()
          if isinstance(cls, type) and issubclass(cls, errors.GuardstreamError)}


async def test_invalid_records_land_in_the_dlq_with_their_reason(settings: WorkerSettings, lite_guard, s3: S3) -> None:
    settings.limits.max_text_chars = 500
    settings.fetch.max_pixels = 10_000
    topic = f"{settings.kafka.topic_prefix}chat.events"
    big = png(200, 100)
    good_png = png(32, 32)
    raw = [
        (b"k1", b"{not json"),
        (b"k2", b'{"event_id": "x", "conversation_id": "c", "text": "hi", "colour": "red"}'),
        (b"k3", b'{"event_id": "y", "conversation_id": "c", "text": "hi", "schema_version": 99}'),
        (b"k4", b"\xff\xfe\x00"),
    ]
    failing = {
        "limit_exceeded": event("x" * 501),
        "image_not_allowed": event("see", images=[image_ref("ftp://127.0.0.1/a.png")]),
        "image_not_found": event("see", images=[image_ref(f"s3://{s3.bucket}/missing.png")]),
        "image_digest_mismatch": event("see", images=[image_ref(s3.put("dlq/ok.png", good_png), b"other bytes")]),
        "image_too_large": event("see", images=[image_ref(s3.put("dlq/big.png", big))]),
        "image_decode_failed": event("see", images=[image_ref(s3.put("dlq/junk.png", b"not an image"))]),
    }
    good = event("Tell me a fun fact about octopuses.")
    await produce_raw(settings.kafka.bootstrap_servers, topic, raw)
    await produce_events(settings.kafka.bootstrap_servers, topic, [*failing.values(), good])
    async with running_worker(settings, lite_guard):
        verdicts = await verdicts_for(settings, len(failing) + 1)
        letters = [DeadLetter.model_validate_json(r.value) for r in await read_topic(
            settings.kafka.bootstrap_servers, f"{settings.kafka.topic_prefix}moderation.dlq", len(raw) + len(failing))]
    by_id = {v.event_id: v for v in verdicts}
    assert by_id[good.event_id].status is VerdictStatus.OK
    for code, failed in failing.items():
        assert by_id[failed.event_id].status is VerdictStatus.ERROR
        assert by_id[failed.event_id].error.code == code
    for letter in letters:  # the detail goes to the DLQ; the verdict, seen downstream, has a fixed sentence
        if letter.event_id is None:
            continue
        verdict = by_id[letter.event_id]
        assert letter.message not in verdict.model_dump_json() and letter.message != verdict.error.message
        assert verdict.error.message == ERRORS[verdict.error.code].summary
        assert verdict.reasoning == f"not moderated: {verdict.error.message}"
    digest_letter = next(letter for letter in letters if letter.reason == "image_digest_mismatch")
    assert sha256(good_png)[:12] in digest_letter.message
    assert sha256(good_png)[:12] not in by_id[digest_letter.event_id].model_dump_json()
    reasons = sorted(letter.reason for letter in letters)
    assert reasons == sorted(["decode_failed", "schema_invalid", "schema_invalid", "decode_failed", *failing])
    undecodable = [letter for letter in letters if letter.event_id is None]
    assert sorted(base64.b64decode(letter.raw_value_b64) for letter in undecodable) == sorted(v for _, v in raw)
    assert all(letter.source.topic == topic and letter.source.offset >= 0 for letter in letters)
    assert len(verdicts) == len(failing) + 1  # undecodable records get no verdict: they have no event id
