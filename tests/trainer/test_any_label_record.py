"""Property: whatever a label record carries, it ends as a stored example or a counted skip, its offset is
committed, and the trainer stays ready.

Hypothesis feeds arbitrary bytes, JSON of the wrong shape, and labels that are nearly or wholly valid:
pointing at real verdicts and events, at hostile coordinates (negative, huge, other and illegal topics) and
with hostile times (naive, far future, out of range). One trainer on the real broker and moto S3 takes
every example; each example is one batch of records, published at once.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from hypothesis import strategies as st

from tests.factories import BENIGN, event
from tests.trainer.conftest import judged, running_trainer
from tests.trainer.label_outcomes import committed, skipped, total
from tests.waiting import wait_until
from topics.io import produce_raw
from topics.registry import TopicNames
from trainer.service import TrainerService
from trainer.settings import TrainerSettings
from workers.guard.lite import LiteGuard
from workers.settings import WorkerSettings

TEXT = st.text(max_size=30)
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
                    max_leaves=15)
OFFSET = st.sampled_from([-1, 2**63, -(2**70)]) | st.integers()
PARTITION = st.sampled_from([-1, 2**31, 2**40]) | st.integers()
TIME = st.one_of(
    st.datetimes().map(lambda t: t.isoformat()),  # naive, any year
    st.builds(lambda t, zone: t.isoformat() + zone, st.datetimes(), st.sampled_from(["Z", "+14:00", "-12:00"])),
    st.sampled_from(["9999-12-31T23:59:59-01:00", "3000-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "now"]),
    TEXT,
)


@dataclass
class Trainer:
    service: TrainerService
    settings: TrainerSettings
    topics: TopicNames
    real: list[tuple[str, dict[str, Any]]]  # judged events: (event id, its verdict's coordinates)
    published: int = 0


@pytest.fixture
async def trainer(settings: WorkerSettings, trainer_settings: TrainerSettings,
                  lite_guard: LiteGuard) -> AsyncIterator[Trainer]:
    """One trainer for every example: staying up and ready through all of them is part of the property."""
    events = [event(text, conversation=f"c{i}") for i, text in enumerate(BENIGN[:3])]
    records = await judged(settings, lite_guard, events)
    real = [(e.event_id, {"topic": r.topic, "partition": r.partition, "offset": r.offset})
            for e, r in ((e, records[e.event_id]) for e in events)]
    trainer_settings.dataset.resolve_timeout_s = 0.3  # coordinates past a log's end cost this each
    async with running_trainer(trainer_settings) as service:
        state = Trainer(service, trainer_settings, TopicNames(settings.kafka.topic_prefix), real)
        yield state
    assert await committed(trainer_settings) == state.published  # every record's offset, once it has ended


def coordinates(topics: TopicNames, real: list[tuple[str, dict[str, Any]]]) -> st.SearchStrategy[Any]:
    """Real coordinates, ones the schema lets through that lead nowhere (another topic, past a log's end, the
    largest partition and offset), and ones it refuses."""
    legal = st.fixed_dictionaries({
        "topic": st.sampled_from([topics.events, topics.verdicts, topics.audit_labels, "elsewhere"]),
        "partition": st.integers(0, 5) | st.just(2**31 - 1), "offset": st.integers(0, 6) | st.just(2**63 - 1)})
    hostile = st.fixed_dictionaries(
        {"topic": st.sampled_from(["bad topic!", "", "..", "x" * 300]) | TEXT, "partition": PARTITION,
         "offset": OFFSET}, optional={"key": TEXT | st.integers()})
    return st.sampled_from([ref for _, ref in real]) | legal | hostile | JSON


def label_values(topics: TopicNames, real: list[tuple[str, dict[str, Any]]]) -> st.SearchStrategy[dict[str, Any]]:
    ref = coordinates(topics, real)
    event_id = st.sampled_from([e for e, _ in real]) | TEXT
    valid = st.sampled_from(real).flatmap(lambda pair: st.fixed_dictionaries(
        {"event_id": st.just(pair[0]), "request_harmful": st.booleans(), "labeller": st.just("reviewer"),
         "verdict": st.just(pair[1])},
        optional={"labelled_at": TIME, "random_sample": st.none() | st.booleans()}))
    aimed = st.builds(lambda label, where, at: {**label, where: at},  # a well-formed label, hostile coordinates
                      st.fixed_dictionaries({"event_id": st.sampled_from([e for e, _ in real]),
                                             "request_harmful": st.booleans(),
                                             "labeller": st.just("reviewer")}),
                      st.sampled_from(["verdict", "event"]), ref)
    near = st.fixed_dictionaries({"event_id": event_id, "request_harmful": st.booleans() | JSON, "labeller": TEXT},
                                 optional={"labelled_at": TIME, "random_sample": st.none() | st.booleans() | JSON,
                                           "response_harmful": st.none() | st.booleans(), "note": TEXT,
                                           "verdict": ref, "event": ref, "schema_version": st.integers(-1, 3)})
    return aimed | valid | near


def records(topics: TopicNames, real: list[tuple[str, dict[str, Any]]]) -> st.SearchStrategy[bytes]:
    labels = label_values(topics, real).map(lambda value: json.dumps(value).encode())
    return st.one_of(labels, labels, st.binary(max_size=500), JSON.map(lambda value: json.dumps(value).encode()))


@pytest.mark.slow
@examples(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
async def test_any_label_record_ends_as_a_stored_example_or_a_counted_skip(trainer: Trainer, data: st.DataObject) -> None:
    values = data.draw(st.lists(records(trainer.topics, trainer.real), min_size=1, max_size=10), label="records")
    service = trainer.service
    await produce_raw(trainer.settings.kafka, trainer.topics.audit_labels,
                      [(uuid.uuid4().hex.encode(), value) for value in values])
    trainer.published += len(values)
    ended = lambda: total(service, "guardstream_trainer_labels_resolved_total") + skipped(service)  # noqa: E731
    await wait_until(lambda: ended() >= trainer.published and service.status()["pending_labels"] == 0,
                     timeout_s=60, what="every record ended and its example (if any) stored")
    assert ended() == total(service, "guardstream_trainer_labels_seen_total") == trainer.published
    assert service.examples_stored == total(service, "guardstream_trainer_labels_resolved_total")
    assert service.ready, service.problems()
