"""Property: whatever bytes a record carries, it ends as exactly one answer and the worker survives.

Hypothesis feeds arbitrary bytes, arbitrary JSON (lone surrogates, deep nesting, huge numbers included)
and near-valid events (random ids, texts, images, versions) through one running worker on the real
broker. An answer is a verdict, a dead letter, or both (an error verdict comes with its dead letter);
never two of a kind, never none.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiokafka import AIOKafkaConsumer
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from hypothesis import strategies as st

from tests.conftest import running_worker
from tests.waiting import wait_until
from topics.io import produce_raw
from topics.registry import TopicNames
from workers.settings import WorkerSettings
from workers.worker import Worker

SURROGATE = st.characters(codec=None, categories=["Cs"])  # reach JSON as \\udxxx escapes
ANY_CHAR = st.characters(codec=None) | SURROGATE
TEXT = st.text(ANY_CHAR, max_size=60)
SOME_TEXT = st.text(ANY_CHAR, min_size=1, max_size=60)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(TEXT, inner, max_size=5),
    max_leaves=25,
)
IMAGE = st.fixed_dictionaries(
    {"uri": st.sampled_from(["s3://images/none.png", "https://example.invalid/x.png", "file:///etc/passwd",
                             "ftp://127.0.0.1/x", "https://[::1/x", "s3://images/a\x00b"]) | TEXT},
    optional={"sha256": st.sampled_from(["0" * 64, "zz"]) | TEXT, "media_type": TEXT},
)
NEAR_EVENT = st.fixed_dictionaries(  # mostly valid, so that what follows decoding is reached too
    {"event_id": SOME_TEXT, "conversation_id": SOME_TEXT, "text": SOME_TEXT | st.just("x" * 500)},
    optional={ "response": TEXT, "images": st.lists(IMAGE, max_size=6),
              "schema_version": st.integers(-2, 3), "tenant": TEXT, "metadata": st.dictionaries(TEXT, TEXT | JSON),
              "created_at": TEXT},
)


def as_json(value: object, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


RECORD = st.one_of(
    st.binary(max_size=3_000),
    st.builds(as_json, JSON, st.booleans()),
    st.builds(as_json, NEAR_EVENT, st.booleans()),
    st.builds(lambda depth: b"[" * depth + b"]" * depth, st.integers(1, 3_900)),  # Python's json recurses ~1000 deep
    st.builds(lambda digits: b'{"event_id":"e","conversation_id":"c","text":"t","x":' + b"7" * digits + b"}",
              st.integers(1, 7_000)),  # int() refuses more than 4300 digits
)


class Answers:
    """Every verdict and dead letter, by the Kafka key of the record it answers."""

    def __init__(self, servers: str, topics: TopicNames) -> None:
        self.verdicts: dict[bytes, int] = defaultdict(int)
        self.letters: dict[bytes, int] = defaultdict(int)
        self.seen = 0
        self.last_seen = time.monotonic()
        self._consumer = AIOKafkaConsumer(topics.verdicts, topics.dlq, bootstrap_servers=servers, group_id=None,
                                          auto_offset_reset="earliest")
        self._dlq = topics.dlq

    async def collect(self) -> None:
        await self._consumer.start()
        try:
            while True:
                for batch in (await self._consumer.getmany(timeout_ms=100)).values():
                    for record in batch:
                        (self.letters if record.topic == self._dlq else self.verdicts)[record.key] += 1
                        self.seen += 1
                        self.last_seen = time.monotonic()
        finally:
            await self._consumer.stop()

    def answered(self, key: bytes) -> bool:
        return self.verdicts[key] > 0 or self.letters[key] > 0

    def quiet_for(self, seconds: float) -> bool:
        return time.monotonic() - self.last_seen >= seconds


@dataclass
class Running:
    worker: Worker
    answers: Answers
    topics: TopicNames


@pytest.fixture
async def running(settings: WorkerSettings, lite_guard) -> AsyncIterator[Running]:
    """One worker for every example: surviving all of them is part of the property."""
    settings.limits.max_record_bytes = 8_000
    settings.limits.max_text_chars = 300
    settings.fetch.max_attempts = 1
    topics = TopicNames(settings.kafka.topic_prefix)
    answers = Answers(settings.kafka.bootstrap_servers, topics)
    collecting = asyncio.create_task(answers.collect())
    async with running_worker(settings, lite_guard) as worker:
        yield Running(worker, answers, topics)
    collecting.cancel()
    await asyncio.gather(collecting, return_exceptions=True)


@pytest.mark.slow
@examples(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(values=st.lists(RECORD, min_size=1, max_size=12))
async def test_any_record_ends_as_exactly_one_answer_and_the_worker_survives(
    running: Running, values: list[bytes]
) -> None:
    worker, answers = running.worker, running.answers
    keys = [uuid.uuid4().hex.encode() for _ in values]
    await produce_raw(worker.settings.kafka.bootstrap_servers, running.topics.events,
                      list(zip(keys, values, strict=True)))
    await wait_until(lambda: all(answers.answered(k) for k in keys), timeout_s=60, what="every record answered")
    await wait_until(lambda: worker.tracker.unanswered_count() == 0 and answers.quiet_for(0.3), timeout_s=30)
    for key, value in zip(keys, values, strict=True):
        assert answers.verdicts[key] <= 1 and answers.letters[key] <= 1, value[:200]
    assert worker.ready, worker.problems()
