"""A range of one topic, read once, resumably: what `guardstream replay` works through.

A range is offsets per partition (`"0:100-200,1:0-,2:-500"`: start inclusive, end exclusive; an open
start is the partition's beginning, an open end the end offset when the replay starts) or time bounds
(`since`/`until`): the records whose timestamp lies in [since, until), read from the offset the broker
gives for `since` up to the end offset, so a broker that answers offsets-for-times loosely (the local one
answers 0) costs reading, never records. Partitions an offsets spec does not name are not read.

A position file, when given, keeps the range and the next offset of each partition; it is replaced
atomically after each batch is fully handled, so a second run with the same file goes on where the first
stopped (and refuses a file written for another topic). Delivery is at least once: a batch handled but not
yet recorded when a run dies is handled again.

The end offsets a broker reports are trusted for open ends. The local Tansu broker reports the base offset
of the last batch plus one, so there an open end can stop short: give explicit ends on it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

log = structlog.get_logger("guardstream.replay")

Bounds = dict[int, tuple[int, int]]
SPEC_PART = re.compile(r"^(\d+):(\d*)-(\d*)$")


class BadReplayRange(ValueError):
    """A range that cannot be read: a malformed spec, an unknown partition, a position file for another range."""


def parse_offsets(spec: str) -> dict[int, tuple[int | None, int | None]]:
    """`"0:100-200,1:0-"` as {partition: (start or None, end or None)}."""
    out: dict[int, tuple[int | None, int | None]] = {}
    for part in (p.strip() for p in spec.split(",")):
        match = SPEC_PART.match(part)
        if match is None:
            raise BadReplayRange(f"{part!r} is not PARTITION:START-END (either end may be left open)")
        partition, start, end = int(match[1]), int(match[2]) if match[2] else None, int(match[3]) if match[3] else None
        if start is not None and end is not None and end < start:
            raise BadReplayRange(f"{part!r} ends before it starts")
        if partition in out:
            raise BadReplayRange(f"partition {partition} is named twice")
        out[partition] = (start, end)
    return out


@dataclass(frozen=True)
class RangeSpec:
    """What a user asks for: offsets per partition, or time bounds."""

    offsets: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass
class ReplayPosition:
    topic: str
    bounds: Bounds
    next: dict[int, int] = field(default_factory=dict)
    path: Path | None = None
    since_ms: int | None = None  # time bounds: only records stamped in [since_ms, until_ms) belong to the range
    until_ms: int | None = None

    def within(self, record: ConsumerRecord[bytes, bytes]) -> bool:
        return (record.offset < self.bounds[record.partition][1]
                and (self.since_ms is None or record.timestamp >= self.since_ms)
                and (self.until_ms is None or record.timestamp < self.until_ms))

    @classmethod
    def load(cls, path: Path, topic: str) -> ReplayPosition:
        data = json.loads(path.read_text())
        if data["topic"] != topic:
            raise BadReplayRange(f"{path} records a replay of {data['topic']!r}, not {topic!r}")
        return cls(topic, {int(p): (s, e) for p, (s, e) in data["bounds"].items()},
                   {int(p): n for p, n in data["next"].items()}, path, data.get("since_ms"), data.get("until_ms"))

    @classmethod
    def start(cls, topic: str, bounds: Bounds, path: Path | None, spec: RangeSpec | None = None) -> ReplayPosition:
        spec = spec or RangeSpec()
        return cls(topic, bounds, {p: start for p, (start, _) in bounds.items()}, path,
                   _ms(spec.since), _ms(spec.until))

    def remaining(self) -> int:
        return sum(max(0, end - self.next[p]) for p, (_, end) in self.bounds.items())

    def done(self, partition: int) -> bool:
        return self.next[partition] >= self.bounds[partition][1]

    def advance(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        for record in records:
            self.next[record.partition] = max(self.next[record.partition], record.offset + 1)

    def save(self) -> None:
        if self.path is None:
            return
        body = {"topic": self.topic, "bounds": {str(p): list(b) for p, b in self.bounds.items()},
                "next": {str(p): n for p, n in self.next.items()}, "since_ms": self.since_ms, "until_ms": self.until_ms}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(body, indent=1))
        os.replace(tmp, self.path)


async def open_position(consumer: AIOKafkaConsumer, topic: str, spec: RangeSpec, path: Path | None) -> ReplayPosition:
    """The position saved at `path` if there is one (a resumed run), else the start of the range `spec` names."""
    if path is not None and path.exists():
        return ReplayPosition.load(path, topic)
    return ReplayPosition.start(topic, await resolve_bounds(consumer, topic, spec), path, spec)


async def resolve_bounds(consumer: AIOKafkaConsumer, topic: str, spec: RangeSpec) -> Bounds:
    """Concrete [start, end) offsets per partition for an offsets spec or time bounds (exactly one)."""
    offsets, since, until = spec.offsets, spec.since, spec.until
    if (offsets is None) == (since is None and until is None):
        raise BadReplayRange("give either offsets per partition or time bounds (since/until), not both or neither")
    known = consumer.partitions_for_topic(topic) or set()
    if not known:
        raise BadReplayRange(f"topic {topic!r} does not exist or has no partitions")
    wanted = parse_offsets(offsets) if offsets is not None else dict.fromkeys(known, (None, None))
    if unknown := sorted(set(wanted) - known):
        raise BadReplayRange(f"{topic} has no partition {unknown[0]} (it has {sorted(known)})")
    tps = [TopicPartition(topic, p) for p in wanted]
    first, last = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
    starts = {tp.partition: first[tp] for tp in tps}
    ends = {tp.partition: last[tp] for tp in tps}
    if since is not None:
        starts = await _offsets_at(consumer, tps, since, ends)
    bounds = {}
    for p, (start, end) in wanted.items():
        lo = max(start if start is not None else starts[p], starts[p] if since is not None else 0)
        hi = end if end is not None else ends[p]
        bounds[p] = (lo, max(lo, hi))
    return bounds


async def _offsets_at(consumer: AIOKafkaConsumer, tps: list[TopicPartition], when: datetime,
                      ends: dict[int, int]) -> dict[int, int]:
    found = await consumer.offsets_for_times({tp: int(when.timestamp() * 1000) for tp in tps})
    return {tp.partition: found[tp].offset if found.get(tp) is not None else ends[tp.partition] for tp in tps}


async def read_range(consumer: AIOKafkaConsumer, position: ReplayPosition, batch_size: int,
                     idle_timeout_s: float = 10.0) -> AsyncIterator[list[ConsumerRecord[bytes, bytes]]]:
    """Batches of the records still ahead of `position` inside its bounds; the caller calls
    `position.advance(batch)` (and `save()`) once a batch is handled. Ends when every partition reached its
    end, or when none of the open ones yields a record for `idle_timeout_s` (logged: `replay_incomplete`)."""
    open_tps = [TopicPartition(position.topic, p) for p in position.bounds if not position.done(p)]
    if not open_tps:
        return
    consumer.assign(open_tps)
    for tp in open_tps:
        consumer.seek(tp, position.next[tp.partition])
    quiet_since = time.monotonic()
    while open_tps:
        fetched = await consumer.getmany(*open_tps, timeout_ms=500, max_records=batch_size)
        batch = [r for records in fetched.values() for r in records if r.offset < position.bounds[r.partition][1]]
        if batch:
            quiet_since = time.monotonic()
            yield batch
        elif time.monotonic() - quiet_since > idle_timeout_s:
            log.warning("replay_incomplete", partitions={tp.partition: position.next[tp.partition] for tp in open_tps})
            return
        finished = [tp for tp in open_tps if _reached(tp, fetched, position)]
        if finished:
            open_tps = [tp for tp in open_tps if tp not in finished]
            consumer.pause(*finished)


def _ms(when: datetime | None) -> int | None:
    return None if when is None else int(when.timestamp() * 1000)


def _reached(tp: TopicPartition, fetched: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
             position: ReplayPosition) -> bool:
    """The partition's end is behind us: the caller advanced past it, or this fetch went past it."""
    end = position.bounds[tp.partition][1]
    return position.next[tp.partition] >= end or any(r.offset >= end - 1 for r in fetched.get(tp, []))


class RateLimit:
    """At most `per_second` events a second on average (None: no limit), as a token bucket one second deep."""

    def __init__(self, per_second: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.per_second = per_second
        self.clock = clock
        self.sleep = sleep
        self.tokens = per_second or 0.0
        self.updated = clock()

    async def acquire(self, count: int) -> None:
        if self.per_second is None:
            return
        now = self.clock()
        self.tokens = min(self.per_second, self.tokens + (now - self.updated) * self.per_second) - count
        self.updated = now
        if self.tokens < 0:
            await self.sleep(-self.tokens / self.per_second)


Handler = Callable[[list[ConsumerRecord[bytes, bytes]]], Awaitable[None]]


@dataclass
class ReplaySummary:
    topic: str
    read: int = 0
    seconds: float = 0.0
    incomplete: dict[int, int] = field(default_factory=dict)  # partition: next offset, where the range was not finished
    counts: dict[str, int] = field(default_factory=dict)  # what the handler did, by outcome


async def replay_range(consumer: AIOKafkaConsumer, position: ReplayPosition, handle: Handler, *, batch_size: int,
                       rate: RateLimit, description: str, idle_timeout_s: float = 10.0,
                       max_batches: int | None = None) -> ReplaySummary:
    """Hand each batch of the range to `handle`, then record the position; a progress bar on stderr."""
    from rich.console import Console
    from rich.progress import MofNCompleteColumn, Progress

    summary = ReplaySummary(position.topic)
    started = time.monotonic()
    batches = 0
    with Progress(*Progress.get_default_columns(), MofNCompleteColumn(), console=Console(stderr=True)) as progress:
        bar = progress.add_task(description, total=position.remaining())
        async for batch in read_range(consumer, position, batch_size, idle_timeout_s):
            chosen = [record for record in batch if position.within(record)]
            await rate.acquire(len(chosen))
            if chosen:
                await handle(chosen)
            position.advance(batch)
            position.save()
            summary.read += len(chosen)
            progress.advance(bar, len(batch))
            batches += 1
            if max_batches is not None and batches >= max_batches:
                break
    summary.incomplete = {p: n for p, n in position.next.items() if not position.done(p)}
    summary.seconds = round(time.monotonic() - started, 3)
    return summary
