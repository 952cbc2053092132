"""`guardstream replay --export`: a range of the audit labels topic rebuilt into a data set."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from tests.conftest import PARTITIONS
from tests.factories import BENIGN, event
from tests.kafka_io import partition_ends, read_topic
from tests.trainer.conftest import judged, label_for, publish_labels
from topics.registry import TopicNames
from trainer.dataset import DataSet
from trainer.settings import TrainerSettings
from workers.cli import app
from workers.guard.lite import LiteGuard
from workers.settings import FetchSettings, WorkerSettings


async def test_a_label_range_is_exported_into_the_data_set_through_the_command(
    settings: WorkerSettings, trainer_settings: TrainerSettings, lite_guard: LiteGuard, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topics = TopicNames(settings.kafka.topic_prefix)
    events = [event(t, conversation=f"c{i}") for i, t in enumerate(BENIGN)]
    records = await judged(settings, lite_guard, events)
    await publish_labels(trainer_settings, [label_for(records[e.event_id], False) for e in events] + [b"{}"])
    labels = await read_topic(settings.kafka.bootstrap_servers, topics.audit_labels, len(events) + 1)
    spec = ",".join(f"{p}:0-{end}" for p, end in partition_ends(labels, PARTITIONS).items())
    monkeypatch.setenv("GUARDSTREAM_KAFKA__BOOTSTRAP_SERVERS", settings.kafka.bootstrap_servers)
    monkeypatch.setenv("GUARDSTREAM_KAFKA__TOPIC_PREFIX", topics.prefix)
    monkeypatch.setenv("GUARDSTREAM_DATASET__URI", str(tmp_path / "rebuilt"))
    result = await _invoke(["replay", "--export", "--offsets", spec, "--idle-timeout-s", "3"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["read"] == len(events) + 1
    assert summary["counts"] == {"examples": len(events), "unresolvable:label_undecodable": 1}
    stored = await DataSet.open(str(tmp_path / "rebuilt"), FetchSettings()).load()
    assert {e.label.event_id for e in stored} == {e.event_id for e in events}


async def _invoke(args: list[str]) -> Result:
    """The command runs its own event loop: run it on a thread, off this test's loop."""
    return await asyncio.to_thread(CliRunner().invoke, app, args)
