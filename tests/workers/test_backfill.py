"""`guardstream replay --to-topic`: a range of events re-moderated into a verdict topic of its own,
resumable from its position file, never into the live verdict topic unless asked."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.events import Verdict
from tests.conftest import PARTITIONS
from tests.factories import BENIGN, HARMFUL, event
from tests.kafka_io import partition_ends, read_topic
from topics.admin import create_topics
from topics.io import produce_events, produce_raw
from topics.ranges import RangeSpec, RateLimit
from topics.registry import TopicNames, TopicSpec
from workers.backfill import ReplayRefused, check_target, run_backfill
from workers.guard.lite import LiteGuard
from workers.settings import WorkerSettings


async def test_a_backfill_answers_each_event_in_range_once_and_resumes_where_it_stopped(
    settings: WorkerSettings, lite_guard: LiteGuard, tmp_path: Path
) -> None:
    topics = TopicNames(settings.kafka.topic_prefix)
    target = f"{topics.prefix}backfill.verdicts"
    await create_topics(settings.kafka.bootstrap_servers, [TopicSpec(target, PARTITIONS, 1, {})])
    events = [event(t, conversation=f"c{i}") for i, t in enumerate((BENIGN + HARMFUL) * 2)]
    await produce_events(settings.kafka, topics.events, events)
    await produce_raw(settings.kafka, topics.events, [(b"c0", b"not json")])
    records = await read_topic(settings.kafka.bootstrap_servers, topics.events, len(events) + 1)
    ends = partition_ends(records, PARTITIONS)
    spec = RangeSpec(offsets=",".join(f"{p}:1-{end}" for p, end in ends.items() if end))  # each partition but its first
    wanted = {(r.partition, r.offset) for r in records if r.offset >= 1}
    position = tmp_path / "position.json"

    first = await run_backfill(settings, lite_guard, topics.events, target, spec, position, RateLimit(None),
                               batch_size=3, idle_timeout_s=3, max_batches=1)
    assert first.incomplete and 0 < first.read <= 3
    second = await run_backfill(settings, lite_guard, topics.events, target, spec, position, RateLimit(None),
                                batch_size=3, idle_timeout_s=3)
    assert second.incomplete == {} and first.read + second.read == len(wanted)

    undecodable = sum(r.value == b"not json" for r in records if (r.partition, r.offset) in wanted)
    answers = await read_topic(settings.kafka.bootstrap_servers, target, len(wanted) - undecodable, settle_s=1.5)
    verdicts = [Verdict.model_validate_json(a.value) for a in answers]
    sources = [(v.source.partition, v.source.offset) for v in verdicts if v.source is not None]
    assert sorted(sources) == sorted(w for w in wanted if w not in _raw_at(records, b"not json"))  # once each
    assert first.counts.get("undecodable:decode_failed", 0) + second.counts.get("undecodable:decode_failed", 0) \
        == undecodable
    by_offset = {(r.partition, r.offset): r for r in records}
    assert all(v.event_id in by_offset[(v.source.partition, v.source.offset)].value.decode() for v in verdicts
               if v.source is not None)


def _raw_at(records: list, value: bytes) -> set[tuple[int, int]]:  # type: ignore[type-arg]
    return {(r.partition, r.offset) for r in records if r.value == value}


def test_a_backfill_refuses_the_live_verdict_topic_and_its_own_source(settings: WorkerSettings) -> None:
    topics = TopicNames(settings.kafka.topic_prefix)
    with pytest.raises(ReplayRefused, match="live verdict topic"):
        check_target(settings, topics.events, topics.verdicts, allow_live_topic=False)
    with pytest.raises(ReplayRefused, match="being replayed"):
        check_target(settings, topics.events, topics.events, allow_live_topic=True)
    check_target(settings, topics.events, topics.verdicts, allow_live_topic=True)
