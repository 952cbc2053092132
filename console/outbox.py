"""Labels out: publish the store's due labels to `moderation.audit.labels` as `AuditLabel`s, keyed by event id.

A label is due once its undo window has passed. The publisher claims due labels in the store, sends them,
waits for the broker's acknowledgement, then marks them published; a failed send releases them for the next
round. A label sent whose mark fails (the store down at that moment) is marked at the start of the next round,
before anything is claimed, and never sent again. A publisher that dies between send and mark leaves a stale
claim that the next one takes over, so a label may be published twice but is never lost (the trainer keeps the
latest label of each event).

A round that fails, the broker's trouble or the review store's (down, hung past `database_call_timeout_s`, or
SQLite's write lock held by another process), is counted by error type and retried after a growing backoff for
as long as it takes; /readyz says so meanwhile. Labels wait in the store: none is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from sqlalchemy.exc import SQLAlchemyError

from console.failing import FailureStreak
from console.metrics import ConsoleMetrics
from console.settings import ConsoleSettings
from console.store import DueLabel, ReviewStore, StoreNotAnswering, answered_within
from topics.clients import client_options
from topics.registry import TopicNames

log = structlog.get_logger("guardstream.console.outbox")
UNAVAILABLE = (KafkaError, SQLAlchemyError, StoreNotAnswering)  # the broker's or the store's: the round is retried


class LabelPublisher:
    def __init__(self, settings: ConsoleSettings, store: ReviewStore, metrics: ConsoleMetrics,
                 interval_s: float = 0.5) -> None:
        self.store = store
        self.metrics = metrics
        self.interval_s = interval_s
        self.store_timeout_s = settings.database_call_timeout_s
        self.kafka = settings.kafka
        self.topic = TopicNames(self.kafka.topic_prefix).audit_labels
        self.failures = FailureStreak("label publisher", "labels wait in the review store",
                                      metrics.label_publish_errors, settings.backoff_base_s, settings.backoff_max_s)
        self.producer: AIOKafkaProducer | None = None  # made in run(): aiokafka wants a running loop
        self._unmarked: list[int] = []  # labels the broker acknowledged whose mark in the store failed
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()

    def wake(self) -> None:
        """A label was given: look sooner than the next interval (it may have no undo window)."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        self.producer = AIOKafkaProducer(**client_options(self.kafka), acks="all", linger_ms=0)
        await self.producer.start()
        try:
            while not self._stopping.is_set():
                wait_s = await self.publish_round()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait_s)
            await self.publish_round()  # what is due at shutdown goes out; the rest waits in the store
        finally:
            await self.producer.stop()

    async def publish_round(self) -> float:
        """Publish what is due; the wait before the next round: the interval, or after a failure the backoff."""
        try:
            await self.publish_due()
        except UNAVAILABLE as exc:
            wait_s = self.failures.failed(exc)
            log.warning("labels not published; retrying", error=type(exc).__name__, failures=self.failures.count,
                        retry_in_s=wait_s)
            return wait_s
        self.failures.ended()
        return self.interval_s

    async def publish_due(self) -> None:
        assert self.producer is not None, "run() publishes"
        if self._unmarked:  # on the topic already: marked, never claimed and sent again
            await self._mark_published()
        due = await answered_within(self.store_timeout_s, self.store.claim_due_labels, datetime.now(UTC))
        if not due:
            return
        try:
            await self._send(due)
        except KafkaError:
            await answered_within(self.store_timeout_s, self.store.release, [d.id for d in due])  # next round's
            raise
        self._unmarked = [d.id for d in due]
        self.metrics.labels_published.inc(len(due))
        await self._mark_published()

    async def _mark_published(self) -> None:
        await answered_within(self.store_timeout_s, self.store.published, self._unmarked, datetime.now(UTC))
        self._unmarked = []

    async def _send(self, due: list[DueLabel]) -> None:
        """Send every label, then wait for the broker's acknowledgement of each."""
        assert self.producer is not None
        sent = [await self.producer.send(self.topic, key=d.label.event_id.encode(),
                                         value=d.label.model_dump_json().encode()) for d in due]
        await asyncio.gather(*sent)
