"""`guardstream topics ...`, `guardstream produce`, `guardstream tail`."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import typer

from topics.admin import TopicCheck, check_topics, count_brokers, create_topics
from topics.io import produce_events, read_events, tail_topic
from topics.registry import TopicNames, TopicSpec, choose_replication, topic_specs
from workers.settings import KafkaSettings, WorkerSettings

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


def produce(path: Path = typer.Argument(..., help="JSON Lines file of ChatEvents")) -> None:
    """Validate a file of ChatEvents and publish them to the input topic."""
    k = kafka_settings()
    topic = TopicNames(k.topic_prefix).events
    count = asyncio.run(produce_events(k, topic, read_events(path)))
    typer.echo(f"published {count} events to {topic}")


def tail(
    topic: str = typer.Argument(..., help="topic name, or one of: events, verdicts, dlq, audit_labels, models"),
    from_beginning: bool = typer.Option(True, help="start at the earliest offset"),
) -> None:
    """Print a topic's records as JSON lines until interrupted."""
    k = kafka_settings()
    names = TopicNames(k.topic_prefix)
    name = getattr(names, topic) if topic in {"events", "verdicts", "dlq", "audit_labels", "models"} else topic

    async def run() -> None:
        async for item in tail_topic(k, name, from_beginning):
            typer.echo(json.dumps(item, ensure_ascii=False))

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
