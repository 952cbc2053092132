"""Create or verify guardstream's topics on a broker."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from topics.registry import TopicSpec


@dataclass(frozen=True)
class TopicCheck:
    spec: TopicSpec
    exists: bool
    partitions: int | None

    @property
    def ok(self) -> bool:
        return self.exists and self.partitions == self.spec.partitions

    def describe(self) -> str:
        if not self.exists:
            return "missing"
        if not self.ok:
            return f"has {self.partitions} partitions, expected {self.spec.partitions}"
        return "ok"


async def create_topics(bootstrap_servers: str, specs: list[TopicSpec]) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            new = [NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=s.configs) for s in missing]
            with contextlib.suppress(TopicAlreadyExistsError):  # another process was faster
                await admin.create_topics(new)
        return [s.name for s in missing]
    finally:
        await admin.close()


async def check_topics(bootstrap_servers: str, specs: list[TopicSpec]) -> list[TopicCheck]:
    """Compare the broker's topics with the registry: existence and partition count."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        present = [s.name for s in specs if s.name in existing]
        described = {d["topic"]: len(d["partitions"]) for d in await admin.describe_topics(present)} if present else {}
        return [TopicCheck(s, s.name in existing, described.get(s.name)) for s in specs]
    finally:
        await admin.close()
