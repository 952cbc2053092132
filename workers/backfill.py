"""Backfill: a range of the events topic re-moderated by a chosen backend into a separate verdict topic.

The batch's records are decoded as the worker decodes them; events are judged without a broker in the
path (`workers/offline.py`) and each verdict, with `source` pointing at its record, is produced (acks=all,
keyed like the worker's answers) before the position moves on. A record that is not an event is counted
by reason and logged, never produced: the live dead-letter topic already has it. An event over a limit
gets an error verdict, as in the worker. The target must be a topic of its own: the live verdict topic
is refused unless asked for, so a backfill cannot mix its answers into what consumers read as live; the
source and every other topic of the deployment (events, dead letters, audit labels, releases) always are,
since their readers would take a verdict for a record of theirs. A target that does not exist yet is created
(`ensure_target`) with as many partitions as the source, so verdicts keep the events' partitioning, or, when
creating is not allowed, refused: a broker that creates topics on first write would pick its own count.

Each verdict names the model that judged it. With the configured backend, that is the configured model
name and version; a backfill given another backend (`--backend`) names that backend and the model it
loaded (`judging_model`), since the configured name and version describe a model that judged nothing.
Each event is judged at its tenant's operating point (`guard.tenant_operating_points`), which its verdict names.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient

from runtime.cli_errors import Refused
from schemas.events import ChatEvent, ModelRef, Verdict
from topics.admin import count_brokers, create_topics
from topics.clients import client_options, stop_consumer
from topics.ranges import BadReplayRange, RangeSpec, RateLimit, ReplaySummary, open_position, replay_range
from topics.registry import WEEK_MS, TopicNames, TopicSpec, choose_replication, durability_configs, topic_specs
from topics.settings import KafkaSettings
from workers.answering import answer_key, record_source
from workers.decode import check_limits, decode_event
from workers.emit import error_verdict
from workers.errors import GuardstreamError
from workers.guard.base import GuardBackend
from workers.offline import OfflineModerator
from workers.settings import GuardSettings, WorkerSettings, point_policy

log = structlog.get_logger("guardstream.replay")


class ReplayRefused(Refused):
    """A backfill whose target would mix its answers into a live topic or its own source, or a target
    that does not exist when creating it is not allowed."""


def check_target(settings: WorkerSettings, source: str, target: str, allow_live_topic: bool) -> None:
    topics = TopicNames(settings.kafka.topic_prefix)
    if target == source:
        raise ReplayRefused(f"the target {target!r} is the topic being replayed")
    if target == topics.verdicts:
        if not allow_live_topic:
            raise ReplayRefused(f"{target!r} is the live verdict topic; backfill into a topic of its own "
                                "(or give --allow-live-topic to write the live one)")
        return
    if target in {spec.name for spec in topic_specs(topics)}:  # every other topic of the deployment, present or to come
        raise ReplayRefused(f"{target!r} does not hold verdicts; backfill into a topic of its own")


async def ensure_target(kafka: KafkaSettings, source: str, target: str, create: bool) -> int | None:
    """The partitions of `target` if this created it (as many as `source` has), None if it exists; refused
    when it is missing and `create` is false."""
    admin = AIOKafkaAdminClient(**client_options(kafka))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        if target in existing:
            return None
        if not create:
            raise ReplayRefused(f"the target topic {target!r} does not exist; create it, or leave out "
                                "--no-create-topic to create it with the source's partition count")
        if source not in existing:
            raise BadReplayRange(f"topic {source!r} does not exist")
        partitions = len((await admin.describe_topics([source]))[0]["partitions"])
    finally:
        await admin.close()
    replication = choose_replication(await count_brokers(kafka), kafka.replication_factor)
    await create_topics(kafka, [TopicSpec(target, partitions, replication,
                                          {"retention.ms": WEEK_MS, **durability_configs(replication)})])
    return partitions


def judging_model(configured: GuardSettings, backend: GuardBackend) -> ModelRef:
    """The model whose verdicts `backend` gives: the configured one when it is the configured backend, else
    the backend by name and what it loaded, by the settings it loaded it from."""
    if backend.name == configured.backend:
        return ModelRef(name=configured.model_name, version=configured.model_version)
    return ModelRef(name=backend.name, version=_loaded_model(configured, backend))


def _loaded_model(guard: GuardSettings, backend: GuardBackend) -> str:
    if fingerprint := getattr(backend, "fingerprint", ""):  # the lite heads' digest and thresholds
        return str(fingerprint)
    if backend.name == "openai" and guard.openai_model:  # the name the server serves it under
        return guard.openai_model
    checkpoint = str(guard.model_path)  # transformers, vllm, a cascade's reasoner: each refuses to load without one
    return f"{checkpoint}+{guard.vllm_lora_adapter}" if backend.name == "vllm" and guard.vllm_lora_adapter \
        else checkpoint


class Backfill:
    """The replay handler: judge a batch of event records and produce their verdicts to `target`."""

    def __init__(self, settings: WorkerSettings, backend: GuardBackend, producer: AIOKafkaProducer, target: str):
        self.settings = settings
        model = judging_model(settings.guard, backend)
        guard = settings.guard.model_copy(update={"model_name": model.name, "model_version": model.version})
        self.moderator = OfflineModerator(backend, guard, settings.fetch)
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
                point = self.settings.guard.operating_point_for(event.tenant)
                policy = point_policy(self.settings.guard.policy_version, point)
                verdicts.append((record, error_verdict(event, exc, self.moderator.model, policy, {},
                                                       operating_point=point)))
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
                       max_batches: int | None = None, keep_at: Path | None = None, create_target: bool | None = None,
                       notice: Callable[[str], object] = print) -> ReplaySummary:
    """Backfill `spec`'s range of `source` into `target` with `backend` (the caller's, not closed here); an
    interrupted or unfinished run keeps its position in `position_file`, else at `keep_at`. Once the range is
    known to be readable, a missing target is created (`notice` says so) or refused (`create_target` true or
    false; None: the caller made sure of it)."""
    consumer = AIOKafkaConsumer(**client_options(settings.kafka), group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    producer = AIOKafkaProducer(**client_options(settings.kafka), acks="all", linger_ms=5)
    handler = Backfill(settings, backend, producer, target)
    try:  # starts that fail still stop the clients (no "Unclosed" warnings after the one-line error)
        await consumer.start()
        await producer.start()
        position = await open_position(consumer, source, spec, position_file, idle_timeout_s)
        if create_target is not None and (created := await ensure_target(settings.kafka, source, target,
                                                                         create_target)) is not None:
            notice(f"created the target topic {target} with {created} partitions, as many as {source}")
        summary = await replay_range(consumer, position, handler, batch_size=batch_size, rate=rate,
                                     description=f"backfill {source} → {target}", idle_timeout_s=idle_timeout_s,
                                     max_batches=max_batches, keep_at=keep_at)
    finally:
        await handler.close()
        await producer.stop()
        await stop_consumer(consumer)
    summary.counts = dict(handler.counts)
    return summary
