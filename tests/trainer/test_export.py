"""`guardstream replay --export`: a range of the audit labels topic rebuilt into a data set, beside the trainer
writing the same data set."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from guardstream.cli import app
from schemas.events import AuditLabel, ChatEvent
from tests.conftest import PARTITIONS, S3
from tests.factories import BENIGN, HARMFUL, event
from tests.kafka_io import partition_ends, read_topic
from tests.trainer.conftest import judged, label_for, publish_labels
from tests.trainer.dataset_parts import commit_first, example
from topics.registry import TopicNames
from trainer.dataset import DataSet
from trainer.settings import TrainerSettings
from workers.guard.lite import LiteGuard
from workers.settings import FetchSettings, WorkerSettings

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def test_a_label_range_is_exported_into_the_data_set_through_the_command(
    settings: WorkerSettings, trainer_settings: TrainerSettings, lite_guard: LiteGuard, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events = [event(t, conversation=f"c{i}") for i, t in enumerate(BENIGN)]
    spec = await _labelled_range(settings, trainer_settings, lite_guard, events, [b"{}"])
    _export_env(monkeypatch, settings, str(tmp_path / "rebuilt"))
    result = await _invoke(["replay", "--export", "--offsets", spec, "--idle-timeout-s", "3"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["read"] == len(events) + 1
    assert summary["counts"] == {"examples": len(events), "unresolvable:label_undecodable": 1}
    stored = await DataSet.open(str(tmp_path / "rebuilt"), FetchSettings()).load()
    assert {e.label.event_id for e in stored} == {e.event_id for e in events}


async def test_an_export_into_the_trainers_data_set_while_the_trainer_writes_loses_no_shard(
    settings: WorkerSettings, trainer_settings: TrainerSettings, lite_guard: LiteGuard, s3: S3,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events = [event(t, conversation=f"c{i}") for i, t in enumerate(BENIGN + HARMFUL)]
    spec = await _labelled_range(settings, trainer_settings, lite_guard, events, [])
    _export_env(monkeypatch, settings, trainer_settings.dataset.uri)
    for name, value in {"S3_ENDPOINT": s3.endpoint, "S3_ACCESS_KEY_ID": "test", "S3_SECRET_ACCESS_KEY": "test",
                        "S3_ALLOW_HTTP": "true"}.items():
        monkeypatch.setenv(f"GUARDSTREAM_FETCH__{name}", value)
    trainer = DataSet.open(trainer_settings.dataset.uri, trainer_settings.fetch)
    commit_first(monkeypatch, trainer, [[example(f"trainer-{n}-{i}", True, T0) for i in range(3)] for n in range(3)])
    result = await _invoke(["replay", "--export", "--offsets", spec, "--idle-timeout-s", "3", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    stored = {e.label.event_id for e in await DataSet.open(trainer_settings.dataset.uri, trainer_settings.fetch).load()}
    assert stored == {e.event_id for e in events} | {f"trainer-{n}-{i}" for n in range(3) for i in range(3)}


async def _labelled_range(settings: WorkerSettings, trainer_settings: TrainerSettings, lite_guard: LiteGuard,
                          events: list[ChatEvent], extra: list[bytes]) -> str:
    """Judge `events`, label each (then the `extra` raw records), and return the label range to export."""
    records = await judged(settings, lite_guard, events)
    labels: list[AuditLabel | bytes] = [label_for(records[e.event_id], e.text in HARMFUL) for e in events]
    await publish_labels(trainer_settings, labels + list(extra))
    topic = TopicNames(settings.kafka.topic_prefix).audit_labels
    published = await read_topic(settings.kafka.bootstrap_servers, topic, len(labels) + len(extra))
    return ",".join(f"{p}:0-{end}" for p, end in partition_ends(published, PARTITIONS).items())


def _export_env(monkeypatch: pytest.MonkeyPatch, settings: WorkerSettings, uri: str) -> None:
    monkeypatch.setenv("GUARDSTREAM_KAFKA__BOOTSTRAP_SERVERS", settings.kafka.bootstrap_servers)
    monkeypatch.setenv("GUARDSTREAM_KAFKA__TOPIC_PREFIX", settings.kafka.topic_prefix)
    monkeypatch.setenv("GUARDSTREAM_DATASET__URI", uri)


async def _invoke(args: list[str]) -> Result:
    """The command runs its own event loop: run it on a thread, off this test's loop."""
    return await asyncio.to_thread(CliRunner().invoke, app, args)
