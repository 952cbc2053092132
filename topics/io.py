"""Produce records to a topic and tail one: for people wiring guardstream into a pipeline, the demos and the
tests. Tailing a topic that does not exist is an error (`TopicMissing`, exit 3), not a wait."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas.events import ChatEvent
from topics.clients import as_kafka_settings, client_options, stop_consumer
from topics.settings import KafkaSettings


class TopicMissing(LookupError):
    """The topic asked for is not in the cluster."""

    exit_code = 3  # a command ends with runtime.cli_errors.Exit.INPUT


async def produce_events(kafka: KafkaSettings | str, topic: str, events: list[ChatEvent]) -> int:
    """Publish events keyed by conversation id, so a conversation stays in order on one partition.
    `kafka` is the settings, or a bare bootstrap address for a plaintext broker (the local one)."""
    records = [(e.conversation_id.encode(), e.model_dump_json().encode()) for e in events]
    return await produce_raw(kafka, topic, records)


async def produce_raw(kafka: KafkaSettings | str, topic: str, records: list[tuple[bytes | None, bytes]]) -> int:
    """Publish (key, value) records and wait until the broker has acknowledged every one."""
    producer = AIOKafkaProducer(**client_options(as_kafka_settings(kafka)), acks="all", linger_ms=5)
    try:  # a start that fails still stops the client (no "Unclosed AIOKafkaProducer" after the error)
        await producer.start()
        futures = [await producer.send(topic, value, key=key) for key, value in records]
        for future in futures:
            await future
    finally:
        await producer.stop()
    return len(records)


async def tail_topic(kafka: KafkaSettings | str, topic: str, from_beginning: bool) -> AsyncIterator[dict[str, object]]:
    """The topic's records as they come, until the caller stops; TopicMissing if there is no such topic."""
    consumer = AIOKafkaConsumer(
        **client_options(as_kafka_settings(kafka)),
        group_id=None,
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    try:
        await consumer.start()
        if topic not in await consumer.topics():
            raise TopicMissing(f"topic {topic} does not exist: check its name, or create guardstream's topics "
                               "with `guardstream topics create`")
        consumer.subscribe([topic])
        async for record in consumer:
            try:
                value: object = json.loads(record.value) if record.value else None
            except (UnicodeDecodeError, json.JSONDecodeError):
                value = repr(record.value)
            yield {"partition": record.partition, "offset": record.offset, "value": value}
    finally:
        await stop_consumer(consumer)
