"""Fixtures that start the real parts: a Tansu broker, a Redis server, moto's S3 server, the lite guard.

Everything listens on 127.0.0.1. Each test gets its own topic prefix, consumer group and cache key prefix.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import redis
from aiokafka import ConsumerRecord
from moto.server import ThreadedMotoServer

from runtime.settings import ObservabilitySettings
from schemas.events import DeadLetter, Verdict
from tests.fault_proxy import FaultProxy
from tests.kafka_io import committed_offsets, partition_ends, read_topic, read_until
from tests.waiting import wait_until
from topics.admin import create_topics
from topics.local_broker import LocalBroker, NotListening, free_loopback_port, wait_until_listening
from topics.registry import TopicNames, topic_specs
from topics.settings import LOCAL_BROKER_FETCH_MAX_WAIT_MS, KafkaSettings
from workers.guard.lite import LiteGuard
from workers.settings import BatchSettings, CacheSettings, FetchSettings, GuardSettings, WorkerSettings
from workers.worker import Worker

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
PARTITIONS = 4


@pytest.fixture(scope="session")
def broker() -> Iterator[LocalBroker]:
    with LocalBroker() as local:
        yield local


@dataclass(frozen=True)
class ProxiedBroker:
    """A broker that tells its clients to connect through a fault proxy, so every byte to it passes the proxy."""

    broker: LocalBroker
    proxy: FaultProxy

    @property
    def bootstrap_servers(self) -> str:
        return self.proxy.address


@pytest.fixture
def proxied_broker() -> Iterator[ProxiedBroker]:
    proxy_port = free_loopback_port()
    with LocalBroker(advertised_port=proxy_port) as broker, FaultProxy("127.0.0.1", broker.port, proxy_port) as proxy:
        yield ProxiedBroker(broker, proxy)


@dataclass
class RedisServer:
    url: str
    process: subprocess.Popen[bytes] | None = None
    port: int | None = None

    def kill(self) -> None:
        assert self.process is not None, "only a server the tests started can be killed"
        self.process.kill()
        self.process.wait()

    def restart(self) -> None:
        assert self.port is not None
        self.process = start_redis_process(self.port)


def start_redis_process(port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not on PATH: install Redis 7 (apt-get install redis-server)")
    process = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_listening(process, port, timeout_s=10)  # no persistence to load: listening is ready
    except NotListening:
        stop_process(process)
        raise
    return process


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 10) -> None:
    """Terminate a process a fixture started, killing it if it does not exit in time."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def machine_redis_answers() -> bool:
    try:
        with redis.Redis.from_url(DEFAULT_REDIS, socket_timeout=0.5) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The machine's Redis on 127.0.0.1:6379 if it answers; otherwise one the tests start, and stop."""
    if machine_redis_answers():
        yield DEFAULT_REDIS
        return
    port = free_loopback_port()
    process = start_redis_process(port)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_process(process)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis server this test owns, so it can kill it."""
    port = free_loopback_port()
    server = RedisServer(url=f"redis://127.0.0.1:{port}/0", process=start_redis_process(port), port=port)
    yield server
    if server.process is not None:
        stop_process(server.process)


@dataclass(frozen=True)
class S3:
    endpoint: str
    bucket: str
    client: object

    def put(self, key: str, body: bytes) -> str:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=body)  # type: ignore[attr-defined]
        return f"s3://{self.bucket}/{key}"

    def put_folder(self, folder: Path, prefix: str) -> str:
        for path in folder.rglob("*"):
            if path.is_file():
                self.put(f"{prefix}/{path.relative_to(folder).as_posix()}", path.read_bytes())
        return f"s3://{self.bucket}/{prefix}"


@pytest.fixture(scope="session")
def s3() -> Iterator[S3]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
    client.create_bucket(Bucket="images")
    yield S3(endpoint=endpoint, bucket="images", client=client)
    server.stop()


@pytest.fixture(scope="session")
def lite_guard() -> LiteGuard:
    return LiteGuard.from_settings(GuardSettings())


P5 = Path(__file__).resolve().parent.parent / "workers" / "guard" / "artefacts" / "lite_text_head.json"


@pytest.fixture(scope="session")
def p5_guard() -> LiteGuard:
    """P5's lite guard (frozen embeddings, logistic heads): releases made before the fine-tuned one."""
    return LiteGuard.from_settings(GuardSettings(lite_artefact=P5))


@pytest.fixture
async def topics(broker: LocalBroker) -> TopicNames:
    names = TopicNames(f"t-{uuid.uuid4().hex[:10]}.")
    await create_topics(broker.bootstrap_servers, topic_specs(names, partitions=PARTITIONS))
    return names


@pytest.fixture
def settings(broker: LocalBroker, redis_url: str, s3: S3, topics: TopicNames, tmp_path: Path) -> WorkerSettings:
    return WorkerSettings(
        kafka=KafkaSettings(
            bootstrap_servers=broker.bootstrap_servers,
            topic_prefix=topics.prefix,
            group_id=f"g-{topics.prefix}",
            session_timeout_ms=6000,
            heartbeat_interval_ms=500,
            commit_interval_ms=200,
            fetch_max_wait_ms=LOCAL_BROKER_FETCH_MAX_WAIT_MS,
        ),
        fetch=FetchSettings(
            file_root=tmp_path,
            s3_endpoint=s3.endpoint,
            s3_access_key_id="test",
            s3_secret_access_key="test",
            s3_allow_http=True,
            timeout_s=2.0,
            backoff_base_s=0.01,
        ),
        cache=CacheSettings(redis_url=redis_url, key_prefix=f"test-{topics.prefix}", socket_timeout_s=0.3,
                            retry_after_s=0.5),
        batch=BatchSettings(max_batch=8, max_wait_ms=10),
        observability=ObservabilitySettings(health_enabled=False),
        drain_timeout_s=10,
    )


@asynccontextmanager
async def running_worker(settings: WorkerSettings, backend: object, **kwargs: object) -> AsyncIterator[Worker]:
    """A worker running in this event loop; stopped (drain and commit) on exit."""
    worker = Worker(settings, backend=backend, **kwargs)  # type: ignore[arg-type]
    task = asyncio.create_task(worker.run())
    try:
        await wait_until(lambda: worker.ready or task.done(), timeout_s=120, what="the worker is ready")
        if task.done():
            task.result()
        yield worker
    finally:
        worker.stop()
        await task


async def verdicts_for(settings: WorkerSettings, count: int, timeout_s: float = 60,
                       settle_s: float = 0.0) -> list[Verdict]:
    """At least `count` verdicts; with `settle_s` (QUIET_S), every verdict until the topic is quiet."""
    records = await read_topic(settings.kafka.bootstrap_servers, TopicNames(settings.kafka.topic_prefix).verdicts,
                               count, timeout_s, settle_s)
    return [Verdict.model_validate_json(r.value) for r in records]


async def verdicts_covering(settings: WorkerSettings, event_ids: set[str], timeout_s: float = 60,
                            settle_s: float = 0.0) -> list[Verdict]:
    """Every verdict on the topic once each of `event_ids` has one (duplicates included)."""
    def covered(records: list[ConsumerRecord[bytes, bytes]]) -> bool:
        return event_ids <= {json.loads(r.value)["event_id"] for r in records}

    records = await read_until(settings.kafka.bootstrap_servers, TopicNames(settings.kafka.topic_prefix).verdicts,
                               covered, timeout_s, settle_s, what=f"a verdict for each of {len(event_ids)} events")
    return [Verdict.model_validate_json(r.value) for r in records]


async def dead_letters_for(settings: WorkerSettings, count: int, timeout_s: float = 60,
                           settle_s: float = 0.0) -> list[DeadLetter]:
    records = await read_topic(settings.kafka.bootstrap_servers, TopicNames(settings.kafka.topic_prefix).dlq,
                               count, timeout_s, settle_s)
    return [DeadLetter.model_validate_json(r.value) for r in records]


async def committed_and_end(settings: WorkerSettings, produced: int) -> tuple[dict[int, int], dict[int, int]]:
    """The group's committed offset and the end of each partition of the events topic, which holds `produced`."""
    servers, topic = settings.kafka.bootstrap_servers, TopicNames(settings.kafka.topic_prefix).events
    ends = partition_ends(await read_topic(servers, topic, produced), PARTITIONS)
    return await committed_offsets(servers, settings.kafka.group_id, topic, PARTITIONS), ends


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2.5-VL taught GuardReasoner-VL's output format on tests.tiny_qwen.LESSONS."""
    from tests.tiny_qwen import build_tiny_qwen

    return build_tiny_qwen(tmp_path_factory.mktemp("tiny-qwen-trained"), train_steps=150)


@pytest.fixture(scope="session")
def untrained_qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny model with random weights: it emits junk, which must become error verdicts."""
    from tests.tiny_qwen import build_tiny_qwen

    return build_tiny_qwen(tmp_path_factory.mktemp("tiny-qwen-random"), train_steps=0)


@pytest.fixture(scope="session")
def openai_server(tiny_qwen: Path) -> Iterator[str]:
    """transformers' OpenAI-compatible server on a loopback port, serving the tiny model."""
    port = free_loopback_port()
    process = subprocess.Popen([sys.executable, "-m", "tests.serve_tiny", str(tiny_qwen), str(port)],
                               env={**os.environ, "HF_HUB_OFFLINE": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_listening(process, port, timeout_s=120)
    except NotListening:
        stop_process(process)
        raise
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop_process(process)
