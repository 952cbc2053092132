"""`guardstream replay`: a topic range re-moderated into a separate verdict topic (backfill), or a range of
audit labels exported into the trainer's data set. See topics/ranges.py for ranges and positions."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import typer
from aiokafka import AIOKafkaConsumer

from topics.ranges import RangeSpec, RateLimit, ReplaySummary, open_position, replay_range
from topics.registry import TopicNames
from workers.kafka_clients import client_options, stop_consumer
from workers.logs import configure_logging


def replay_command(
    offsets: str = typer.Option(None, help='offsets per partition, e.g. "0:100-200,1:0-" (end exclusive, either '
                                "end open)"),
    since: datetime = typer.Option(None, help="time bounds instead of offsets (ISO 8601)"),
    until: datetime = typer.Option(None, help="end of the time bounds (default: the end when the replay starts)"),
    to_topic: str = typer.Option(None, help="backfill: re-moderate into this verdict topic (not the live one)"),
    export: bool = typer.Option(False, "--export", help="export a range of the audit labels topic into the "
                                "trainer's data set (GUARDSTREAM_DATASET__URI)"),
    topic: str = typer.Option(None, help="the topic to replay (default: the events topic; with --export, the "
                              "audit labels topic)"),
    backend: str = typer.Option(None, help="backfill: the guard backend (default: settings)"),
    position: Path = typer.Option(None, help="a position file: written after every batch, resumed from if it exists"),
    rate: float = typer.Option(None, min=0.001, help="at most this many records a second"),
    batch_size: int = typer.Option(64, min=1),
    allow_live_topic: bool = typer.Option(False, help="let a backfill write the live verdict topic"),
    idle_timeout_s: float = typer.Option(10.0, min=0.1, help="stop when the open partitions yield nothing this long"),
) -> None:
    """Replay a topic range: backfill verdicts with a chosen backend, or export labels into the data set."""
    if (to_topic is None) == (not export):
        raise typer.BadParameter("give either --to-topic (backfill) or --export", param_hint="--to-topic/--export")
    configure_logging("console", "warning")
    spec = RangeSpec(offsets, since, until)
    run = _export(spec, topic, position, rate, batch_size, idle_timeout_s) if export else \
        _backfill(spec, to_topic, topic, backend, position, rate, batch_size, allow_live_topic, idle_timeout_s)
    summary = asyncio.run(run)
    typer.echo(json.dumps(asdict(summary)))
    raise typer.Exit(1 if summary.incomplete else 0)


async def _backfill(spec: RangeSpec, target: str, topic: str | None, backend_name: str | None, path: Path | None,
                    rate: float | None, batch_size: int, allow_live_topic: bool, idle_timeout_s: float) -> ReplaySummary:
    from workers.backfill import check_target, run_backfill
    from workers.guard.registry import load_backend
    from workers.settings import WorkerSettings

    settings = WorkerSettings()
    if backend_name:
        settings.guard.backend = backend_name
    source = topic or TopicNames(settings.kafka.topic_prefix).events
    check_target(settings, source, target, allow_live_topic)
    backend = load_backend(settings.guard)
    try:
        return await run_backfill(settings, backend, source, target, spec, path, RateLimit(rate), batch_size,
                                  idle_timeout_s)
    finally:
        await backend.close()


async def _export(spec: RangeSpec, topic: str | None, path: Path | None, rate: float | None, batch_size: int,
                  idle_timeout_s: float) -> ReplaySummary:
    from trainer.dataset import DataSet
    from trainer.export import LabelExport
    from trainer.resolve import RecordReader, Resolver
    from trainer.settings import TrainerSettings

    settings = TrainerSettings()
    source = topic or TopicNames(settings.kafka.topic_prefix).audit_labels
    consumer = AIOKafkaConsumer(**client_options(settings.kafka), group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    reader = RecordReader(settings.kafka, settings.dataset.resolve_timeout_s)
    await consumer.start()
    await reader.start()
    handler = LabelExport(DataSet.open(settings.dataset.uri, settings.fetch), Resolver(reader, settings.limits))
    try:
        position = await open_position(consumer, source, spec, path)
        summary = await replay_range(consumer, position, handler, batch_size=batch_size, rate=RateLimit(rate),
                                     description=f"export {source} → {settings.dataset.uri}",
                                     idle_timeout_s=idle_timeout_s)
    finally:
        await reader.stop()
        await stop_consumer(consumer)
    summary.counts = dict(handler.counts)
    return summary
