"""Backfill: a range of the events topic re-moderated by a chosen backend into a separate verdict topic.

The batch's records are decoded as the worker decodes them; events are judged without a broker in the
path (`workers/offline.py`) and each verdict, with `source` pointing at its record, is produced (acks=all,
keyed like the worker's answers) before the position moves on. A record that is not an event is counted
by reason and logged, never produced: the live dead-letter topic already has it. An event over a limit
gets an error verdict, as in the worker. The live verdict topic and the source topic are refused as
targets unless asked for, so a backfill cannot mix its answers into what consumers read as live.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

from schemas.events import ChatEvent, Verdict
from topics.ranges import RangeSpec, RateLimit, ReplaySummary, open_position, replay_range
from topics.registry import TopicNames
from workers.decode import check_limits, decode_event
from workers.emit import error_verdict
from workers.errors import GuardstreamError
from workers.guard.base import GuardBackend
from workers.kafka_clients import client_options, stop_consumer
from workers.offline import OfflineModerator
from workers.settings import WorkerSettings
from workers.worker import answer_key, record_source

log = structlog.get_logger("guardstream.replay")


class ReplayRefused(ValueError):
    """A backfill whose target would mix its answers into a live topic or its own source."""


def check_target(settings: WorkerSettings, source: str, target: str, allow_live_topic: bool) -> None:
    if target == source:
        raise ReplayRefused(f"the target {target!r} is the topic being replayed")
    if target == TopicNames(settings.kafka.topic_prefix).verdicts and not allow_live_topic:
        raise ReplayRefused(f"{target!r} is the live verdict topic; backfill into a topic of its own "
                            "(or allow the live topic explicitly)")


class Backfill:
    """The replay handler: judge a batch of event records and produce their verdicts to `target`."""

    def __init__(self, settings: WorkerSettings, backend: GuardBackend, producer: AIOKafkaProducer, target: str):
        self.settings = settings
        self.moderator = OfflineModerator(backend, settings.guard, settings.fetch)
        self.producer = producer
        self.target = target
        self.counts: Counter[str] = Counter()

    async def close(self) -> None:
        await self.moderator.__aexit__()

    async def __call__(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        judged: list[tuple[ConsumerRecord[bytes, bytes], ChatEvent]] = []
        verdicts: list[tuple[ConsumerRecord[bytes, bytes], Verdict]] = []
        for record in records:
            try:
                event = decode_event(record.value, self.settings.limits)
            except GuardstreamError as exc:
                self.counts[f"undecodable:{exc.code}"] += 1
                log.warning("replay_record_skipped", code=exc.code, partition=record.partition, offset=record.offset)
                continue
            try:
                check_limits(event, self.settings.limits)
            except GuardstreamError as exc:
                verdicts.append((record, error_verdict(event, exc, self.moderator.model,
                                                       self.settings.guard.policy_version, {})))
                continue
            judged.append((record, event))
        answers = await self.moderator.moderate([event for _, event in judged])
        verdicts += [(record, verdict) for (record, _), verdict in zip(judged, answers, strict=True)]
        await self._produce(verdicts)

    async def _produce(self, verdicts: list[tuple[ConsumerRecord[bytes, bytes], Verdict]]) -> None:
        futures = []
        for record, verdict in verdicts:
            answered = verdict.model_copy(update={"source": record_source(record, self.settings.limits)})
            key = answer_key(record.key, self.settings.limits)
            futures.append(await self.producer.send(self.target, answered.model_dump_json().encode(), key=key))
            self.counts["error_verdicts" if verdict.error else "verdicts"] += 1
        await asyncio.gather(*futures)


async def run_backfill(settings: WorkerSettings, backend: GuardBackend, source: str, target: str, spec: RangeSpec,
                       position_file: Path | None, rate: RateLimit, batch_size: int, idle_timeout_s: float = 10.0,
                       max_batches: int | None = None) -> ReplaySummary:
    """Backfill `spec`'s range of `source` into `target` with `backend` (the caller's, not closed here)."""
    consumer = AIOKafkaConsumer(**client_options(settings.kafka), group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    producer = AIOKafkaProducer(**client_options(settings.kafka), acks="all", linger_ms=5)
    await consumer.start()
    await producer.start()
    handler = Backfill(settings, backend, producer, target)
    try:
        position = await open_position(consumer, source, spec, position_file)
        summary = await replay_range(consumer, position, handler, batch_size=batch_size, rate=rate,
                                     description=f"backfill {source} → {target}", idle_timeout_s=idle_timeout_s,
                                     max_batches=max_batches)
    finally:
        await handler.close()
        await producer.stop()
        await stop_consumer(consumer)
    summary.counts = dict(handler.counts)
    return summary
