"""Two workers in one consumer group split the partitions and together answer every event."""

from __future__ import annotations

import asyncio

from schemas.events import Verdict
from tests.conftest import PARTITIONS, running_worker, verdicts_for
from tests.factories import BENIGN, event
from topics.io import produce_events
from workers.settings import WorkerSettings


async def test_two_workers_split_partitions_and_answer_every_event(settings: WorkerSettings, lite_guard) -> None:
    seen: dict[str, list[Verdict]] = {"a": [], "b": []}
    events = [event(f"{BENIGN[i % len(BENIGN)]} #{i}", conversation=f"conv-{i}") for i in range(60)]
    async with running_worker(settings, lite_guard, on_verdict=seen["a"].append) as a, running_worker(
        settings, lite_guard, on_verdict=seen["b"].append
    ) as b:
        for _ in range(200):  # the group settles when both members hold partitions
            if a.consumer.assignment() and b.consumer.assignment():
                break
            await asyncio.sleep(0.1)
        owned_a, owned_b = a.consumer.assignment(), b.consumer.assignment()
        assert owned_a and owned_b and not owned_a & owned_b and len(owned_a | owned_b) == PARTITIONS
        await produce_events(settings.kafka.bootstrap_servers, f"{settings.kafka.topic_prefix}chat.events", events)
        verdicts = await verdicts_for(settings, len(events))
    assert {v.event_id for v in verdicts} == {e.event_id for e in events}
    assert seen["a"] and seen["b"]
    assert {v.event_id for v in seen["a"] + seen["b"]} == {e.event_id for e in events}
