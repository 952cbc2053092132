"""Labels out: publish the store's due labels to `moderation.audit.labels` as `AuditLabel`s, keyed by event id.

A label is due once its undo window has passed. The publisher claims due labels in the store, sends them,
waits for the broker's acknowledgement, then marks them published; a failed send releases them for the next
round. A publisher that dies between send and mark leaves a stale claim that the next one takes over, so a
label may be published twice but is never lost (the trainer keeps the latest label of each event).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from console.metrics import ConsoleMetrics
from console.store import ReviewStore
from topics.registry import TopicNames
from workers.kafka_clients import client_options
from workers.settings import KafkaSettings

log = structlog.get_logger("guardstream.console.outbox")


class LabelPublisher:
    def __init__(self, kafka: KafkaSettings, store: ReviewStore, metrics: ConsoleMetrics,
                 interval_s: float = 0.5) -> None:
        self.store = store
        self.metrics = metrics
        self.interval_s = interval_s
        self.topic = TopicNames(kafka.topic_prefix).audit_labels
        self.kafka = kafka
        self.producer: AIOKafkaProducer | None = None  # made in run(): aiokafka wants a running loop
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
                await self.publish_due()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.interval_s)
            await self.publish_due()  # what is due at shutdown goes out; the rest waits in the store
        finally:
            await self.producer.stop()

    async def publish_due(self) -> int:
        assert self.producer is not None, "run() publishes"
        due = await asyncio.to_thread(self.store.claim_due_labels, datetime.now(UTC))
        if not due:
            return 0
        try:
            sent = [await self.producer.send(self.topic, key=d.label.event_id.encode(),
                                             value=d.label.model_dump_json().encode()) for d in due]
            await asyncio.gather(*sent)
        except KafkaError as exc:
            self.metrics.label_publish_errors.labels(type(exc).__name__).inc()
            log.warning("labels not published; retrying", labels=len(due), error=type(exc).__name__)
            await asyncio.to_thread(self.store.release, [d.id for d in due])
            return 0
        await asyncio.to_thread(self.store.published, [d.id for d in due], datetime.now(UTC))
        self.metrics.labels_published.inc(len(due))
        return len(due)
