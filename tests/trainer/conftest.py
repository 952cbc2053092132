"""Trainer fixtures: settings on the same local broker, Redis and moto S3 as the worker's, and a helper
that turns verdicts on the topic into audit labels pointing at them. Every trainer test, and every command it
runs, has a data directory of its own under the test's tmp path: nothing lands in the working directory."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiokafka import ConsumerRecord

from runtime.settings import ObservabilitySettings
from schemas.events import AuditLabel, ChatEvent, SourceRef, Verdict
from tests.conftest import running_worker
from tests.kafka_io import read_until
from tests.waiting import wait_until
from topics.io import produce_events, produce_raw
from topics.registry import TopicNames
from trainer.service import TrainerService
from trainer.settings import DatasetSettings, GateSettings, JobSettings, LiteRefitSettings, TrainerSettings
from workers.settings import WorkerSettings


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """GUARDSTREAM_DATA_DIR for the test and the commands it starts (they inherit the environment)."""
    folder = tmp_path / "guardstream-data-dir"
    monkeypatch.setenv("GUARDSTREAM_DATA_DIR", str(folder))
    return folder


@pytest.fixture
def trainer_settings(settings: WorkerSettings, tmp_path: Path, data_dir: Path) -> TrainerSettings:
    prefix = settings.kafka.topic_prefix
    return TrainerSettings(
        data_dir=data_dir,
        kafka=settings.kafka,
        group_id=f"trainer-{prefix}",
        fetch=settings.fetch,
        guard=settings.guard,
        dataset=DatasetSettings(uri=f"s3://images/{prefix}data", shard_max_examples=4, flush_interval_s=0.5,
                                resolve_timeout_s=2.0),
        jobs=JobSettings(interval_s=None, after_new_labels=None, work_dir=tmp_path / "runs"),
        lite_refit=LiteRefitSettings(max_package_examples=200, epochs=5.0),
        gate=GateSettings(release_uri=f"s3://images/{prefix}releases", min_held_out=5, regression_max_items=100),
        observability=ObservabilitySettings(health_enabled=True, health_port=0),
    )


@asynccontextmanager
async def running_trainer(settings: TrainerSettings) -> AsyncIterator[TrainerService]:
    service = TrainerService(settings)
    await service.start()
    try:
        yield service
    finally:
        await service.shutdown()


async def judged(settings: WorkerSettings, backend: object,
                 events: list[ChatEvent]) -> dict[str, ConsumerRecord[bytes, bytes]]:
    """Publish `events`, let a worker answer them, and return each event's verdict record."""
    await produce_events(settings.kafka, TopicNames(settings.kafka.topic_prefix).events, events)
    async with running_worker(settings, backend):
        return await verdict_records(settings, {e.event_id for e in events})


async def verdict_records(settings: TrainerSettings | WorkerSettings, event_ids: set[str]) -> dict[str, ConsumerRecord[bytes, bytes]]:
    """The verdict record of each event (the first one, where an event has several)."""
    def covered(records: list[ConsumerRecord[bytes, bytes]]) -> bool:
        return event_ids <= {Verdict.model_validate_json(r.value).event_id for r in records}

    topic = TopicNames(settings.kafka.topic_prefix).verdicts
    records = await read_until(settings.kafka.bootstrap_servers, topic, covered, 60, what="verdicts")
    out: dict[str, ConsumerRecord[bytes, bytes]] = {}
    for record in records:
        out.setdefault(Verdict.model_validate_json(record.value).event_id, record)
    return out


def label_for(record: ConsumerRecord[bytes, bytes], request_harmful: bool, response_harmful: bool | None = None,
              labeller: str = "reviewer-1") -> AuditLabel:
    """A label on the verdict in `record`, naming it by its coordinates as the console does."""
    verdict = Verdict.model_validate_json(record.value)
    return AuditLabel(event_id=verdict.event_id, request_harmful=request_harmful, response_harmful=response_harmful,
                      labeller=labeller, verdict=SourceRef(topic=record.topic, partition=record.partition,
                                                           offset=record.offset))


async def publish_labels(settings: TrainerSettings, labels: list[AuditLabel | bytes]) -> None:
    topic = TopicNames(settings.kafka.topic_prefix).audit_labels
    records = [(label.event_id.encode() if isinstance(label, AuditLabel) else uuid.uuid4().hex.encode(),
                label.model_dump_json().encode() if isinstance(label, AuditLabel) else label) for label in labels]
    await produce_raw(settings.kafka, topic, records)


async def wait_for_examples(service: TrainerService, count: int, timeout_s: float = 60) -> None:
    """Until `count` examples (repeats of an event included) are in durable shards."""
    await wait_until(lambda: service.examples_stored >= count, timeout_s=timeout_s,
                     what=f"{count} examples written")
