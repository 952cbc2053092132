"""`guardstream replay`: a topic range re-moderated into a separate verdict topic (backfill), or a range of
audit labels exported into the trainer's data set. See topics/ranges.py for ranges and positions.

How a replay ends (runtime/cli_errors.py): 0 with the summary (JSON) on stdout; 2 for a range written
wrongly, 3 for one that cannot be read (an unknown topic or partition, a position file for another range);
5 when the target is refused; 6 when a partition was left unfinished and 130 when interrupted (Ctrl-C),
both with the position saved (in `--position`, else in a file under the data folder) and one line on stderr
that names it and gives the command that resumes.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import typer
from aiokafka import AIOKafkaConsumer

from runtime.cli_errors import CommandFailed, Exit
from runtime.logs import configure_logging
from topics.clients import client_options, stop_consumer
from topics.ranges import RangeSpec, RateLimit, ReplayInterrupted, ReplaySummary, open_position, replay_range
from topics.registry import TopicNames

SHORT_NAMES = ("events", "verdicts", "dlq", "audit_labels", "models")  # as `guardstream tail` takes them


class ReplayPartial(CommandFailed):
    """A partition of the range was left unfinished: nothing more came before the idle timeout."""

    exit_code = Exit.PARTIAL


def topic_name(names: TopicNames, name: str) -> str:
    """A topic given as on `guardstream tail`: a short name (`verdicts`) is the configured topic."""
    return str(getattr(names, name)) if name in SHORT_NAMES else name


def data_dir() -> Path:
    """Where a replay keeps a position file nobody asked for: GUARDSTREAM_DATA_DIR, else the user's data folder."""
    if configured := os.environ.get("GUARDSTREAM_DATA_DIR"):
        return Path(configured)
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "guardstream"


def default_position_path(topic: str) -> Path:
    """A new position file for a run of `topic` given none, named for the topic and the time it started."""
    return data_dir() / "replay" / f"{topic}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}.json"


def replay_command(
    context: typer.Context,
    offsets: str = typer.Option(None, help='offsets per partition, e.g. "0:100-200,1:0-" (end exclusive, either '
                                "end open; an open end is the end when the replay starts)"),
    since: datetime = typer.Option(None, help="time bounds instead of offsets (ISO 8601)"),
    until: datetime = typer.Option(None, help="end of the time bounds (default: the end when the replay starts)"),
    to_topic: str = typer.Option(None, help="backfill: re-moderate into this verdict topic; the short names of "
                                 "`guardstream tail` mean the configured topics, so `verdicts` is the live verdict "
                                 "topic (refused without --allow-live-topic)"),
    export: bool = typer.Option(False, "--export", help="export a range of the audit labels topic into the "
                                "trainer's data set (GUARDSTREAM_DATASET__URI)"),
    topic: str = typer.Option(None, help="the topic to replay, by name or short name (default: the events topic; "
                              "with --export, the audit labels topic)"),
    backend: str = typer.Option(None, help="backfill: the guard backend (default: settings)"),
    position: Path = typer.Option(None, help="a position file: written after every batch, resumed from if it "
                                  "exists (without one, an interrupted or unfinished run writes one under "
                                  "GUARDSTREAM_DATA_DIR and prints it)"),
    rate: float = typer.Option(None, min=0.001, help="at most this many records a second, paced record by record"),
    batch_size: int = typer.Option(64, min=1),
    allow_live_topic: bool = typer.Option(False, help="let a backfill write the live verdict topic"),
    create_topic: bool = typer.Option(True, "--create-topic/--no-create-topic", help="backfill: create a missing "
                                      "target topic with the source's partition count, or refuse (exit 5)"),
    idle_timeout_s: float = typer.Option(10.0, min=0.1, help="stop when the open partitions yield nothing this long"),
) -> None:
    """Replay a topic range: backfill verdicts with a chosen backend, or export labels into the data set."""
    if (to_topic is None) == (not export):
        raise CommandFailed("give either --to-topic TOPIC (backfill) or --export", Exit.USAGE)
    configure_logging("console", "warning")
    spec = RangeSpec(offsets, since, until)
    spec.check()  # a range written wrongly fails here, before any broker is asked
    try:
        summary = asyncio.run(
            _export(spec, topic, position, rate, batch_size, idle_timeout_s) if export else
            _backfill(spec, to_topic, topic, backend, position, rate, batch_size, allow_live_topic, create_topic,
                      idle_timeout_s))
    except ReplayInterrupted as exc:
        where = f"; resume with: {resume_command(context, exc.path)}" if exc.path else ""
        raise CommandFailed(f"{exc}{where}", Exit.INTERRUPTED) from exc
    except KeyboardInterrupt as exc:
        raise CommandFailed("interrupted before the replay started; nothing was handled", Exit.INTERRUPTED) from exc
    typer.echo(json.dumps(asdict(summary)))
    if summary.incomplete:
        raise ReplayPartial(_unfinished(summary, idle_timeout_s, context))


def _unfinished(summary: ReplaySummary, idle_timeout_s: float, context: typer.Context) -> str:
    parts = ", ".join(f"{p} at offset {n} of {summary.ends.get(p, '?')}" for p, n in sorted(summary.incomplete.items()))
    resume = f"; resume with: {resume_command(context, Path(summary.position))}" if summary.position else ""
    return f"partitions left unfinished (nothing came for {idle_timeout_s:g}s): {parts}{resume}"


def resume_command(context: typer.Context, position: Path) -> str:
    """The command line that goes on with this run: its own options, with `--position` the file kept."""
    words = ["guardstream", "replay"]
    for param in context.command.params:
        if param.param_type_name != "option" or param.name is None:
            continue
        value = position if param.name == "position" else context.params.get(param.name)
        if value is None or value == param.default:
            continue
        if param.is_flag:
            words.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            words += [param.opts[0], value.strftime("%Y-%m-%dT%H:%M:%S") if isinstance(value, datetime)
                      else str(value)]
    return shlex.join(words)


async def _backfill(spec: RangeSpec, target_name: str, topic: str | None, backend_name: str | None,
                    path: Path | None, rate: float | None, batch_size: int, allow_live_topic: bool, create_topic: bool,
                    idle_timeout_s: float) -> ReplaySummary:
    from workers.backfill import check_target, run_backfill
    from workers.guard.registry import load_backend
    from workers.settings import WorkerSettings

    settings = WorkerSettings()
    names = TopicNames(settings.kafka.topic_prefix)
    source, target = topic_name(names, topic or "events"), topic_name(names, target_name)
    check_target(settings, source, target, allow_live_topic)
    # settings.guard stays as configured: the backfill compares it with the backend to name the judging model
    backend = load_backend(settings.guard.model_copy(update={"backend": backend_name}) if backend_name
                           else settings.guard)
    try:
        return await run_backfill(settings, backend, source, target, spec, path, RateLimit(rate), batch_size,
                                  idle_timeout_s, keep_at=default_position_path(source), create_target=create_topic,
                                  notice=lambda line: typer.echo(line, err=True))
    finally:
        await backend.close()


async def _export(spec: RangeSpec, topic: str | None, path: Path | None, rate: float | None, batch_size: int,
                  idle_timeout_s: float) -> ReplaySummary:
    from topics.records import RecordReader
    from trainer.dataset import DataSet
    from trainer.export import LabelExport
    from trainer.resolve import Resolver
    from trainer.settings import TrainerSettings

    settings = TrainerSettings()
    source = topic_name(TopicNames(settings.kafka.topic_prefix), topic or "audit_labels")
    consumer = AIOKafkaConsumer(**client_options(settings.kafka), group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    reader = RecordReader(settings.kafka, settings.dataset.resolve_timeout_s)
    handler = LabelExport(DataSet.open(settings.dataset.uri, settings.fetch, settings.dataset), Resolver(reader, settings.limits))
    try:  # starts that fail still stop the clients
        await consumer.start()
        await reader.start()
        position = await open_position(consumer, source, spec, path, idle_timeout_s)
        summary = await replay_range(consumer, position, handler, batch_size=batch_size, rate=RateLimit(rate),
                                     description=f"export {source} → {settings.dataset.uri}",
                                     idle_timeout_s=idle_timeout_s, keep_at=default_position_path(source))
    finally:
        await reader.stop()
        await stop_consumer(consumer)
    summary.counts = dict(handler.counts)
    return summary
