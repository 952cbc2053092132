"""A range of one topic, read once, resumably: what `guardstream replay` works through.

A range is offsets per partition (`"0:100-200,1:0-,2:-500"`: start inclusive, end exclusive; an open
start is the partition's beginning, an open end the end offset when the replay starts) or time bounds
(`since`/`until`): the records whose timestamp lies in [since, until), read from the offset the broker
gives for `since` up to the end offset, so a broker that answers offsets-for-times loosely (the local one
answers 0) costs reading, never records. Partitions an offsets spec does not name are not read.

A position file, when given, keeps the range as asked (`RangeSpec.describe`), its bounds and the next
offset of each partition; it is replaced atomically after each batch is fully handled, and is on disk
(the new file fsynced, then its folder) before the caller commits anything, so a second run with the same
file goes on where the first stopped. It refuses a file written for another topic or another range (or
one that records no range): resuming it would read the old range and skip the one asked for. Delivery is
at least once: a batch handled but not yet recorded when a run dies is handled again.

An open end is found by reading, not taken from the end offsets a broker reports: the local Tansu broker
answers the base offset of the last batch plus one, so after a multi-record batch (what `produce` sends)
its end offset falls short of the records it holds. `read_ends` reads each partition's tail from one
before that answer up to the high watermark the first fetch gives (the end when the replay starts, so a
topic written meanwhile is not chased), or until nothing comes for the idle timeout.

A rate limit paces records, not batches: a batch read is handed on in small pieces (`RateLimit.piece`), each
when its records' share of the rate allows, and the position moves on after each piece. When the run is
interrupted (Ctrl-C cancels it) or ends with a partition unfinished, the position is saved, to the file
given or else to the caller's `keep_at` file, so the run can be resumed: `ReplayInterrupted` says where.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

log = structlog.get_logger("guardstream.replay")

Bounds = dict[int, tuple[int, int]]
SPEC_PART = re.compile(r"^(\d+):(\d*)-(\d*)$")


class BadReplayRange(ValueError):
    """A range that cannot be read: an unknown topic or partition, a position file for another range."""

    exit_code = 3  # how a command ends: runtime.cli_errors.Exit.INPUT


class BadRangeSpec(BadReplayRange):
    """A range written wrongly: a malformed `--offsets` spec, or offsets and time bounds together or neither."""

    exit_code = 2  # Exit.USAGE


class ReplayInterrupted(Exception):
    """The run was cancelled (Ctrl-C); the position of what was handled is saved at `path`."""

    exit_code = 130  # Exit.INTERRUPTED

    def __init__(self, path: Path | None, read: int) -> None:
        super().__init__(f"interrupted after {read} records; position saved in {path}" if path else
                         f"interrupted after {read} records; no position file to resume from")
        self.path = path
        self.read = read


def parse_offsets(spec: str) -> dict[int, tuple[int | None, int | None]]:
    """`"0:100-200,1:0-"` as {partition: (start or None, end or None)}."""
    out: dict[int, tuple[int | None, int | None]] = {}
    for part in (p.strip() for p in spec.split(",")):
        match = SPEC_PART.match(part)
        if match is None:
            raise BadRangeSpec(f"--offsets: {part!r} is not PARTITION:START-END (either end may be left open)")
        partition, start, end = int(match[1]), int(match[2]) if match[2] else None, int(match[3]) if match[3] else None
        if start is not None and end is not None and end < start:
            raise BadRangeSpec(f"--offsets: {part!r} ends before it starts")
        if partition in out:
            raise BadRangeSpec(f"--offsets: partition {partition} is named twice")
        out[partition] = (start, end)
    return out


@dataclass(frozen=True)
class RangeSpec:
    """What a user asks for: offsets per partition, or time bounds."""

    offsets: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def check(self) -> None:
        """BadRangeSpec unless the range is well written: offsets or time bounds (exactly one), a valid spec."""
        if (self.offsets is None) == (self.since is None and self.until is None):
            raise BadRangeSpec("give either --offsets or time bounds (--since/--until), not both or neither")
        if self.offsets is not None:
            parse_offsets(self.offsets)

    def describe(self) -> str:
        """The range on one line, the same however it was written (`"0:0-3"` and `" 0:0-3"` are one range)."""
        parts = []
        if self.offsets is not None:
            parts.append(",".join(f"{p}:{_open(start)}-{_open(end)}"
                                  for p, (start, end) in sorted(parse_offsets(self.offsets).items())))
        parts += [f"{word} {_iso(when)}" for word, when in (("since", self.since), ("until", self.until)) if when]
        return " ".join(parts)


@dataclass
class ReplayPosition:
    topic: str
    bounds: Bounds
    next: dict[int, int] = field(default_factory=dict)
    path: Path | None = None
    since_ms: int | None = None  # time bounds: only records stamped in [since_ms, until_ms) belong to the range
    until_ms: int | None = None
    range: str = ""  # the range asked for, as RangeSpec.describe writes it

    def within(self, record: ConsumerRecord[bytes, bytes]) -> bool:
        return (record.offset < self.bounds[record.partition][1]
                and (self.since_ms is None or record.timestamp >= self.since_ms)
                and (self.until_ms is None or record.timestamp < self.until_ms))

    @classmethod
    def load(cls, path: Path, topic: str, spec: RangeSpec) -> ReplayPosition:
        data = json.loads(path.read_text())
        if data["topic"] != topic:
            raise BadReplayRange(f"{path} records a replay of {data['topic']!r}, not {topic!r}")
        if (recorded := data.get("range")) != (asked := spec.describe()):
            held = f"the range {recorded}" if recorded else "no range (it predates range records)"
            raise BadReplayRange(f"{path} records {held}, not {asked}: "
                                 "give another position file, or delete this one to start over")
        return cls(topic, {int(p): (s, e) for p, (s, e) in data["bounds"].items()},
                   {int(p): n for p, n in data["next"].items()}, path, data.get("since_ms"), data.get("until_ms"),
                   recorded)

    @classmethod
    def start(cls, topic: str, bounds: Bounds, path: Path | None, spec: RangeSpec) -> ReplayPosition:
        return cls(topic, bounds, {p: start for p, (start, _) in bounds.items()}, path,
                   _ms(spec.since), _ms(spec.until), spec.describe())

    def remaining(self) -> int:
        return sum(max(0, end - self.next[p]) for p, (_, end) in self.bounds.items())

    def done(self, partition: int) -> bool:
        return self.next[partition] >= self.bounds[partition][1]

    def advance(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        for record in records:
            self.next[record.partition] = max(self.next[record.partition], record.offset + 1)

    def keep(self, fallback: Path | None) -> Path | None:
        """Save the position, to `fallback` when no file was given; the file it is in (None: nowhere)."""
        if self.path is None and fallback is not None:
            fallback.parent.mkdir(parents=True, exist_ok=True)
            self.path = fallback
        self.save()
        return self.path

    def save(self) -> None:
        if self.path is None:
            return
        body = {"topic": self.topic, "range": self.range, "bounds": {str(p): list(b) for p, b in self.bounds.items()},
                "next": {str(p): n for p, n in self.next.items()}, "since_ms": self.since_ms, "until_ms": self.until_ms}
        replace_durably(self.path, json.dumps(body, indent=1).encode())


def replace_durably(path: Path, body: bytes) -> None:
    """Replace `path` by `body` atomically and durably: the caller commits offsets once this returns, so a
    power cut after that must find the new file, never an empty one (data not yet on disk) or the old one
    (the rename not yet on disk)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as out:
        out.write(body)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


async def open_position(consumer: AIOKafkaConsumer, topic: str, spec: RangeSpec, path: Path | None,
                        idle_timeout_s: float = 10.0) -> ReplayPosition:
    """The position saved at `path` if there is one (a resumed run), else the start of the range `spec` names."""
    if path is not None and path.exists():
        return ReplayPosition.load(path, topic, spec)
    return ReplayPosition.start(topic, await resolve_bounds(consumer, topic, spec, idle_timeout_s), path, spec)


async def resolve_bounds(consumer: AIOKafkaConsumer, topic: str, spec: RangeSpec,
                         idle_timeout_s: float = 10.0) -> Bounds:
    """Concrete [start, end) offsets per partition for an offsets spec or time bounds (exactly one); open
    ends (every end, for time bounds) are read (`read_ends`), not taken from the broker's end offsets."""
    spec.check()
    offsets, since = spec.offsets, spec.since
    known = consumer.partitions_for_topic(topic) or set()
    if not known:
        raise BadReplayRange(f"topic {topic!r} does not exist or has no partitions")
    wanted = parse_offsets(offsets) if offsets is not None else dict.fromkeys(known, (None, None))
    if unknown := sorted(set(wanted) - known):
        raise BadReplayRange(f"{topic} has no partition {unknown[0]} (it has {sorted(known)})")
    tps = [TopicPartition(topic, p) for p in wanted]
    first, last = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
    starts = {tp.partition: first[tp] for tp in tps}
    open_ended = [tp for tp in tps if offsets is None or wanted[tp.partition][1] is None]
    ends = {tp.partition: last[tp] for tp in tps}
    if open_ended:
        ends |= await read_ends(consumer, open_ended, starts, ends, idle_timeout_s)
    if since is not None:
        starts = await _offsets_at(consumer, tps, since, ends)
    bounds = {}
    for p, (start, end) in wanted.items():
        lo = max(start if start is not None else starts[p], starts[p] if since is not None else 0)
        hi = end if end is not None else ends[p]
        bounds[p] = (lo, max(lo, hi))
    return bounds


async def read_ends(consumer: AIOKafkaConsumer, tps: list[TopicPartition], first: dict[int, int],
                    reported: dict[int, int], quiet_s: float) -> dict[int, int]:
    """One past the last record of each partition, found by reading from one before its `reported` end: the
    read stops at the high watermark the partition's first fetch answered, or when nothing comes for
    `quiet_s`. The end is never below `reported` nor below a record read."""
    ends = {tp.partition: reported[tp.partition] for tp in tps}
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, max(first[tp.partition], reported[tp.partition] - 1))
    marks: dict[int, int] = {}
    pending, quiet_since = list(tps), time.monotonic()
    while pending and time.monotonic() - quiet_since <= quiet_s:
        fetched = await consumer.getmany(*pending, timeout_ms=100)
        for tp, records in fetched.items():
            if records:
                ends[tp.partition] = max(ends[tp.partition], records[-1].offset + 1)
                quiet_since = time.monotonic()
        for tp in pending:
            if (highwater := consumer.highwater(tp)) is not None:
                marks.setdefault(tp.partition, highwater)
        pending = [tp for tp in pending if ends[tp.partition] < marks.get(tp.partition, math.inf)]
    if pending:
        log.info("replay_end_by_quiet", partitions={tp.partition: ends[tp.partition] for tp in pending})
    consumer.unsubscribe()
    return ends


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
            log.info("replay_incomplete", partitions={tp.partition: position.next[tp.partition] for tp in open_tps})
            return
        finished = [tp for tp in open_tps if _reached(tp, fetched, position)]
        if finished:
            open_tps = [tp for tp in open_tps if tp not in finished]
            consumer.pause(*finished)


def _ms(when: datetime | None) -> int | None:
    return None if when is None else int(when.timestamp() * 1000)


def _iso(when: datetime) -> str:
    """`when` as the instant the range uses (`_ms`), in UTC."""
    return datetime.fromtimestamp(when.timestamp(), UTC).isoformat()


def _open(offset: int | None) -> str:
    return "" if offset is None else str(offset)


def _reached(tp: TopicPartition, fetched: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
             position: ReplayPosition) -> bool:
    """The partition's end is behind us: the caller advanced past it, or this fetch went past it."""
    end = position.bounds[tp.partition][1]
    return position.next[tp.partition] >= end or any(r.offset >= end - 1 for r in fetched.get(tp, []))


HANDOFFS_PER_SECOND = 10  # a rate-limited replay hands records on about this often, so it moves smoothly


class RateLimit:
    """At most `per_second` records a second on average (None: no limit), as a token bucket one second (and at
    least one record) deep. Records are handed on in pieces of `piece` records, so a limit well under the
    batch size paces records instead of waiting a batch's worth and then bursting."""

    def __init__(self, per_second: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.per_second = per_second
        self.clock = clock
        self.sleep = sleep
        self.depth = max(1.0, per_second or 0.0)
        self.tokens = self.depth
        self.updated = clock()

    @property
    def piece(self) -> int | None:
        """How many records to hand on at once (None: a whole batch)."""
        return None if self.per_second is None else max(1, math.ceil(self.per_second / HANDOFFS_PER_SECOND))

    async def acquire(self, count: int) -> None:
        if self.per_second is None or count == 0:
            return
        now = self.clock()
        self.tokens = min(self.depth, self.tokens + (now - self.updated) * self.per_second) - count
        self.updated = now
        if self.tokens < 0:
            await self.sleep(-self.tokens / self.per_second)


def pieces(batch: list[ConsumerRecord[bytes, bytes]], chosen: Callable[[ConsumerRecord[bytes, bytes]], bool],
           size: int | None) -> list[list[ConsumerRecord[bytes, bytes]]]:
    """`batch` in order, cut so that each piece holds at most `size` chosen records (records outside the
    range ride along with the next chosen one); one piece when `size` is None."""
    if size is None:
        return [batch] if batch else []
    out: list[list[ConsumerRecord[bytes, bytes]]] = [[]]
    count = 0
    for record in batch:
        if chosen(record):
            if count == size:
                out.append([])
                count = 0
            count += 1
        out[-1].append(record)
    return [piece for piece in out if piece]


Handler = Callable[[list[ConsumerRecord[bytes, bytes]]], Awaitable[None]]


@dataclass
class ReplaySummary:
    topic: str
    read: int = 0
    seconds: float = 0.0
    incomplete: dict[int, int] = field(default_factory=dict)  # partition: next offset, where the range was not finished
    counts: dict[str, int] = field(default_factory=dict)  # what the handler did, by outcome
    ends: dict[int, int] = field(default_factory=dict)  # partition: the end of its range
    position: str | None = None  # the position file, when there is one


async def replay_range(consumer: AIOKafkaConsumer, position: ReplayPosition, handle: Handler, *, batch_size: int,
                       rate: RateLimit, description: str, idle_timeout_s: float = 10.0,
                       max_batches: int | None = None, keep_at: Path | None = None) -> ReplaySummary:
    """Hand each piece of the range to `handle`, then record the position; a progress bar on stderr. When
    cancelled, or when a partition is left unfinished, the position is kept (`ReplayPosition.keep`) in its
    file or else at `keep_at`; a cancelled run raises ReplayInterrupted."""
    from rich.console import Console
    from rich.progress import MofNCompleteColumn, Progress

    summary = ReplaySummary(position.topic, ends={p: end for p, (_, end) in position.bounds.items()})
    started = time.monotonic()
    console = Console(stderr=True)
    with Progress(*Progress.get_default_columns(), MofNCompleteColumn(), console=console,
                  disable=not console.is_terminal) as progress:  # off a terminal, stderr keeps to what went wrong
        bar = progress.add_task(description, total=position.remaining())
        try:
            await _replay_batches(consumer, position, handle, summary, batch_size, rate, idle_timeout_s, max_batches,
                                  lambda count: progress.advance(bar, count))
        except asyncio.CancelledError:
            raise ReplayInterrupted(position.keep(keep_at), summary.read) from None
    summary.incomplete = {p: n for p, n in position.next.items() if not position.done(p)}
    if summary.incomplete:
        position.keep(keep_at)
    summary.position = str(position.path) if position.path else None
    summary.seconds = round(time.monotonic() - started, 3)
    return summary


async def _replay_batches(consumer: AIOKafkaConsumer, position: ReplayPosition, handle: Handler,
                          summary: ReplaySummary, batch_size: int, rate: RateLimit, idle_timeout_s: float,
                          max_batches: int | None, advance: Callable[[int], object]) -> None:
    batches = 0
    async for batch in read_range(consumer, position, batch_size, idle_timeout_s):
        for piece in pieces(batch, position.within, rate.piece):
            chosen = [record for record in piece if position.within(record)]
            await rate.acquire(len(chosen))
            if chosen:
                await handle(chosen)
            position.advance(piece)
            position.save()
            summary.read += len(chosen)
            advance(len(piece))
        batches += 1
        if max_batches is not None and batches >= max_batches:
            return
