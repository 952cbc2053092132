"""The trainer with its broker, and then its data set's object storage, behind a fault proxy that cuts it
mid-stream for longer than the trainer's session timeout, its polls and its flush interval: every label ends in
the data set exactly once, the same service recovers without a restart, and /readyz and the metrics say what is
wrong while it lasts."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from runtime.dependency_state import BROKER
from runtime.settings import ObservabilitySettings
from schemas.events import AuditLabel, SourceRef
from tests.conftest import PARTITIONS, S3, ProxiedBroker
from tests.factories import BENIGN, event
from tests.fault_proxy import FaultProxy, fault_proxy
from tests.trainer.conftest import running_trainer
from tests.trainer.label_outcomes import committed, total
from tests.waiting import wait_until
from topics.admin import create_topics
from topics.io import produce_raw
from topics.local_broker import LocalBroker
from topics.registry import TopicNames, topic_specs
from topics.settings import KafkaSettings
from trainer.dataset import Commit, DataSet
from trainer.service import TrainerService
from trainer.settings import DatasetSettings, JobSettings, LabelSettings, TrainerSettings
from workers.settings import FetchSettings

SESSION_TIMEOUT_MS = 2000
CUT_S = 1.5 * SESSION_TIMEOUT_MS / 1000  # the broker stays cut past the session timeout, many polls and flushes


def fast_settings(bootstrap: str, topics: TopicNames, s3: S3, s3_endpoint: str, tmp_path: Path,
                  data_dir: Path) -> TrainerSettings:
    """Short timeouts, intervals and backoffs, so an outage outlasts each of them within seconds."""
    return TrainerSettings(
        data_dir=data_dir,
        kafka=KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=topics.prefix, fetch_max_wait_ms=100,
                            session_timeout_ms=SESSION_TIMEOUT_MS, heartbeat_interval_ms=300, commit_interval_ms=200,
                            broker_check_interval_s=0.5),
        group_id=f"trainer-{topics.prefix}",
        fetch=FetchSettings(s3_endpoint=s3_endpoint, s3_access_key_id="test", s3_secret_access_key="test",
                            s3_allow_http=True, timeout_s=0.5),
        dataset=DatasetSettings(uri=f"s3://{s3.bucket}/{topics.prefix}data", shard_max_examples=4,
                                flush_interval_s=0.3, resolve_timeout_s=1.0),
        labels=LabelSettings(retry_backoff_max_s=0.5, broker_probe_timeout_s=1.0),
        jobs=JobSettings(interval_s=None, after_new_labels=None, work_dir=tmp_path / "runs"),
        observability=ObservabilitySettings(health_enabled=True, health_port=0),
    )


class Labels:
    """Events on the events topic, and a label naming each one by its coordinates (as `guardstream label` does)."""

    def __init__(self, bootstrap: str, topics: TopicNames) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.published: list[AuditLabel] = []

    async def publish(self, tag: str, n: int) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await producer.start()
        try:
            labels = []
            for i in range(n):
                chat = event(f"{BENIGN[i % len(BENIGN)]} ({tag} {i})", conversation=f"{tag}{i}")
                placed = await producer.send_and_wait(self.topics.events, chat.model_dump_json().encode(),
                                                      key=chat.conversation_id.encode())
                labels.append(AuditLabel(event_id=chat.event_id, request_harmful=False, labeller="reviewer-1",
                                         event=SourceRef(topic=placed.topic, partition=placed.partition,
                                                         offset=placed.offset)))
        finally:
            await producer.stop()
        await produce_raw(self.bootstrap, self.topics.audit_labels,
                          [(label.event_id.encode(), label.model_dump_json().encode()) for label in labels])
        self.published += labels


async def stored_per_event(dataset: DataSet) -> Counter[str]:
    """How many times each event's label was committed, over the data set's whole commit log (its load keeps
    one per event, so a repeat shows only here)."""
    keys = await dataset._commit_keys()
    commits = [Commit.model_validate_json(raw) for raw in await dataset._read_all(keys)]
    return Counter(entry.event_id for commit in commits for entry in commit.entries)


async def readyz(trainer: TrainerService) -> tuple[int, list[str]]:
    assert trainer.health is not None
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{trainer.health.port}/readyz") as reply:
        return reply.status, (await reply.json())["problems"]


async def each_label_stored_once(trainer: TrainerService, settings: TrainerSettings, labels: Labels,
                                 dataset: DataSet) -> None:
    """Every label published is in the data set exactly once, counted once, and committed."""
    count = len(labels.published)
    await wait_until(lambda: trainer.examples_stored >= count and not trainer.status()["pending_labels"], 30,
                     f"{count} labels stored")
    for _ in range(200):  # offsets are committed every commit_interval_ms after the shard is stored
        if await committed(settings) >= count:
            break
        await asyncio.sleep(0.05)
    assert await committed(settings) == count
    stored = await stored_per_event(dataset)
    assert set(stored) == {label.event_id for label in labels.published}, "no label lost"
    assert [e for e, n in stored.items() if n > 1] == [], "no label stored twice"
    assert trainer.examples_stored == count
    await wait_until(lambda: trainer.ready, 10, "ready again, without a restart")


def broker_up(trainer: TrainerService) -> float | None:
    return trainer.metrics.registry.get_sample_value("guardstream_dependency_up", {"dependency": BROKER})


@pytest.mark.parametrize("fault", ["refuse", "blackhole"])
async def test_a_broker_cut_mid_stream_loses_no_label_stores_none_twice_and_readiness_says_why(
        proxied_broker: ProxiedBroker, s3: S3, tmp_path: Path, data_dir: Path, fault: str) -> None:
    topics = TopicNames(f"t-{uuid.uuid4().hex[:10]}.")
    await create_topics(proxied_broker.bootstrap_servers, topic_specs(topics, partitions=PARTITIONS))
    settings = fast_settings(proxied_broker.bootstrap_servers, topics, s3, s3.endpoint, tmp_path, data_dir)
    labels = Labels(proxied_broker.bootstrap_servers, topics)
    proxy: FaultProxy = proxied_broker.proxy
    async with running_trainer(settings) as trainer:
        await labels.publish("before", 4)
        await wait_until(lambda: trainer.examples_stored >= 4, 30, "the first labels stored")
        assert broker_up(trainer) == 1
        await labels.publish("mid", 10)
        await wait_until(lambda: total(trainer, "guardstream_trainer_labels_seen_total") > 4, 30,
                         "the trainer reading the next labels")
        retries = total(trainer, "guardstream_trainer_resolve_retries_total")
        with proxy.fault(fault):
            cut_at = time.monotonic()
            await wait_until(lambda: time.monotonic() - cut_at > CUT_S and broker_up(trainer) == 0
                             and total(trainer, "guardstream_trainer_resolve_retries_total") > retries, 30,
                             "the cut outlasting the session timeout, seen by the broker check and the label in hand")
            status, problems = await readyz(trainer)
        assert status == 503 and any(p.startswith(f"{BROKER} failing") for p in problems), problems
        assert any("cannot be resolved" in p for p in problems), problems
        await labels.publish("after", 4)
        await each_label_stored_once(trainer, settings, labels, trainer.dataset)
        assert broker_up(trainer) == 1


@pytest.fixture
def s3_proxy(s3: S3) -> Iterator[FaultProxy]:
    with fault_proxy(s3.endpoint) as proxy:
        yield proxy


@pytest.mark.parametrize("fault", ["refuse", "http_500", "blackhole"])
async def test_object_storage_failing_past_the_flush_interval_loses_no_label_and_stores_none_twice(
        broker: LocalBroker, topics: TopicNames, s3: S3, s3_proxy: FaultProxy, tmp_path: Path, data_dir: Path,
        fault: str) -> None:
    settings = fast_settings(broker.bootstrap_servers, topics, s3, f"http://{s3_proxy.address}", tmp_path, data_dir)
    labels = Labels(broker.bootstrap_servers, topics)
    direct = DataSet.open(settings.dataset.uri, settings.fetch.model_copy(update={"s3_endpoint": s3.endpoint}))
    async with running_trainer(settings) as trainer:
        await labels.publish("before", 4)
        await wait_until(lambda: trainer.examples_stored >= 4, 30, "the first labels stored")
        with s3_proxy.fault(fault):
            await labels.publish("during", 6)
            await wait_until(lambda: trainer.status()["pending_labels"] == 6
                             and total(trainer, "guardstream_trainer_shard_failures_total") >= 3, 30,
                             "every new label waiting through three failed writes")
            status, problems = await readyz(trainer)
            assert await committed(settings) == 4, "the waiting labels stay uncommitted"
            assert trainer.examples_stored == 4
        assert status == 503 and any("data set writes failing" in p for p in problems), problems
        await labels.publish("after", 4)
        await each_label_stored_once(trainer, settings, labels, direct)
