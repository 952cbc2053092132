"""One hostile or unlucky record never stops a partition: it ends as its own reason-coded answer, the
worker keeps running, and the partition commits past it. Against the real broker, Redis and S3 server."""

from __future__ import annotations

import base64
import json

import aiohttp
import aiokafka.codec
import pytest
import redis
from aiokafka import AIOKafkaProducer

from schemas.events import SourceRef, Verdict, VerdictStatus
from tests.conftest import PARTITIONS, S3, dead_letters_for, running_worker, verdicts_covering
from tests.factories import BENIGN, event, image_ref, png, sha256
from tests.kafka_io import committed_offsets, read_topic
from tests.waiting import wait_until
from topics.io import produce_events, produce_raw
from workers.emit import dead_letter
from workers.errors import LimitError
from workers.settings import LimitSettings, OperatingPoint, WorkerSettings

HEAD = b'{"event_id":"%s","conversation_id":"c","text":'


def hostile(event_id: str, body: bytes) -> bytes:
    return HEAD % event_id.encode() + body + b"}"


async def commits_reach_the_end(settings: WorkerSettings) -> tuple[dict[int, int], dict[int, int]]:
    """The group's committed offsets and, read from the topic itself, one past each partition's last record."""
    topic = f"{settings.kafka.topic_prefix}chat.events"
    records = await read_topic(settings.kafka.bootstrap_servers, topic, 1, settle_s=0.5)
    ends = {p: 0 for p in range(PARTITIONS)}
    for record in records:
        ends[record.partition] = max(ends[record.partition], record.offset + 1)
    committed = await committed_offsets(settings.kafka.bootstrap_servers, settings.kafka.group_id, topic, PARTITIONS)
    return committed, ends


async def test_hostile_records_are_dead_lettered_and_the_partition_commits_past_them(
    settings: WorkerSettings, lite_guard
) -> None:
    settings.limits.max_record_bytes = 250_000
    settings.limits.max_dead_letter_raw_bytes = 1_000
    settings.limits.max_error_chars = 300
    topic = f"{settings.kafka.topic_prefix}chat.events"
    first, last = event(BENIGN[0]), event(BENIGN[1])
    poison = {  # all on one partition (one key), between two good events
        "decode_failed": [
            hostile("surrogate", b'"\\ud800 oops"'),  # valid JSON; a lone surrogate no UTF-8 encoder takes
            hostile("nested", b'"x","metadata":' + b"[" * 100_000 + b"]" * 100_000),  # RecursionError in json
            hostile("bigint", b'"x","schema_version":' + b"9" * 5_000),  # int() digit limit in json
        ],
        "schema_invalid": [hostile("many", b'"x","images":[' + b",".join([b"1"] * 9_000) + b"]")],
        "limit_exceeded": [hostile("big", json.dumps("y" * 300_000).encode())],
    }
    records = [first.model_dump_json().encode(), *[v for vs in poison.values() for v in vs],
               last.model_dump_json().encode()]
    await produce_raw(settings.kafka.bootstrap_servers, topic, [(b"one-key", v) for v in records])
    async with running_worker(settings, lite_guard) as worker:
        verdicts = await verdicts_covering(settings, {first.event_id, last.event_id}, settle_s=0.5)
        letters = await dead_letters_for(settings, 5, settle_s=0.5)
        await wait_until(lambda: worker.tracker.unanswered_count() == 0)
        await worker.commit()
        assert worker.ready and not worker.problems()
    assert {v.event_id: v.status for v in verdicts} == {first.event_id: VerdictStatus.OK, last.event_id: VerdictStatus.OK}
    assert sorted(letter.reason for letter in letters) == sorted(code for code, vs in poison.items() for _ in vs)
    for letter in letters:
        assert len(letter.message) <= 300 + len("… [cut: 000000 more characters]")
        assert letter.raw_value_bytes == len(records[letter.source.offset])  # a new topic: offsets count from 0
    big = next(letter for letter in letters if letter.reason == "limit_exceeded")
    assert big.raw_value_truncated and len(base64.b64decode(big.raw_value_b64)) == 1_000
    many = next(letter for letter in letters if letter.reason == "schema_invalid")
    assert "and 8995 more errors" in many.message
    committed, ends = await commits_reach_the_end(settings)
    assert committed == ends


async def test_a_dead_letter_over_the_producers_limit_is_made_smaller_and_delivered(
    settings: WorkerSettings, lite_guard
) -> None:
    settings.limits.max_record_bytes = 100_000
    settings.limits.max_dead_letter_raw_bytes = 10_000_000  # in base64, the raw value is over the 1 MiB request limit
    after = event(BENIGN[2])
    await produce_raw(settings.kafka.bootstrap_servers, f"{settings.kafka.topic_prefix}chat.events",
                      [(b"k", hostile("huge", json.dumps("z" * 900_000).encode())),
                       (b"k", after.model_dump_json().encode())])
    async with running_worker(settings, lite_guard) as worker:
        await verdicts_covering(settings, {after.event_id})
        [letter] = await dead_letters_for(settings, 1, settle_s=0.5)
        shrunk = worker.metrics.registry.get_sample_value(
            "guardstream_produce_retries_total", {"failure": "too_large", "error": "MessageSizeTooLargeError"})
    assert (letter.reason, letter.raw_value_b64, letter.raw_value_truncated) == ("limit_exceeded", "", True)
    assert letter.raw_value_bytes > 900_000 and shrunk == 1
    committed, ends = await commits_reach_the_end(settings)
    assert committed == ends


async def test_a_cache_entry_this_version_cannot_read_is_a_miss(settings: WorkerSettings, lite_guard) -> None:
    topic = f"{settings.kafka.topic_prefix}chat.events"
    original, repeat = event(BENIGN[3]), event(BENIGN[3])
    async with running_worker(settings, lite_guard) as worker:
        await produce_events(settings.kafka.bootstrap_servers, topic, [original])
        [verdict] = await verdicts_covering(settings, {original.event_id})
        key = worker.served.cache_key(verdict.content_key, OperatingPoint(verdict.operating_point))
        client = redis.Redis.from_url(settings.cache.redis_url.get_secret_value())
        entry = json.loads(client.get(key))
        client.set(key, json.dumps({**entry, "added_by_a_newer_version": 1}))  # as after a rollback
        await produce_events(settings.kafka.bootstrap_servers, topic, [repeat])
        verdicts = await verdicts_covering(settings, {original.event_id, repeat.event_id})
        unreadable = worker.metrics.registry.get_sample_value("guardstream_cache_unreadable_total")
    answer = next(v for v in verdicts if v.event_id == repeat.event_id)
    assert (answer.status, answer.cache_hit, unreadable) == (VerdictStatus.OK, False, 1)
    assert json.loads(client.get(key)) == entry  # judged again and rewritten in this version's format


@pytest.mark.parametrize("trusted", [False, True])
async def test_a_declared_digest_decides_nothing_unless_producers_are_trusted(
    settings: WorkerSettings, lite_guard, s3: S3, trusted: bool
) -> None:
    settings.fetch.trust_declared_digests = trusted
    benign, other = png(40, 40, (10, 200, 10)), png(40, 40, (250, 250, 250))
    benign_uri = s3.put(f"{settings.kafka.topic_prefix}a.png", benign)
    other_uri = s3.put(f"{settings.kafka.topic_prefix}b.png", other)
    known = event("look", images=[image_ref(benign_uri, benign)])
    forged = event("look", images=[image_ref(other_uri).model_copy(update={"sha256": sha256(benign)})])
    topic = f"{settings.kafka.topic_prefix}chat.events"
    async with running_worker(settings, lite_guard):
        await produce_events(settings.kafka.bootstrap_servers, topic, [known])
        await verdicts_covering(settings, {known.event_id})
        await produce_events(settings.kafka.bootstrap_servers, topic, [forged])
        verdicts = await verdicts_covering(settings, {known.event_id, forged.event_id})
    answer = next(v for v in verdicts if v.event_id == forged.event_id)
    if trusted:  # documented: a trusted producer's digest stands for the image
        assert answer.cache_hit
    else:  # the image is fetched, hashed, and found not to be what it claims
        assert (answer.status, answer.error.code, answer.cache_hit) == (VerdictStatus.ERROR, "image_digest_mismatch",
                                                                       False)


async def test_a_batch_the_consumer_cannot_read_turns_readiness_down_and_the_worker_recovers(
    settings: WorkerSettings, lite_guard, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.observability.health_enabled = True
    settings.observability.health_port = 0
    events = [event(f"{BENIGN[0]} ({i})") for i in range(5)]
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, compression_type="gzip")
    await producer.start()
    for e in events:
        await producer.send_and_wait(f"{settings.kafka.topic_prefix}chat.events", e.model_dump_json().encode())
    await producer.stop()
    monkeypatch.setattr(aiokafka.codec, "has_gzip", lambda: False)  # aiokafka's own check: as without the library
    async with running_worker(settings, lite_guard) as worker, aiohttp.ClientSession() as http:
        errors = lambda: worker.metrics.registry.get_sample_value(  # noqa: E731
            "guardstream_poll_errors_total", {"error": "UnsupportedCodecError"}) or 0
        await wait_until(lambda: errors() >= 2, timeout_s=60, what="two failed polls")
        async with http.get(f"http://127.0.0.1:{worker.health.port}/readyz") as response:
            assert response.status == 503
            assert "polling failed" in (await response.json())["problems"][0]
        monkeypatch.undo()
        verdicts = await verdicts_covering(settings, {e.event_id for e in events}, timeout_s=90)
        await wait_until(lambda: worker.ready, what="ready again")
        async with http.get(f"http://127.0.0.1:{worker.health.port}/readyz") as response:
            assert response.status == 200
    assert len(verdicts) == len(events)


def test_dead_letters_keep_the_source_coordinates_of_what_they_cut() -> None:
    letter = dead_letter(SourceRef(topic="t", partition=2, offset=7), b"x" * 100, LimitError("m" * 500),
                         None, LimitSettings(max_dead_letter_raw_bytes=10, max_error_chars=100))
    assert (letter.source.partition, letter.source.offset, letter.raw_value_bytes) == (2, 7, 100)
    assert letter.raw_value_truncated and base64.b64decode(letter.raw_value_b64) == b"x" * 10
    assert letter.message.startswith("m" * 100) and letter.message.endswith("[cut: 400 more characters]")


async def test_a_failing_verdict_hook_is_counted_and_neither_stalls_nor_answers_twice(
    settings: WorkerSettings, lite_guard
) -> None:
    events = [event(f"{BENIGN[0]} ({i})", conversation="one") for i in range(4)]
    seen: list[str] = []

    def hook(verdict: Verdict) -> None:  # an embedding application's callback, failing on one verdict
        seen.append(verdict.event_id)
        if verdict.event_id == events[1].event_id:
            raise RuntimeError("the hook failed")

    await produce_events(settings.kafka.bootstrap_servers, f"{settings.kafka.topic_prefix}chat.events", events)
    async with running_worker(settings, lite_guard, on_verdict=hook) as worker:
        await wait_until(lambda: len(seen) == len(events), what="every verdict handed to the hook")
        await wait_until(lambda: worker.tracker.unanswered_count() == 0)
        await worker.commit()
        failures = worker.metrics.registry.get_sample_value("guardstream_task_failures_total", {"task": "hook"})
        assert worker.ready and not worker.problems()  # the offset was answered before the hook ran
    assert failures == 1
    verdicts = await verdicts_covering(settings, {e.event_id for e in events}, settle_s=0.5)
    assert sorted(v.event_id for v in verdicts) == sorted(e.event_id for e in events)  # one each, all ok
    assert all(v.status is VerdictStatus.OK for v in verdicts)
    committed, ends = await commits_reach_the_end(settings)
    assert committed == ends


async def test_a_huge_record_key_never_makes_an_answer_too_large(settings: WorkerSettings, lite_guard) -> None:
    key = b"\xff" * 600_000  # decodes to three times its size; as a key of the answers, over the producer's limit
    good, bad = event(BENIGN[1]), b"not json"
    await produce_raw(settings.kafka.bootstrap_servers, f"{settings.kafka.topic_prefix}chat.events",
                      [(key, good.model_dump_json().encode()), (key, bad)])
    async with running_worker(settings, lite_guard):
        [verdict] = await verdicts_covering(settings, {good.event_id}, settle_s=0.5)
        [letter] = await dead_letters_for(settings, 1, settle_s=0.5)
        [record] = await read_topic(settings.kafka.bootstrap_servers, f"{settings.kafka.topic_prefix}chat.events"
                                    .replace("chat.events", "moderation.verdicts"), 1)
    assert verdict.status is VerdictStatus.OK and record.key == b"sha256:" + sha256(key).encode()
    assert letter.reason == "decode_failed" and len(letter.source.key) < 1_100 and "[cut:" in letter.source.key
    committed, ends = await commits_reach_the_end(settings)
    assert committed == ends
