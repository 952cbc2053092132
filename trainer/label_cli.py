"""`guardstream label`: publish audit labels (`AuditLabel`) to the audit labels topic, for the trainer.

A label is worth publishing only if the trainer can resolve it (`trainer/resolve.py`): it must carry the
coordinates of the verdict it judges or of its event. Labels given by event id get them here: the verdicts
topic is read from its start for each id's latest verdict (its coordinates, and through its `source` the
event's), and the events topic for the ids no verdict names. A label that already carries coordinates is
published as given. It is all or nothing: a bad line or an id found nowhere publishes no label.

Reading "to the end" means until the topic has been quiet for a moment, not up to the broker's end offsets,
which the local broker reports wrongly after multi-record batches.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import typer
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from pydantic import ValidationError

from runtime.cli_errors import CommandFailed, Exit, validation_message
from runtime.logs import configure_logging
from schemas.events import AuditLabel, ChatEvent, SourceRef, Verdict
from topics.clients import client_options, stop_consumer
from topics.io import produce_raw
from topics.registry import TopicNames
from topics.settings import KafkaSettings
from trainer.settings import TrainerSettings

QUIET_S = 1.0  # a poll this long with nothing new, at or past the broker's end offsets: the end
MAX_QUIET_S = 5.0  # …or this long, whatever the end offsets say (the local broker's can be too high)


class Judgement(StrEnum):
    harmful = "harmful"
    unharmful = "unharmful"


class LabelFileInvalid(CommandFailed):
    exit_code = Exit.INPUT


class NotFound(CommandFailed):
    """Event ids with neither a verdict nor an event on the topics: their labels could never be resolved."""

    exit_code = Exit.INPUT


@dataclass(frozen=True)
class Coordinates:
    verdict: SourceRef | None
    event: SourceRef | None


def read_labels(path: Path) -> list[AuditLabel]:
    """The file's labels, every line validated before any is published; LabelFileInvalid names the line."""
    labels = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            labels.append(AuditLabel.model_validate_json(line))
        except ValidationError as exc:
            raise LabelFileInvalid(f"{path}:{number}: {validation_message(exc)}; nothing was published") from exc
    if not labels:
        raise LabelFileInvalid(f"{path}: no labels in the file")
    return labels


def label_of(event_id: str, request: Judgement, response: Judgement | None, reviewer: str, note: str) -> AuditLabel:
    try:
        return AuditLabel(event_id=event_id, request_harmful=request is Judgement.harmful,
                          response_harmful=None if response is None else response is Judgement.harmful,
                          labeller=reviewer, note=note)
    except ValidationError as exc:
        raise CommandFailed(validation_message(exc), Exit.USAGE) from exc


async def read_topic(kafka: KafkaSettings, topic: str) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Every record of `topic`, from the start of each partition until the topic is quiet."""
    consumer = AIOKafkaConsumer(**client_options(kafka), group_id=None, enable_auto_commit=False,
                                fetch_max_wait_ms=kafka.fetch_max_wait_ms)
    try:
        await consumer.start()  # inside: a start that fails still closes the client
        if topic not in await consumer.topics():
            raise CommandFailed(f"topic {topic} does not exist on {kafka.bootstrap_servers}; check "
                                "GUARDSTREAM_KAFKA__TOPIC_PREFIX, or create it with `guardstream topics create`")
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        quiet = 0.0
        while quiet < MAX_QUIET_S:
            batch = await consumer.getmany(*partitions, timeout_ms=int(QUIET_S * 1000))
            for records in batch.values():
                for record in records:
                    yield record
            quiet = 0.0 if batch else quiet + QUIET_S
            if not batch and await _at_ends(consumer, ends):
                return
    finally:
        await stop_consumer(consumer)


async def _at_ends(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    return all([await consumer.position(tp) >= end for tp, end in ends.items()])


async def find_coordinates(kafka: KafkaSettings, event_ids: set[str]) -> dict[str, Coordinates]:
    """Where each id's latest verdict and its event are; ids found on neither topic are left out."""
    names = TopicNames(kafka.topic_prefix)
    found: dict[str, Coordinates] = {}
    async for record in read_topic(kafka, names.verdicts):
        verdict = _parsed(Verdict, record.value)
        if verdict is not None and verdict.event_id in event_ids and verdict.source is not None:
            found[verdict.event_id] = Coordinates(_at(record), verdict.source)
    missing = event_ids - found.keys()
    if missing:
        async for record in read_topic(kafka, names.events):
            event = _parsed(ChatEvent, record.value)
            if event is not None and event.event_id in missing:
                found[event.event_id] = Coordinates(None, _at(record))
    return found


def _parsed(model: type[Verdict] | type[ChatEvent], raw: bytes | None) -> Verdict | ChatEvent | None:
    try:
        return model.model_validate_json(raw or b"")
    except ValidationError:
        return None  # someone else's record: not what a label can point at


def _at(record: ConsumerRecord[bytes, bytes]) -> SourceRef:
    return SourceRef(topic=record.topic, partition=record.partition, offset=record.offset)


async def with_coordinates(kafka: KafkaSettings, labels: list[AuditLabel]) -> tuple[list[AuditLabel], int]:
    """The labels, each with coordinates the trainer can resolve, and how many were looked up; NotFound
    (naming the ids) if some cannot have any."""
    wanted = {label.event_id for label in labels if label.verdict is None and label.event is None}
    if not wanted:
        return labels, 0
    found = await find_coordinates(kafka, wanted)
    missing = sorted(wanted - found.keys())
    if missing:
        names = TopicNames(kafka.topic_prefix)
        raise NotFound(f"no verdict or event on {names.verdicts} or {names.events} for event id(s) "
                       f"{', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}; publish and judge the events "
                       "first (check GUARDSTREAM_KAFKA__TOPIC_PREFIX); nothing was published")
    placed = [label if label.event_id not in wanted else
              label.model_copy(update={"verdict": found[label.event_id].verdict, "event": found[label.event_id].event})
              for label in labels]
    return placed, sum(1 for label in labels if label.event_id in wanted)


async def publish_labels(kafka: KafkaSettings, labels: list[AuditLabel]) -> tuple[list[AuditLabel], int]:
    """Give the labels their coordinates, then publish them keyed by event id; what was published."""
    placed, looked_up = await with_coordinates(kafka, labels)
    topic = TopicNames(kafka.topic_prefix).audit_labels
    await produce_raw(kafka, topic, [(label.event_id.encode(), label.model_dump_json().encode()) for label in placed])
    return placed, looked_up


def describe(label: AuditLabel) -> str:
    judged = f"request {'harmful' if label.request_harmful else 'unharmful'}"
    if label.response_harmful is not None:
        judged += f", response {'harmful' if label.response_harmful else 'unharmful'}"
    where = label.verdict or label.event
    assert where is not None
    kind = "verdict" if label.verdict is not None else "event"
    return f"{label.event_id}: {judged} by {label.labeller} ({kind} {where.topic}[{where.partition}]@{where.offset})"


def label_command(
    file: Path | None = typer.Argument(None, dir_okay=False, help="JSON Lines of AuditLabels (event_id, "
                                       "request_harmful, labeller[, response_harmful, note]); labels without "
                                       "`verdict` or `event` coordinates are looked up by event id"),
    event_id: str | None = typer.Option(None, "--event-id", help="label this one event instead of a file"),
    request: Judgement | None = typer.Option(None, "--request", help="with --event-id: the request's label"),
    response: Judgement | None = typer.Option(None, "--response", help="with --event-id: the response's label"),
    reviewer: str | None = typer.Option(None, "--reviewer", help="with --event-id: who labels"),
    note: str = typer.Option("", "--note", help="with --event-id: a note kept with the label"),
) -> None:
    """Publish audit labels for the trainer, from a file or for one event by id."""
    if file is not None and event_id is None:
        labels = read_labels(file)
    elif file is None and event_id is not None and request is not None and reviewer is not None:
        labels = [label_of(event_id, request, response, reviewer, note)]
    else:
        raise CommandFailed("give a JSON Lines file of labels, or --event-id ID with --request harmful|unharmful "
                            "and --reviewer NAME", Exit.USAGE)
    settings = TrainerSettings()
    configure_logging(settings.observability.log_format, "warning")  # the command's own lines, not the clients'
    kafka = settings.kafka
    placed, looked_up = asyncio.run(publish_labels(kafka, labels))
    for label in placed:
        typer.echo(describe(label))
    typer.echo(f"published {len(placed)} label{'s' if len(placed) != 1 else ''} to {TopicNames(kafka.topic_prefix).audit_labels} "
               f"({looked_up} found by event id); `guardstream trainer` stores them in its data set")
