"""Produce records from a file and tail a topic: for people wiring guardstream into a pipeline.

A produce file is read a line at a time (`workers/input_lines.py`): `event_lines` keeps the good lines and
names each bad one (line, field, problem), so `produce` can publish the good ones; `read_events` is the
strict reading, the first bad line an error. Tailing a topic that does not exist is an error, not a wait.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import ValidationError

from schemas.events import ChatEvent
from workers.cli_errors import CommandFailed, Exit
from workers.input_lines import BadInputLine, BadLine, bad_line, numbered_lines
from workers.kafka_clients import as_kafka_settings, client_options, stop_consumer
from workers.settings import KafkaSettings


class InvalidInputLine(BadInputLine, ValueError):
    """A line of the produce file is not a valid ChatEvent; the message names file:line and the field."""


class TopicMissing(CommandFailed):
    """The topic asked for is not in the cluster."""

    exit_code = Exit.INPUT


def event_lines(path: Path) -> tuple[list[ChatEvent], list[BadLine]]:
    """The file's good lines as ChatEvents, and its bad ones, each in order."""
    events, bad = [], []
    for number, text in numbered_lines(path):
        if isinstance(text, BadLine):
            bad.append(text)
            continue
        try:
            events.append(ChatEvent.model_validate_json(text))
        except ValidationError as exc:
            bad.append(bad_line(path, number, exc, text))
    return events, bad


def read_events(path: Path) -> list[ChatEvent]:
    """JSON Lines of ChatEvents, every line validated before anything is sent: the first bad one raises."""
    events, bad = event_lines(path)
    if bad:
        raise InvalidInputLine(bad[0])
    return events


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
