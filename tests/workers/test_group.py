"""Two workers in one consumer group split the partitions and together answer every event once."""

from __future__ import annotations

from collections import Counter

from schemas.events import Verdict
from tests.conftest import PARTITIONS, running_worker, verdicts_for
from tests.factories import BENIGN, event
from tests.kafka_io import QUIET_S
from tests.waiting import wait_until
from topics.io import produce_events
from workers.settings import WorkerSettings


async def test_two_workers_split_partitions_and_answer_every_event_once(settings: WorkerSettings, lite_guard) -> None:
    seen: dict[str, list[Verdict]] = {"a": [], "b": []}
    events = [event(f"{BENIGN[i % len(BENIGN)]} #{i}", conversation=f"conv-{i}") for i in range(60)]
    async with running_worker(settings, lite_guard, on_verdict=seen["a"].append) as a, running_worker(
        settings, lite_guard, on_verdict=seen["b"].append
    ) as b:
        await wait_until(lambda: a.consumer.assignment() and b.consumer.assignment(), timeout_s=30,
                         what="both members of the group hold partitions")
        owned_a, owned_b = a.consumer.assignment(), b.consumer.assignment()
        assert not owned_a & owned_b and len(owned_a | owned_b) == PARTITIONS
        await produce_events(settings.kafka.bootstrap_servers, f"{settings.kafka.topic_prefix}chat.events", events)
        verdicts = await verdicts_for(settings, len(events), settle_s=QUIET_S)
    expected = Counter(e.event_id for e in events)
    assert Counter(v.event_id for v in verdicts) == expected
    assert seen["a"] and seen["b"]
    assert Counter(v.event_id for v in seen["a"] + seen["b"]) == expected
