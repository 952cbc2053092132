"""Replay ranges: the spec, the bounds the broker resolves them to, the position file, the rate limit."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

from tests.conftest import PARTITIONS
from tests.factories import BENIGN, event
from tests.waiting import wait_until
from topics.io import produce_events
from topics.local_broker import LocalBroker
from topics.ranges import (
    BadRangeSpec,
    BadReplayRange,
    RangeSpec,
    RateLimit,
    ReplayInterrupted,
    ReplayPosition,
    open_position,
    parse_offsets,
    pieces,
    replay_range,
    resolve_bounds,
)
from topics.registry import TopicNames

Records = list[ConsumerRecord[bytes, bytes]]


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
    with pytest.raises(BadRangeSpec, match=says):
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
    spec = RangeSpec(offsets="0:0-10")
    ReplayPosition.start("a", {0: (0, 10)}, path, spec).save()
    assert ReplayPosition.load(path, "a", spec).next == {0: 0}
    assert json.loads(path.read_text())["bounds"] == {"0": [0, 10]}
    with pytest.raises(BadReplayRange, match="not 'b'"):
        ReplayPosition.load(path, "b", spec)


async def test_a_position_file_refuses_a_range_other_than_its_own(broker: LocalBroker, topics: TopicNames,
                                                                  tmp_path: Path) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    await producer.start()
    for _ in range(10):
        await producer.send_and_wait(topics.events, b"x", partition=0)
    await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap_servers, group_id=None)
    await consumer.start()
    path = tmp_path / "position.json"
    seen: list[int] = []

    async def handle(records: list[ConsumerRecord[bytes, bytes]]) -> None:
        seen.extend(r.offset for r in records)

    try:
        position = await open_position(consumer, topics.events, RangeSpec(offsets="0:0-3"), path)
        await replay_range(consumer, position, handle, batch_size=10, rate=RateLimit(None), description="t",
                           idle_timeout_s=2)
        assert seen == [0, 1, 2]
        with pytest.raises(BadReplayRange, match=r"records the range 0:0-3, not 0:5-9"):
            await open_position(consumer, topics.events, RangeSpec(offsets="0:5-9"), path)
        with pytest.raises(BadReplayRange, match=r"not since 2026-05-01T00:00:00\+00:00"):
            await open_position(consumer, topics.events, RangeSpec(since=datetime(2026, 5, 1, tzinfo=UTC)), path)
        resumed = await open_position(consumer, topics.events, RangeSpec(offsets=" 0:0-3"), path)  # the same range
        assert resumed.next == {0: 3} and resumed.done(0)
    finally:
        await consumer.stop()


def test_a_position_file_without_a_recorded_range_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "position.json"
    path.write_text(json.dumps({"topic": "a", "bounds": {"0": [0, 3]}, "next": {"0": 3}}))  # written before ranges were
    with pytest.raises(BadReplayRange, match="records no range"):
        ReplayPosition.load(path, "a", RangeSpec(offsets="0:5-9"))


def test_a_position_is_on_disk_before_save_returns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offsets are committed once save() returns: the new file's data, then its name, must be durable."""
    path = tmp_path / "position.json"
    steps: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        steps.append(f"fsync {Path(os.readlink(f'/proc/self/fd/{fd}')).name}")
        real_fsync(fd)

    def replace(src: Path, dst: Path) -> None:
        steps.append(f"rename {Path(src).name}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    ReplayPosition.start("a", {0: (0, 10)}, path, RangeSpec(offsets="0:0-10")).save()
    assert steps == ["fsync position.json.tmp", "rename position.json.tmp", f"fsync {tmp_path.name}"]
    assert ReplayPosition.load(path, "a", RangeSpec(offsets="0:0-10")).next == {0: 0}


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
        with pytest.raises(BadReplayRange, match="either --offsets"):
            await resolve_bounds(consumer, topics.events, RangeSpec(offsets="0:0-1", since=since))
    finally:
        await consumer.stop()


async def _published(broker: LocalBroker, topics: TopicNames, count: int) -> None:
    """`count` events sent as `guardstream produce` sends them: several records to a batch."""
    events = [event(BENIGN[i % len(BENIGN)], conversation=f"c{i % 7}") for i in range(count)]
    await produce_events(broker.bootstrap_servers, topics.events, events)


async def _replay_all(broker: LocalBroker, topic: str, spec: RangeSpec, **options: object) -> tuple[Records, object]:
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap_servers, group_id=None, enable_auto_commit=False)
    await consumer.start()
    seen: Records = []

    async def handle(records: Records) -> None:
        seen.extend(records)

    try:
        position = await open_position(consumer, topic, spec, None, idle_timeout_s=3)
        summary = await replay_range(consumer, position, handle, batch_size=64, rate=RateLimit(None),
                                     description="t", idle_timeout_s=3, **options)  # type: ignore[arg-type]
    finally:
        await consumer.stop()
    return seen, summary


@pytest.mark.parametrize("spec", [
    RangeSpec(offsets=",".join(f"{p}:0-" for p in range(PARTITIONS))),
    RangeSpec(offsets=",".join(f"{p}:-" for p in range(PARTITIONS))),
    RangeSpec(since=datetime.now(UTC) - timedelta(hours=1)),
], ids=["open-end", "open-both", "since"])
async def test_an_open_range_handles_every_record_of_multi_record_batches(broker: LocalBroker, topics: TopicNames,
                                                                         spec: RangeSpec) -> None:
    """The local broker's end offsets stop at the last batch's base offset plus one: the end is read instead."""
    await _published(broker, topics, 60)
    seen, summary = await _replay_all(broker, topics.events, spec)
    assert len(seen) == 60 and len({(r.partition, r.offset) for r in seen}) == 60
    assert summary.read == 60 and summary.incomplete == {}  # type: ignore[attr-defined]


async def test_an_open_end_is_the_end_when_the_replay_starts(broker: LocalBroker, topics: TopicNames) -> None:
    await _published(broker, topics, 20)
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap_servers, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        spec = RangeSpec(offsets=",".join(f"{p}:0-" for p in range(PARTITIONS)))
        bounds = await resolve_bounds(consumer, topics.events, spec, idle_timeout_s=3)
        await _published(broker, topics, 20)  # written after the start: not part of the range
        assert await resolve_bounds(consumer, topics.events, RangeSpec(offsets="0:0-1,1:0-1")) == {0: (0, 1),
                                                                                                   1: (0, 1)}
    finally:
        await consumer.stop()
    assert sum(end - start for start, end in bounds.values()) == 20


def _records(offsets: list[int], partition: int = 0) -> Records:
    return [ConsumerRecord("t", partition, o, 0, 0, None, b"x", 0, 1, (), None) for o in offsets]


def test_a_batch_is_cut_into_pieces_of_chosen_records() -> None:
    batch = _records(list(range(7)))
    chosen = [[r.offset for r in piece] for piece in pieces(batch, lambda r: r.offset % 2 == 0, 2)]
    assert chosen == [[0, 1, 2, 3], [4, 5, 6]]  # at most two even (chosen) offsets each, in order, none lost
    assert [[r.offset for r in p] for p in pieces(batch, lambda r: True, None)] == [list(range(7))]
    assert RateLimit(3).piece == 1 and RateLimit(640).piece == 64 and RateLimit(None).piece is None


async def test_a_rate_limit_paces_records_not_batches(broker: LocalBroker, topics: TopicNames, tmp_path: Path) -> None:
    """`--rate 3` with a batch of 64: a record every third of a second from the start, the position moving with
    each, instead of nothing for 20 s and then the batch at once. The clock is a fake one."""
    await _published(broker, topics, 12)
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    handed: list[tuple[float, int, int]] = []  # fake time, records handed, records the position file holds
    path = tmp_path / "position.json"

    async def handle(records: Records) -> None:
        saved = json.loads(path.read_text())["next"] if path.exists() else {}
        done = sum(n - position.bounds[int(p)][0] for p, n in saved.items())
        handed.append((round(now[0], 3), len(records), done))

    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap_servers, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        spec = RangeSpec(offsets=",".join(f"{p}:0-" for p in range(PARTITIONS)))
        position = await open_position(consumer, topics.events, spec, path, idle_timeout_s=3)
        summary = await replay_range(consumer, position, handle, batch_size=64, description="t", idle_timeout_s=3,
                                     rate=RateLimit(3, clock=lambda: now[0], sleep=sleep))
    finally:
        await consumer.stop()
    assert summary.read == 12 and all(count == 1 for _, count, _ in handed)
    assert [when for when, _, _ in handed] == [0.0, 0.0, 0.0] + [round(i / 3, 3) for i in range(1, 10)]
    assert [done for _, _, done in handed][1:] == list(range(1, 12))  # the position moved on after each record


async def test_an_interrupted_replay_keeps_its_position_where_it_was_asked_to(broker: LocalBroker,
                                                                             topics: TopicNames,
                                                                             tmp_path: Path) -> None:
    await _published(broker, topics, 20)
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap_servers, group_id=None, enable_auto_commit=False)
    await consumer.start()
    handled: Records = []
    blocked = asyncio.Event()

    async def handle(records: Records) -> None:
        if len(handled) >= 5:
            blocked.set()
            await asyncio.Event().wait()  # stuck until cancelled, as a guard call is when Ctrl-C comes
        handled.extend(records)

    kept = tmp_path / "kept" / "position.json"
    spec = RangeSpec(offsets=",".join(f"{p}:0-" for p in range(PARTITIONS)))
    try:
        position = await open_position(consumer, topics.events, spec, None, idle_timeout_s=3)
        run = asyncio.create_task(replay_range(consumer, position, handle, batch_size=64, description="t",
                                               rate=RateLimit(10), keep_at=kept))  # a record a piece
        await wait_until(blocked.is_set, what="the replay is inside a handler call")
        run.cancel()
        with pytest.raises(ReplayInterrupted) as interrupted:
            await run
    finally:
        await consumer.stop()
    assert interrupted.value.path == kept and interrupted.value.read == len(handled)
    saved = ReplayPosition.load(kept, topics.events, spec)
    assert sum(saved.next[p] - start for p, (start, _) in saved.bounds.items()) == len(handled)
