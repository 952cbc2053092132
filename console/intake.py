"""Verdicts into the review store: consume `moderation.verdicts`, apply the sampling policy, read each newly
queued event at its coordinates (`verdict.source`), store, then commit.

A verdict that does not decode, whose event cannot be read (gone by retention, or of another event), or that
the database refuses, is counted and logged, and the consumer moves on: the console must not stop on one bad
record. A broker or database that does not answer (an error, or no reply from the store within
`database_call_timeout_s`) leaves the poll uncommitted; the consumer rewinds to it and reads it again after a
backoff that grows while the outage lasts (/readyz says so meanwhile).

Reports read with their own reader (`EventReader` with a budget): a report naming coordinates that never
resolve waits out its own reader's timeout, never the intake's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from console.failing import FailureStreak
from console.metrics import ConsoleMetrics
from console.sampling import reasons_for
from console.settings import ConsoleSettings
from console.store import Incoming, ReviewStore, StoreNotAnswering, answered_within, storable_model
from schemas.events import ChatEvent, SourceRef, Verdict
from topics.clients import client_options, stop_consumer
from topics.records import EventVerdictReader, NoCoordinates, RecordReader, RecordUnavailable, Unresolvable
from topics.registry import TopicNames

log = structlog.get_logger("guardstream.console.intake")
R = TypeVar("R")
UNAVAILABLE = (KafkaError, OperationalError, InterfaceError, PoolTimeout,  # the broker's or the store's: retried
               StoreNotAnswering)


@dataclass(frozen=True)
class Polled:
    incoming: list[Incoming]
    undecodable: int


def decode(records: list[ConsumerRecord[bytes, bytes]], settings: ConsoleSettings) -> Polled:
    incoming: list[Incoming] = []
    undecodable = 0
    for record in records:
        at = SourceRef(topic=record.topic, partition=record.partition, offset=record.offset)
        try:
            verdict = storable_model(Verdict.model_validate_json(record.value or b""))
        except ValidationError as exc:
            undecodable += 1
            log.warning("verdict undecodable", at=f"{at.topic}[{at.partition}]@{at.offset}",
                        error=exc.errors()[0]["msg"])
            continue
        incoming.append(Incoming(verdict, at, reasons_for(verdict, settings.sampling)))
    return Polled(incoming, undecodable)


@dataclass
class Tally:
    """What one poll's records came to, counted into the metrics only once the poll is stored and committed."""

    undecodable: int = 0
    refused: int = 0
    unreadable: Counter[str] = field(default_factory=Counter)  # by reason
    queued: Counter[str] = field(default_factory=Counter)  # by sampling reason

    def count(self, metrics: ConsoleMetrics, seen: int) -> None:
        metrics.verdicts_seen.inc(seen)
        metrics.verdicts_undecodable.inc(self.undecodable)
        metrics.verdicts_refused.inc(self.refused)
        for reason, n in self.unreadable.items():
            metrics.events_unreadable.labels(reason).inc(n)
        for reason, n in self.queued.items():
            metrics.queued.labels(reason).inc(n)


class ReadOverBudget(RecordUnavailable):
    """A read that did not finish within its reader's budget (its wait for the reader included): retriable."""


class EventReader:
    """Reads verdicts and events at their coordinates, one at a time (they seek one consumer); None, counted
    and logged, for a record that can never be read. The intake has one, reports another: a report's read
    never waits for the intake's, nor the intake's for a report's. `budget_s` bounds each read, its wait for
    the reader included (ReadOverBudget past it)."""

    def __init__(self, settings: ConsoleSettings, metrics: ConsoleMetrics, budget_s: float | None = None) -> None:
        self.reader = RecordReader(settings.kafka, settings.resolve_timeout_s)
        self.events = EventVerdictReader(self.reader, settings.limits.max_record_bytes)
        self.metrics = metrics
        self.budget_s = budget_s
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        await self.reader.start()

    async def stop(self) -> None:
        await self.reader.stop()

    async def event(self, event_id: str, at: SourceRef | None,
                    unreadable: Counter[str] | None = None) -> ChatEvent | None:
        """The event, or None for one that can never be read: counted at once, or in `unreadable` by reason
        for a caller that counts only once its batch is stored."""
        if at is None:
            return self._unreadable(event_id, NoCoordinates("the verdict names no event coordinates"), unreadable)
        try:
            return storable_model(await self._read(self.events.read_event, at, event_id))
        except Unresolvable as exc:
            return self._unreadable(event_id, exc, unreadable)

    async def verdict(self, event_id: str, at: SourceRef) -> Verdict | None:
        try:
            return storable_model(await self._read(self.events.read_verdict, at, event_id))
        except Unresolvable as exc:
            return self._unreadable(event_id, exc)

    async def _read(self, read: Callable[[SourceRef, str], Awaitable[R]], at: SourceRef, event_id: str) -> R:
        budget = asyncio.timeout(self.budget_s)
        try:
            async with budget, self._lock:
                return await read(at, event_id)
        except TimeoutError as exc:
            if not budget.expired():
                raise
            raise ReadOverBudget(f"reading {at.topic}[{at.partition}]@{at.offset} took over {self.budget_s}s") from exc

    def _unreadable(self, event_id: str, exc: Unresolvable, unreadable: Counter[str] | None = None) -> None:
        if unreadable is None:
            self.metrics.events_unreadable.labels(exc.reason).inc()
        else:
            unreadable[exc.reason] += 1
        log.warning("record unreadable: not queued", event_id=event_id, reason=exc.reason, error=str(exc))


class VerdictIntake:
    def __init__(self, settings: ConsoleSettings, store: ReviewStore, metrics: ConsoleMetrics,
                 events: EventReader) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.events = events
        self.topic = TopicNames(settings.kafka.topic_prefix).verdicts
        self.consumer: AIOKafkaConsumer | None = None  # made in run(): aiokafka wants a running loop
        self.assigned = asyncio.Event()
        self.seen = 0  # verdict records read and stored (committed)
        self.failures = FailureStreak("verdict intake", "verdicts wait on the topic", metrics.intake_errors,
                                      settings.backoff_base_s, settings.backoff_max_s)
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        kafka = self.settings.kafka
        self.consumer = AIOKafkaConsumer(
            self.topic, **client_options(kafka), group_id=self.settings.group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", fetch_max_wait_ms=kafka.fetch_max_wait_ms)
        await self.consumer.start()
        try:
            while not self._stopping.is_set():
                await self.poll_once()
        finally:
            await stop_consumer(self.consumer)

    async def poll_once(self) -> int:
        """Read a poll's verdicts into the store and commit them; on a broker or database that does not answer,
        rewind to the poll's first records, wait the backoff and return 0 (they are read again). The failure
        streak ends with the next poll whose records are stored (an empty poll proves nothing of the store)."""
        assert self.consumer is not None, "run() polls"
        batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
        records: list[ConsumerRecord[bytes, bytes]] = []
        try:
            batches = await self.consumer.getmany(timeout_ms=self.settings.kafka.poll_timeout_ms,
                                                  max_records=self.settings.kafka.max_poll_records)
            if self.consumer.assignment():
                self.assigned.set()
            records = [r for rs in batches.values() for r in rs]
            if not records:
                return 0
            added, tally = await self._take(records)
            await self._count_open_items()
            await self.consumer.commit()
        except UNAVAILABLE as exc:
            wait_s = self.failures.failed(exc)
            log.warning("verdicts not stored; reading them again", error=type(exc).__name__, records=len(records),
                        failures=self.failures.count, retry_in_s=wait_s)
            self._rewind(batches)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait_s)
            return 0
        self.failures.ended()
        self.seen += len(records)
        tally.count(self.metrics, len(records))  # once stored: a poll read again after a failure counts once
        return added

    async def _count_open_items(self) -> None:
        count, oldest_s = await self._store(self.store.open_items, datetime.now(UTC))
        self.metrics.queue_open.set(count)
        self.metrics.queue_oldest_s.set(oldest_s)

    async def _take(self, records: list[ConsumerRecord[bytes, bytes]]) -> tuple[int, Tally]:
        polled = decode(records, self.settings)
        tally = Tally(undecodable=polled.undecodable)
        queued = await self._store(self.store.events_with_items, [i.verdict.event_id for i in polled.incoming])
        events: dict[str, tuple[ChatEvent, SourceRef | None]] = {}
        for one in polled.incoming:
            event_id = one.verdict.event_id
            if one.reasons and event_id not in queued and event_id not in events:
                event = await self.events.event(event_id, one.verdict.source, tally.unreadable)
                if event is not None:
                    events[event_id] = (event, one.verdict.source)
        now = datetime.now(UTC)
        try:
            added = await self._store(self.store.add, polled.incoming, events, now)
        except UNAVAILABLE:
            raise
        except DBAPIError:  # one record the database refuses: store the others one by one, skip that one
            added = 0
            for one in polled.incoming:
                try:
                    added += await self._store(self.store.add, [one], events, now)
                except UNAVAILABLE:
                    raise
                except DBAPIError as exc:
                    tally.refused += 1
                    log.warning("verdict refused by the review store: skipped", event_id=one.verdict.event_id,
                                at=f"{one.at.topic}[{one.at.partition}]@{one.at.offset}", error=type(exc.orig).__name__)
        for one in polled.incoming:
            if one.verdict.event_id in events:
                tally.queued.update(str(reason) for reason in one.reasons)
        return added, tally

    async def _store(self, call: Callable[..., R], *args: object) -> R:
        return await answered_within(self.settings.database_call_timeout_s, call, *args)

    def _rewind(self, batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        assert self.consumer is not None
        for tp, batch in batches.items():
            if batch:
                with contextlib.suppress(IllegalStateError, ValueError):  # revoked meanwhile: its new owner reads it
                    self.consumer.seek(tp, batch[0].offset)
