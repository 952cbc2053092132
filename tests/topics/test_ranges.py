"""Replay ranges: the spec, the bounds the broker resolves them to, the position file, the rate limit."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

from topics.local_broker import LocalBroker
from topics.ranges import (
    BadReplayRange,
    RangeSpec,
    RateLimit,
    ReplayPosition,
    open_position,
    parse_offsets,
    replay_range,
    resolve_bounds,
)
from topics.registry import TopicNames


@pytest.mark.parametrize(("spec", "parsed"), [
    ("0:100-200", {0: (100, 200)}),
    ("0:100-200, 1:0-,2:-500", {0: (100, 200), 1: (0, None), 2: (None, 500)}),
    ("3:-", {3: (None, None)}),
])
def test_offset_specs_parse(spec: str, parsed: dict[int, tuple[int | None, int | None]]) -> None:
    assert parse_offsets(spec) == parsed


@pytest.mark.parametrize(("spec", "says"), [
    ("0:10", "PARTITION:START-END"), ("x:1-2", "PARTITION:START-END"), ("0:5-2", "ends before it starts"),
    ("0:1-2,0:3-4", "named twice"), ("", "PARTITION:START-END"),
])
def test_a_bad_spec_names_the_bad_part(spec: str, says: str) -> None:
    with pytest.raises(BadReplayRange, match=says):
        parse_offsets(spec)


async def test_the_rate_limit_waits_just_enough() -> None:
    now, waits = [0.0], []

    async def sleep(seconds: float) -> None:
        waits.append(round(seconds, 6))
        now[0] += seconds

    limit = RateLimit(10.0, clock=lambda: now[0], sleep=sleep)
    await limit.acquire(10)  # the first second's budget
    await limit.acquire(5)
    await limit.acquire(5)
    assert waits == [0.5, 0.5]
    now[0] += 10.0  # idle: the bucket refills, but only one second deep
    await limit.acquire(10)
    await limit.acquire(1)
    assert waits == [0.5, 0.5, 0.1]
    unlimited = RateLimit(None, clock=lambda: now[0], sleep=sleep)
    await unlimited.acquire(10_000)
    assert len(waits) == 3


def test_a_position_file_for_another_topic_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "position.json"
    ReplayPosition.start("a", {0: (0, 10)}, path).save()
    assert ReplayPosition.load(path, "a").next == {0: 0}
    assert json.loads(path.read_text())["bounds"] == {"0": [0, 10]}
    with pytest.raises(BadReplayRange, match="not 'b'"):
        ReplayPosition.load(path, "b")


async def test_time_bounds_select_the_records_stamped_inside_them(broker: LocalBroker, topics: TopicNames) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    await producer.start()
    base = int(datetime(2026, 5, 1, tzinfo=UTC).timestamp() * 1000)
    for i in range(6):  # one record a minute on partition 0
        await producer.send_and_wait(topics.events, b"x", partition=0, timestamp_ms=base + i * 60_000)
    await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap_servers, group_id=None)
    await consumer.start()
    seen: list[int] = []

    async def handle(records: list[ConsumerRecord[bytes, bytes]]) -> None:
        seen.extend(r.offset for r in records if r.partition == 0)

    try:
        since = datetime.fromtimestamp((base + 2 * 60_000) / 1000, UTC)
        until = datetime.fromtimestamp((base + 4 * 60_000) / 1000, UTC)
        position = await open_position(consumer, topics.events, RangeSpec(since=since, until=until), None)
        summary = await replay_range(consumer, position, handle, batch_size=2, rate=RateLimit(None),
                                     description="t", idle_timeout_s=2)
        assert seen == [2, 3] and summary.read == 2 and summary.incomplete == {}
        assert await resolve_bounds(consumer, topics.events, RangeSpec(offsets="0:1-")) == {0: (1, 6)}
        with pytest.raises(BadReplayRange, match="no partition 9"):
            await resolve_bounds(consumer, topics.events, RangeSpec(offsets="9:0-1"))
        with pytest.raises(BadReplayRange, match="either offsets"):
            await resolve_bounds(consumer, topics.events, RangeSpec(offsets="0:0-1", since=since))
    finally:
        await consumer.stop()
