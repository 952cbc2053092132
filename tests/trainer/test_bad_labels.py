"""A label the trainer cannot resolve ends as that label's counted skip; the agent goes on consuming, and
readiness says what is wrong while it lasts. On the real broker and moto S3."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiokafka.codec
import pytest
from aiokafka import AIOKafkaProducer

from schemas.events import AuditLabel, ChatEvent, SourceRef
from tests.factories import BENIGN, HARMFUL, event
from tests.trainer.conftest import judged, label_for, publish_labels, running_trainer, wait_for_examples
from tests.trainer.label_outcomes import committed, skipped
from tests.waiting import wait_until
from topics.local_broker import free_loopback_port
from topics.records import RecordReader
from topics.registry import TopicNames
from trainer.collect import LabelCollector
from trainer.dataset import AuditExample
from trainer.metrics import TrainerMetrics
from trainer.resolve import Resolver
from trainer.service import TrainerService
from trainer.settings import LabelSettings, TrainerSettings
from workers.guard.lite import LiteGuard
from workers.settings import WorkerSettings


async def gzipped_event(settings: WorkerSettings, text: str) -> tuple[ChatEvent, SourceRef]:
    """An event published gzip-compressed, and where it landed."""
    e = event(text, conversation="gz")
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, compression_type="gzip")
    await producer.start()
    try:
        topic = TopicNames(settings.kafka.topic_prefix).events
        sent = await producer.send_and_wait(topic, e.model_dump_json().encode(), key=b"gz")
    finally:
        await producer.stop()
    return e, SourceRef(topic=sent.topic, partition=sent.partition, offset=sent.offset)


async def judged_traffic(settings: WorkerSettings, lite_guard: LiteGuard) -> tuple[list[ChatEvent], dict[str, Any]]:
    """Benign and harmful events, each with its verdict record."""
    events = [event(t, conversation=f"c{i}") for i, t in enumerate(BENIGN + HARMFUL)]
    return events, await judged(settings, lite_guard, events)


def labels_of(events: list[ChatEvent], records: dict[str, Any]) -> list[AuditLabel | bytes]:
    return [label_for(records[e.event_id], e.text in HARMFUL) for e in events]


async def stored_when_settled(trainer: TrainerService) -> set[str]:
    """Once no label waits and the trainer is ready: the event ids in the data set."""
    await wait_until(lambda: trainer.status()["pending_labels"] == 0 and trainer.ready, timeout_s=30,
                     what="every label stored and the trainer ready")
    return {example.label.event_id for example in await trainer.dataset.load()}


async def test_a_label_whose_event_cannot_be_read_is_skipped_after_a_bounded_retry_and_labels_after_it_are_stored(
    settings: WorkerSettings, trainer_settings: TrainerSettings, lite_guard: LiteGuard,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    events, records = await judged_traffic(settings, lite_guard)
    unreadable, where = await gzipped_event(settings, "an event in a batch the trainer cannot decode")
    before, after = events[:3], events[3:]
    labels = labels_of(before, records)
    labels.append(AuditLabel(event_id=unreadable.event_id, request_harmful=False, labeller="r", event=where))
    trainer_settings.labels.give_up_after_s = 2.0
    trainer_settings.labels.retry_backoff_max_s = 0.2
    await publish_labels(trainer_settings, labels)
    # As without the gzip library: reading the event raises UnsupportedCodecError (a KafkaError) every time.
    monkeypatch.setattr(aiokafka.codec, "has_gzip", lambda: False)

    async with running_trainer(trainer_settings) as trainer:
        await wait_until(lambda: not trainer.ready, timeout_s=30, what="readiness down while the label is retried")
        assert any("UnsupportedCodecError" in problem for problem in trainer.problems()), trainer.problems()
        await wait_until(lambda: skipped(trainer, "broker_error_lasting") == 1, timeout_s=30,
                         what="the unreadable label given up and counted")
        await publish_labels(trainer_settings, labels_of(after, records))
        await wait_for_examples(trainer, len(events))
        stored = await stored_when_settled(trainer)
    assert stored == {e.event_id for e in events}
    assert await committed(trainer_settings) == len(events) + 1


def failing_for(event_id: str, original: Callable[..., object]) -> Callable[..., object]:
    """Resolver.read_event with a bug that only one event meets."""
    async def read_event(self: Resolver, ref: SourceRef, expected: str) -> ChatEvent:
        if expected == event_id:
            raise RuntimeError("a bug met on one record")
        return await original(self, ref, expected)  # type: ignore[misc, no-any-return]
    return read_event


async def test_a_label_whose_resolution_raises_is_a_counted_skip_and_the_agent_keeps_consuming(
    settings: WorkerSettings, trainer_settings: TrainerSettings, lite_guard: LiteGuard,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    events, records = await judged_traffic(settings, lite_guard)
    poisoned = events[2]
    monkeypatch.setattr(Resolver, "read_event", failing_for(poisoned.event_id, Resolver.read_event))
    labels = labels_of(events, records)

    async with running_trainer(trainer_settings) as trainer:
        await publish_labels(trainer_settings, labels[:3])
        await wait_until(lambda: skipped(trainer, "resolve_failed") == 1, timeout_s=30, what="the bad label counted")
        await publish_labels(trainer_settings, labels[3:])
        await wait_for_examples(trainer, len(events) - 1)
        stored = await stored_when_settled(trainer)
    assert stored == {e.event_id for e in events} - {poisoned.event_id}
    assert await committed(trainer_settings) == len(events)


async def test_a_crash_of_the_label_agent_turns_readiness_down_and_faust_restarts_it(
    settings: WorkerSettings, trainer_settings: TrainerSettings, lite_guard: LiteGuard,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    events = [event(t, conversation=f"c{i}") for i, t in enumerate(BENIGN)]
    records = await judged(settings, lite_guard, events)
    original, calls = LabelCollector.example, []

    async def crashes_once(self: LabelCollector, raw: bytes | None, source: SourceRef) -> AuditExample | None:
        calls.append(source)
        if len(calls) == 1:
            raise RuntimeError("a bug outside the per-label guard")
        return await original(self, raw, source)

    monkeypatch.setattr(LabelCollector, "example", crashes_once)
    async with running_trainer(trainer_settings) as trainer:
        await publish_labels(trainer_settings, [label_for(records[events[0].event_id], False)])
        await wait_until(lambda: not trainer.ready, timeout_s=30, what="readiness down after the crash")
        assert "the label agent crashed 1 times (last: RuntimeError" in trainer.problems()[0]
        await publish_labels(trainer_settings, [label_for(records[e.event_id], False) for e in events[1:]])
        await wait_for_examples(trainer, len(events) - 1)
        assert not trainer.ready


async def test_a_label_is_not_given_up_while_the_broker_does_not_answer(
    settings: WorkerSettings, trainer_settings: TrainerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    unreadable, where = await gzipped_event(settings, "an event read while the broker seems down")
    label = AuditLabel(event_id=unreadable.event_id, request_harmful=False, labeller="r", event=where)
    monkeypatch.setattr(aiokafka.codec, "has_gzip", lambda: False)
    down = trainer_settings.kafka.model_copy(update={"bootstrap_servers": f"127.0.0.1:{free_loopback_port()}"})
    metrics = TrainerMetrics()
    reader = RecordReader(trainer_settings.kafka, timeout_s=1.0)
    await reader.start()
    try:
        collector = LabelCollector(Resolver(reader, trainer_settings.limits), down,
                                   LabelSettings(give_up_after_s=0.2, retry_backoff_max_s=0.1), metrics)
        taking = asyncio.create_task(collector.example(label.model_dump_json().encode(), where))
        await wait_until(lambda: "the broker does not answer" in (collector.problem or ""), timeout_s=30,
                         what="the label waiting for the broker")
        await wait_until(lambda: (metrics.registry.get_sample_value("guardstream_trainer_resolve_retries_total")
                                  or 0) >= 5, timeout_s=30, what="tried again past the bound")
        assert not taking.done()
        collector.kafka = trainer_settings.kafka  # the broker answers again: the record is at fault
        assert await asyncio.wait_for(taking, timeout=30) is None
    finally:
        await reader.stop()
    assert metrics.registry.get_sample_value("guardstream_trainer_labels_unresolvable_total",
                                             {"reason": "broker_error_lasting"}) == 1
    assert collector.problem is None
