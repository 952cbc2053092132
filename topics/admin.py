"""Create or verify guardstream's topics on a broker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from topics.clients import as_kafka_settings, client_options
from topics.registry import TopicSpec
from topics.settings import KafkaSettings


class TopicsRefused(RuntimeError):
    """The broker refused to create topics (its CreateTopics answer carries an error per topic)."""


@dataclass(frozen=True)
class TopicCheck:
    spec: TopicSpec
    exists: bool
    partitions: int | None
    replication: int | None = None

    @property
    def ok(self) -> bool:
        return (self.exists and self.partitions == self.spec.partitions
                and self.replication == self.spec.replication_factor)

    def describe(self) -> str:
        if not self.exists:
            return "missing"
        if self.partitions != self.spec.partitions:
            return f"has {self.partitions} partitions, expected {self.spec.partitions}"
        if self.replication != self.spec.replication_factor:
            return f"has replication factor {self.replication}, expected {self.spec.replication_factor}"
        return "ok"


def raise_for_refusals(topic_errors: list[tuple[str, int, str | None]]) -> list[str]:
    """The names a CreateTopics answer created; TopicsRefused for any refusal but "already exists" (another
    process was faster). aiokafka returns these errors instead of raising them."""
    refused = [f"{name}: {for_code(code).__name__} {message or ''}".strip()
               for name, code, message in topic_errors if code not in (0, TopicAlreadyExistsError.errno)]
    if refused:
        raise TopicsRefused("; ".join(refused))
    return [name for name, code, _ in topic_errors if code == 0]


async def count_brokers(kafka: KafkaSettings | str) -> int:
    """How many brokers the cluster's metadata lists."""
    admin = AIOKafkaAdminClient(**client_options(as_kafka_settings(kafka)))
    await admin.start()
    try:
        return len((await admin.describe_cluster())["brokers"])
    finally:
        await admin.close()


async def create_topics(kafka: KafkaSettings | str, specs: list[TopicSpec]) -> list[str]:
    """Create the topics that do not exist yet; return the names created. `kafka` is the settings, or a bare
    bootstrap address for a plaintext broker (the local one)."""
    admin = AIOKafkaAdminClient(**client_options(as_kafka_settings(kafka)))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if not missing:
            return []
        new = [NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=s.configs) for s in missing]
        return raise_for_refusals((await admin.create_topics(new)).topic_errors)
    finally:
        await admin.close()


async def check_topics(kafka: KafkaSettings | str, specs: list[TopicSpec]) -> list[TopicCheck]:
    """Compare the broker's topics with the registry: existence, partition count and replication factor."""
    admin = AIOKafkaAdminClient(**client_options(as_kafka_settings(kafka)))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        present = [s.name for s in specs if s.name in existing]
        described = {d["topic"]: d["partitions"] for d in await admin.describe_topics(present)} if present else {}
        return [check(s, described.get(s.name)) for s in specs]
    finally:
        await admin.close()


def check(spec: TopicSpec, partitions: list[dict[str, Any]] | None) -> TopicCheck:
    """A topic's check from its DescribeTopics partitions (None: the topic does not exist)."""
    if partitions is None:
        return TopicCheck(spec, exists=False, partitions=None)
    replication = min((len(p["replicas"]) for p in partitions), default=None)
    return TopicCheck(spec, exists=True, partitions=len(partitions), replication=replication)
