"""Produce records from a file and tail a topic: for people wiring guardstream into a pipeline."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import ValidationError

from schemas.events import ChatEvent
from workers.kafka_clients import as_kafka_settings, client_options, stop_consumer
from workers.settings import KafkaSettings


class InvalidInputLine(ValueError):
    """A line of the produce file is not a valid ChatEvent."""


def read_events(path: Path) -> list[ChatEvent]:
    """JSON Lines of ChatEvents; every line is validated before anything is sent."""
    events = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            events.append(ChatEvent.model_validate_json(line))
        except ValidationError as exc:
            raise InvalidInputLine(f"{path}:{number}: {exc.errors()[0]['msg']}") from exc
    return events


async def produce_events(kafka: KafkaSettings | str, topic: str, events: list[ChatEvent]) -> int:
    """Publish events keyed by conversation id, so a conversation stays in order on one partition.
    `kafka` is the settings, or a bare bootstrap address for a plaintext broker (the local one)."""
    records = [(e.conversation_id.encode(), e.model_dump_json().encode()) for e in events]
    return await produce_raw(kafka, topic, records)


async def produce_raw(kafka: KafkaSettings | str, topic: str, records: list[tuple[bytes | None, bytes]]) -> int:
    """Publish (key, value) records and wait until the broker has acknowledged every one."""
    producer = AIOKafkaProducer(**client_options(as_kafka_settings(kafka)), acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in records]
        for future in futures:
            await future
    finally:
        await producer.stop()
    return len(records)


async def tail_topic(kafka: KafkaSettings | str, topic: str, from_beginning: bool) -> AsyncIterator[dict[str, object]]:
    consumer = AIOKafkaConsumer(
        topic,
        **client_options(as_kafka_settings(kafka)),
        group_id=None,
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    await consumer.start()
    try:
        async for record in consumer:
            try:
                value: object = json.loads(record.value) if record.value else None
            except (UnicodeDecodeError, json.JSONDecodeError):
                value = repr(record.value)
            yield {"partition": record.partition, "offset": record.offset, "value": value}
    finally:
        await stop_consumer(consumer)
