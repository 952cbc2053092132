"""Flow control: which offsets are committed, and when the worker may poll for more.

Commits cover each owned partition's answered prefix only (see commit.py), so a crash repeats work and
never loses an event. A revoke gives the revoked partitions' events in flight a moment to be answered,
commits them and forgets them. Backpressure pauses every partition at `max_in_flight_events` unanswered
and resumes at half of it; `room` and `all_answered` are what a paused poll loop and a drain wait for.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError

from workers.commit import OffsetTracker
from workers.metrics import WorkerMetrics
from workers.settings import WorkerSettings

log = structlog.get_logger("guardstream.worker")

REVOKE_CHECK_S = 0.01  # how often a revoke's drain looks whether the revoked partitions are answered


class Revocable(Protocol):
    """What a revoke asks of the worker that owned the partitions."""

    async def finish(self, revoked: set[TopicPartition]) -> None: ...

    async def commit(self, partitions: set[TopicPartition] | None = None) -> None: ...

    def forget(self, revoked: set[TopicPartition]) -> None: ...


class CommitOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Revocable) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.worker.finish(revoked)
        await self.worker.commit(revoked)
        self.worker.forget(revoked)
        log.info("partitions_revoked", partitions=sorted(str(tp) for tp in revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions_assigned", partitions=sorted(str(tp) for tp in assigned))


class FlowControl:
    """Commits, the revoke drain, and backpressure over one consumer's partitions."""

    consumer: AIOKafkaConsumer  # attached by Worker.start(), once the consumer exists

    def __init__(self, settings: WorkerSettings, tracker: OffsetTracker[TopicPartition], metrics: WorkerMetrics) -> None:
        self.settings = settings
        self.tracker = tracker
        self.metrics = metrics
        self.paused = False
        self.room = asyncio.Event()  # set when a paused worker may poll again (or is stopping)
        self.all_answered = asyncio.Event()  # set while nothing polled is unanswered (what a drain waits for)
        self.last_commit = 0.0

    async def commit(self, partitions: set[TopicPartition] | None = None) -> None:
        """Commit the answered prefix of each partition we own (shielded: a cancel cannot cut it)."""
        self.last_commit = time.monotonic()
        owned = self.consumer.assignment() if partitions is None else partitions
        points = self.tracker.to_commit(owned)
        if not points:
            return
        try:
            await asyncio.shield(self.consumer.commit(dict(points.items())))
        except KafkaError as exc:
            log.warning("commit_failed", error=f"{type(exc).__name__}: {exc}", partitions=len(points))
            return
        self.tracker.committed(points)
        self.metrics.commits.inc()
        log.debug("committed", offsets={str(tp): off for tp, off in points.items()})

    async def finish(self, revoked: set[TopicPartition]) -> None:
        """Give the revoked partitions' events in flight up to `kafka.revoke_drain_s` to be answered, so that
        the commit that follows covers them and their new owner does not answer them again."""
        deadline = time.monotonic() + self.settings.kafka.revoke_drain_s
        while self.tracker.unanswered_count(revoked) and time.monotonic() < deadline:
            await asyncio.sleep(REVOKE_CHECK_S)

    def forget(self, revoked: set[TopicPartition]) -> None:
        """Revoked partitions are no longer ours to answer or commit (their late answers are ignored)."""
        self.tracker.forget(revoked)
        if not self.tracker.unanswered_count():
            self.all_answered.set()

    def answered(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """The record's answer is on the topic: its offset may be committed, and it makes room."""
        self.tracker.answered(TopicPartition(record.topic, record.partition), record.offset)
        unanswered = self.tracker.unanswered_count()
        if self.paused and unanswered <= self.resume_at:
            self.room.set()
        if not unanswered:
            self.all_answered.set()

    @property
    def resume_at(self) -> int:
        return self.settings.batch.max_in_flight_events // 2

    def apply_backpressure(self) -> None:
        """Pause every partition at `max_in_flight_events` unanswered, resume at half of it. While paused
        the worker does not poll for records at all: it waits for the answers that make room."""
        in_flight = self.tracker.unanswered_count()
        self.metrics.in_flight.set(in_flight)
        limit = self.settings.batch.max_in_flight_events
        if in_flight >= limit:
            self.consumer.pause(*self.consumer.assignment())
            if not self.paused:
                self.metrics.pauses.inc()
                log.info("backpressure_pause", in_flight=in_flight, limit=limit)
                self.room.clear()
            self.paused = True
        elif self.paused and in_flight <= self.resume_at:
            self.consumer.resume(*self.consumer.paused())
            self.paused = False
            log.info("backpressure_resume", in_flight=in_flight)
        self.metrics.paused.set(int(self.paused))

    async def observe_lag(self) -> None:
        for tp in self.consumer.assignment():
            try:  # position() can wait; a rebalance meanwhile unassigns tp, and aiokafka asserts on it
                position = await self.consumer.position(tp)
                highwater = self.consumer.highwater(tp)
            except (KafkaError, AssertionError, IllegalStateError):
                continue
            if highwater is not None:
                self.metrics.lag.labels(str(tp.partition)).set(max(0, highwater - position))
