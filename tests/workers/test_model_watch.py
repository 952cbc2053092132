"""The release watcher survives whatever fails under it, says so, and only a cancel ends it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from structlog.testing import capture_logs

from runtime.backoff import backoff_s
from schemas.events import ModelRelease
from tests.waiting import wait_until
from topics.admin import create_topics
from topics.io import produce_raw
from topics.local_broker import LocalBroker
from topics.registry import TopicNames, topic_specs
from topics.settings import KafkaSettings
from workers.model_watch import ModelTopicMissing, ModelWatcher

NAME = "guard-under-test"


def release(version: str) -> tuple[bytes, bytes]:
    value = ModelRelease(name=NAME, version=version, backend="lite", artefact_uri="/models/x")
    return NAME.encode(), value.model_dump_json().encode()


@dataclass
class Worker:
    """What the watcher hands releases and errors to; its first `failing` switches raise."""

    failing: int = 0
    seen: list[str] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    async def on_release(self, new: ModelRelease) -> None:
        self.seen.append(new.version)
        if len(self.seen) <= self.failing:
            raise RuntimeError(f"switching to {new.version} failed")


def watcher_for(bootstrap_servers: str, topic: str, worker: Worker, **kwargs: float) -> ModelWatcher:
    return ModelWatcher(KafkaSettings(bootstrap_servers=bootstrap_servers), topic, NAME, worker.on_release,
                        on_error=worker.errors.append, backoff_base_s=0.01, backoff_max_s=0.1, **kwargs)


@dataclass
class Watching:
    task: asyncio.Task[None]

    async def until(self, condition: Callable[[], object], what: str, timeout_s: float = 30) -> None:
        await wait_until(lambda: condition() or self.task.done(), timeout_s, what)
        assert not self.task.done(), f"the watcher ended by itself, waiting for {what}"


@asynccontextmanager
async def watching(watcher: ModelWatcher) -> AsyncIterator[Watching]:
    task = asyncio.create_task(watcher.run())
    try:
        yield Watching(task)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):  # a cancel ends it, whatever it was doing
            await task


async def test_a_failing_switch_is_logged_counted_and_the_next_release_still_arrives(
    broker: LocalBroker, topics: TopicNames
) -> None:
    worker = Worker(failing=1)
    await produce_raw(broker.bootstrap_servers, topics.models, [release("1")])
    with capture_logs() as logs:
        async with watching(watcher_for(broker.bootstrap_servers, topics.models, worker)) as watch:
            await watch.until(lambda: worker.seen == ["1", "1"], "release 1 handed over again after the failure")
            await produce_raw(broker.bootstrap_servers, topics.models, [release("2")])
            await watch.until(lambda: worker.seen == ["1", "1", "2"], "release 2 handed over")
    assert [repr(e) for e in worker.errors] == [repr(RuntimeError("switching to 1 failed"))]
    failed = [entry for entry in logs if entry["event"] == "model_watch_failed"]
    assert [(e["log_level"], e["error_type"], e["error"], e["failures"]) for e in failed] == [
        ("error", "RuntimeError", "switching to 1 failed", 1)]


async def test_a_missing_topic_is_reported_and_retried_until_it_exists(broker: LocalBroker) -> None:
    names = TopicNames(f"mw-{uuid.uuid4().hex[:8]}.")
    worker = Worker()
    async with watching(watcher_for(broker.bootstrap_servers, names.models, worker)) as watch:
        await watch.until(lambda: len(worker.errors) >= 3, "three failed starts")
        await create_topics(broker.bootstrap_servers, topic_specs(names, partitions=1))
        await produce_raw(broker.bootstrap_servers, names.models, [release("1")])
        await watch.until(lambda: worker.seen == ["1"], "the release, once the topic exists")
    assert {type(e) for e in worker.errors} == {ModelTopicMissing}


async def test_a_broker_replaced_under_the_watcher_is_followed_again() -> None:
    """The new broker is empty: the recreated topic holds release 2 at offset 0, below the position the
    watcher had reached on the old one, where a consumer that only carried on would never fetch it."""
    broker = await LocalBroker().start_async()
    names = TopicNames("replaced.")
    worker = Worker()
    try:
        await create_topics(broker.bootstrap_servers, topic_specs(names, partitions=1))
        await produce_raw(broker.bootstrap_servers, names.models, [release("1")])
        async with watching(watcher_for(broker.bootstrap_servers, names.models, worker, resync_s=0.5)) as watch:
            await watch.until(lambda: worker.seen == ["1"], "release 1")
            await asyncio.to_thread(broker.stop)
            await broker.start_async()  # same port, nothing kept
            await create_topics(broker.bootstrap_servers, topic_specs(names, partitions=1))
            await produce_raw(broker.bootstrap_servers, names.models, [release("2")])
            await watch.until(lambda: worker.seen == ["1", "2"], "release 2 from the new broker", timeout_s=60)
    finally:
        await asyncio.to_thread(broker.stop)


def test_the_backoff_doubles_and_is_capped() -> None:
    assert [backoff_s(n, base_s=0.5, max_s=30) for n in (1, 2, 3, 4, 7, 50)] == [0.5, 1, 2, 4, 30, 30]
