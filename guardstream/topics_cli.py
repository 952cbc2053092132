"""`guardstream topics ...`, `guardstream produce` (a JSON Lines file of events, read a line at a time: the good
lines are published, each bad one named) and `guardstream tail`, on the Kafka plumbing of `topics/`."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import typer
from pydantic import ValidationError

from runtime.cli_errors import CommandFailed
from runtime.input_lines import BadInputLine, BadLine, PartialInput, bad_line, numbered_lines
from schemas.events import ChatEvent
from topics.admin import TopicCheck, check_topics, count_brokers, create_topics
from topics.io import produce_events, tail_topic
from topics.registry import TopicNames, TopicSpec, choose_replication, topic_specs
from topics.settings import KafkaSettings
from workers.settings import WorkerSettings


class InvalidInputLine(BadInputLine, ValueError):
    """A line of the produce file is not a valid ChatEvent; the message names file:line and the field."""


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


app = typer.Typer(help="Create or verify guardstream's topics.", no_args_is_help=True)

PARTITIONS = typer.Option(8, help="partitions of the partitioned topics")
REPLICATION = typer.Option(None, help="replication factor; default: kafka.replication_factor, else min(3, brokers)")


def kafka_settings() -> KafkaSettings:
    return WorkerSettings().kafka


async def planned_specs(k: KafkaSettings, partitions: int, replication: int | None) -> list[TopicSpec]:
    """The registry's topics with the replication factor chosen: the option, the setting, or the cluster's size."""
    if replication is None:
        replication = choose_replication(await count_brokers(k), k.replication_factor)
    return topic_specs(TopicNames(k.topic_prefix), partitions, replication)


@app.command("create")
def create(partitions: int = PARTITIONS, replication: int | None = REPLICATION) -> None:
    """Create the topics that are missing."""
    k = kafka_settings()

    async def run() -> tuple[list[TopicSpec], list[str]]:
        specs = await planned_specs(k, partitions, replication)
        return specs, await create_topics(k, specs)

    specs, created = asyncio.run(run())
    for spec in specs:
        state = f"created (replication factor {spec.replication_factor})" if spec.name in created else "exists"
        typer.echo(f"{spec.name}: {state}")


@app.command("check")
def check(partitions: int = PARTITIONS, replication: int | None = REPLICATION) -> None:
    """Verify that every topic exists with the expected partitions and replication; exit 1 if not."""
    k = kafka_settings()

    async def run() -> list[TopicCheck]:
        return await check_topics(k, await planned_specs(k, partitions, replication))

    results = asyncio.run(run())
    for result in results:
        typer.echo(f"{result.spec.name}: {result.describe()}")
    if not all(r.ok for r in results):
        raise typer.Exit(1)


def produce(
    path: Path = typer.Argument(..., help="JSON Lines file of ChatEvents"),
    strict: bool = typer.Option(False, "--strict", help="publish nothing if a line is not a valid ChatEvent "
                                "(exit 3, naming the first) instead of publishing the others and exiting 6"),
) -> None:
    """Validate a file of ChatEvents and publish the valid ones to the input topic; each line that is not one is
    printed with its line number and field ("not published: FILE:LINE: FIELD: PROBLEM"), and the exit code is 6."""
    k = kafka_settings()
    topic = TopicNames(k.topic_prefix).events
    events, bad = (read_events(path), []) if strict else event_lines(path)
    if bad and not events:
        raise CommandFailed(f"none of the {len(bad)} lines of {path} is a valid ChatEvent, first {bad[0]}")
    for line in bad:
        typer.echo(f"not published: {line}")
    count = asyncio.run(produce_events(k, topic, events)) if events else 0
    typer.echo(f"published {count} events to {topic}")
    if bad:
        raise PartialInput(f"{len(bad)} of {len(bad) + count} lines of {path} were not published, first {bad[0]}; "
                           "each is listed above (--strict publishes nothing when a line is bad)")


def tail(
    topic: str = typer.Argument(..., help="topic name, or one of: events, verdicts, dlq, audit_labels, models"),
    from_beginning: bool = typer.Option(True, help="start at the earliest offset"),
) -> None:
    """Print a topic's records as JSON lines until interrupted; a topic that does not exist is an error (exit 3)."""
    k = kafka_settings()
    names = TopicNames(k.topic_prefix)
    name = getattr(names, topic) if topic in {"events", "verdicts", "dlq", "audit_labels", "models"} else topic

    async def run() -> None:
        async for item in tail_topic(k, name, from_beginning):
            typer.echo(json.dumps(item, ensure_ascii=False))

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
