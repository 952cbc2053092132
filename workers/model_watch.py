"""Follow `moderation.models` (compacted) and hand the newest release of our model name to the worker.

The topic is read from the beginning without a consumer group, so every worker sees every release.
Within one poll only the last release for the name is applied. A record that is not a valid
ModelRelease is logged and skipped: a bad release never stops a worker.

Nothing else stops the watcher either: any exception (the broker or the topic missing, a poll or
`on_release` failing) is logged as `model_watch_failed`, reported to `on_error`, and the watcher starts
again with a fresh consumer after a capped backoff. Only cancelling ends it.

A broker that goes away does not make aiokafka raise, and a topic recreated meanwhile (a replaced
broker, a deleted topic) can hold the new release below the consumer's old position, where it is never
fetched. So the watcher also starts over every `resync_s`. Each start reads the topic from the
beginning; a release equal to the last one handed over without error is not handed over again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from runtime.backoff import backoff_s
from schemas.events import ModelRelease
from topics.clients import as_kafka_settings, client_options, stop_consumer
from topics.settings import KafkaSettings

log = structlog.get_logger("guardstream.models")

POLL_MS = 500
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
RESYNC_S = 300.0


class ModelTopicMissing(RuntimeError):
    """The releases topic is not in the cluster's metadata (not created yet, or being recreated)."""


class ModelWatcher:
    def __init__(self, kafka: KafkaSettings | str, topic: str, model_name: str,
                 on_release: Callable[[ModelRelease], Awaitable[None]], *,
                 on_error: Callable[[BaseException], None] | None = None,
                 backoff_base_s: float = BACKOFF_BASE_S, backoff_max_s: float = BACKOFF_MAX_S,
                 resync_s: float = RESYNC_S) -> None:
        """`kafka`: the settings, or a bare bootstrap address for a plaintext broker (the local one).
        `on_error` is told of every failure (the worker counts them); the watcher restarts either way."""
        self.kafka = as_kafka_settings(kafka)
        self.topic = topic
        self.model_name = model_name
        self.on_release = on_release
        self.on_error = on_error
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.resync_s = resync_s
        self.failures = 0  # in a row; a poll handled without error clears it
        self.handed_over: ModelRelease | None = None

    async def run(self) -> None:
        """Follow releases until cancelled."""
        while True:
            try:
                await self._follow()  # returns after resync_s, to start over
            except Exception as exc:  # whatever failed, the watcher restarts; CancelledError is not an Exception
                await self._failed(exc)

    async def _follow(self) -> None:
        consumer = AIOKafkaConsumer(**client_options(self.kafka), group_id=None, enable_auto_commit=False,
                                    auto_offset_reset="earliest")  # a recreated topic is read from its start
        try:
            await consumer.start()
            await self._assign(consumer)
            resync_at = asyncio.get_running_loop().time() + self.resync_s
            while asyncio.get_running_loop().time() < resync_at:
                batches = await consumer.getmany(timeout_ms=POLL_MS)
                latest = self._latest([r.value for batch in batches.values() for r in batch])
                if latest is not None and latest != self.handed_over:
                    await self.on_release(latest)
                    self.handed_over = latest
                self.failures = 0
        finally:
            await stop_consumer(consumer)

    async def _failed(self, exc: Exception) -> None:
        self.failures += 1
        retry_s = backoff_s(self.failures, self.backoff_base_s, self.backoff_max_s)
        log.error("model_watch_failed", error_type=type(exc).__name__, error=str(exc), failures=self.failures,
                  retry_s=retry_s, topic=self.topic)
        if self.on_error is not None:
            self.on_error(exc)
        await asyncio.sleep(retry_s)

    async def _assign(self, consumer: AIOKafkaConsumer) -> None:
        partitions = consumer.partitions_for_topic(self.topic)  # from the metadata the consumer started with
        if not partitions:  # a fresh consumer, after the backoff, sees a topic created meanwhile
            raise ModelTopicMissing(f"{self.topic} does not exist, or has no partitions yet")
        consumer.assign([TopicPartition(self.topic, p) for p in partitions])
        await consumer.seek_to_beginning()

    def _latest(self, values: list[bytes | None]) -> ModelRelease | None:
        return latest_release(values, self.model_name)


def latest_release(values: list[bytes | None], model_name: str) -> ModelRelease | None:
    """The last valid release of `model_name` among `values` (records of the releases topic, in order)."""
    latest = None
    for value in values:
        try:
            release = ModelRelease.model_validate_json(value or b"")
        except ValidationError as exc:
            log.warning("model_release_invalid", error=str(exc).splitlines()[0])
            continue
        if release.name == model_name:
            latest = release
    return latest


async def current_release(kafka: KafkaSettings, topic: str, model_name: str, idle_s: float = 2.0) -> ModelRelease | None:
    """The release of `model_name` in force now: the topic read once from its beginning, up to its end
    offsets (or until it has been quiet for `idle_s`: a broker's end offsets can be late)."""
    consumer = AIOKafkaConsumer(**client_options(kafka), group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    values: list[bytes | None] = []
    try:
        await consumer.start()
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            raise ModelTopicMissing(f"{topic} does not exist, or has no partitions yet")
        consumer.assign(partitions)
        await consumer.seek_to_beginning()
        ends = await consumer.end_offsets(partitions)
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            batches = await consumer.getmany(timeout_ms=int(idle_s * 1000))
            if not batches:
                break
            values += [r.value for batch in batches.values() for r in batch]
    finally:
        await stop_consumer(consumer)
    return latest_release(values, model_name)
