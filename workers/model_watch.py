"""Follow `moderation.models` (compacted) and hand the newest release of our model name to the worker.

The topic is read from the beginning without a consumer group, so every worker sees every release.
Within one poll only the last release for the name is applied. A record that is not a valid
ModelRelease is logged and skipped: a bad release never stops a worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from schemas.events import ModelRelease

log = structlog.get_logger("guardstream.models")

RETRY_S = 5.0


class ModelWatcher:
    def __init__(self, bootstrap_servers: str, topic: str, model_name: str,
                 on_release: Callable[[ModelRelease], Awaitable[None]]) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.model_name = model_name
        self.on_release = on_release

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap_servers, group_id=None, enable_auto_commit=False)
        await consumer.start()
        try:
            await self._assign(consumer)
            while True:
                batches = await consumer.getmany(timeout_ms=500)
                latest = self._latest([r.value for batch in batches.values() for r in batch])
                if latest is not None:
                    await self.on_release(latest)
        finally:
            await consumer.stop()

    async def _assign(self, consumer: AIOKafkaConsumer) -> None:
        while self.topic not in await consumer.topics():  # topics() refreshes the cluster metadata
            log.warning("model_topic_missing", topic=self.topic, retry_s=RETRY_S)
            await asyncio.sleep(RETRY_S)
        partitions = consumer.partitions_for_topic(self.topic) or set()
        consumer.assign([TopicPartition(self.topic, p) for p in partitions])
        await consumer.seek_to_beginning()

    def _latest(self, values: list[bytes | None]) -> ModelRelease | None:
        latest = None
        for value in values:
            try:
                release = ModelRelease.model_validate_json(value or b"")
            except ValidationError as exc:
                log.warning("model_release_invalid", error=str(exc).splitlines()[0])
                continue
            if release.name == self.model_name:
                latest = release
        return latest
