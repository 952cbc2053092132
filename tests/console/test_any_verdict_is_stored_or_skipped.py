"""Property: whatever a record on the verdicts topic carries, the console's intake ends it as a stored queue item
or a counted skip, and keeps running, ready.

Hypothesis feeds arbitrary bytes, JSON of any shape, and verdicts (every one sampled: `random_rate` 1) whose
coordinates and times are hostile: negative, huge or past-the-log offsets and partitions, other topics (the
audit labels, one nobody made, an illegal name), a record of another event or a verdict where the event should
be, no coordinates at all, times without an offset, far in the future or out of range in UTC. One console takes
every example: surviving all of them is part of the property.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, example, given
from hypothesis import settings as examples
from hypothesis import strategies as st

from console.service import ConsoleService
from console.settings import ConsoleSettings
from tests.console.conftest import chat, running_console, verdict
from tests.console.health import readyz
from tests.waiting import wait_until
from topics.local_broker import LocalBroker
from topics.registry import TopicNames

TEXT = st.text(max_size=40)
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12)
HOSTILE = {  # coordinates by what they are: (topic, partition, offset), the topic by its TopicNames attribute
    "past its partition's log": ("events", 0, 1_000_000),
    "a partition the topic lacks": ("events", 99, 0),
    "the last partition Kafka allows": ("events", 2**31 - 1, 0),
    "the last offset Kafka allows": ("events", 1, 2**63 - 1),
    "a verdict where the event should be": ("verdicts", 0, 0),
    "the audit labels topic": ("audit_labels", 0, 0),
    "a topic nobody made": ("nobody.made.this", 0, 0),
    "an illegal topic name": ("a name!", 0, 0),
    "a negative offset": ("events", 0, -1),
    "a negative partition": ("events", -1, 0),
    "an offset past int64": ("events", 0, 2**63),
    "a partition past int32": ("events", 2**31, 0),
}
COORDINATES = st.one_of(
    st.sampled_from([None, "its event", "another event", *HOSTILE]),  # a real event: its own record, or another's
    st.tuples(st.sampled_from(["events", "verdicts"]), st.integers(-1, 4), st.integers(-1, 12)),
)
TIMES = [None, "2026-11-30T12:00:00", "9999-12-31T23:59:59Z", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00",
         "2026-11-30T12:00:00+05:30", "yesterday"]
TIME = st.sampled_from(TIMES)
VERDICT = st.fixed_dictionaries({"source": COORDINATES, "produced_at": TIME, "error": st.booleans()})
RECORD = st.one_of(
    st.binary(max_size=500).map(lambda raw: ("bytes", raw)),
    JSON.map(lambda value: ("json", value)),
    *[VERDICT.map(lambda plan: ("verdict", plan))] * 3,  # most records reach resolution, not just decoding
)


@dataclass
class Running:
    service: ConsoleService
    topics: TopicNames
    producer: AIOKafkaProducer


@pytest.fixture
async def running(broker: LocalBroker, topics: TopicNames, console_settings: ConsoleSettings
                  ) -> AsyncIterator[Running]:
    console_settings.sampling.random_rate = 1.0  # every verdict that decodes is sampled: it needs its event
    console_settings.resolve_timeout_s = 0.3  # each past-the-log coordinate waits this out
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
    await producer.start()
    try:
        async with running_console(console_settings) as service:  # which re-raises the error of a console that ended
            yield Running(service, topics, producer)
    finally:
        await producer.stop()


def skips(service: ConsoleService) -> float:
    """Every record the intake counted as skipped, whatever the reason."""
    counted = ("guardstream_console_verdicts_undecodable_total", "guardstream_console_verdicts_refused_total",
               "guardstream_console_events_unreadable_total")
    return sum(sample.value for metric in service.metrics.registry.collect() for sample in metric.samples
               if sample.name in counted)


async def as_record(running: Running, kind: str, plan: Any) -> tuple[bytes, str | None]:
    """The record's value, and the event id of a verdict (None for anything else)."""
    if kind == "bytes":
        return plan, None
    if kind == "json":
        return json.dumps(plan).encode(), None
    event_id = uuid.uuid4().hex
    body = verdict(event_id, error="x" if plan["error"] else None).model_dump(mode="json")
    body["source"] = await coordinates(running, event_id, plan["source"])
    if plan["produced_at"] is not None:
        body["produced_at"] = plan["produced_at"]
    return json.dumps(body).encode(), event_id


async def coordinates(running: Running, event_id: str, plan: Any) -> dict[str, Any] | None:
    if plan is None:
        return None
    if plan in ("its event", "another event"):
        return await real_event(running, event_id if plan == "its event" else uuid.uuid4().hex)
    topic, partition, offset = HOSTILE.get(plan, plan)
    return {"topic": getattr(running.topics, topic, topic), "partition": partition, "offset": offset}


async def real_event(running: Running, owner: str) -> dict[str, Any]:
    placed = await running.producer.send_and_wait(running.topics.events, chat(owner).model_dump_json().encode())
    return {"topic": placed.topic, "partition": placed.partition, "offset": placed.offset}


@pytest.mark.slow
@examples(max_examples=16, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(plans=st.lists(RECORD, min_size=1, max_size=5))
@example(plans=[("verdict", {"source": where, "produced_at": None, "error": False})  # each named case once
                for where in [None, "its event", "another event", *HOSTILE]])
@example(plans=[("verdict", {"source": "its event", "produced_at": when, "error": True}) for when in TIMES])
async def test_any_verdict_record_ends_stored_or_counted_and_the_intake_stays_ready(
        running: Running, plans: list[tuple[str, Any]]) -> None:
    service = running.service
    seen, skipped = service.intake.seen, skips(service)
    verdicts: list[str] = []
    for kind, plan in plans:
        value, event_id = await as_record(running, kind, plan)
        await running.producer.send_and_wait(running.topics.verdicts, value, key=uuid.uuid4().bytes)
        verdicts += [event_id] if event_id else []
    await wait_until(lambda: service.intake.seen >= seen + len(plans), 60, "every record read and committed")
    stored = service.store.events_with_items(verdicts)
    assert len(stored) + skips(service) - skipped == len(plans), plans
    assert await readyz(service) == (200, {"ready": True, "problems": [], "degraded": []})  # answered: the console still runs
