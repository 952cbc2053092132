"""Rebalances with events in flight. A member joining takes partitions from one that is mid-stream: the
revoked partitions' answered prefix is committed before they move, so the new owner repeats only what was in
flight. A member SIGKILLed mid-stream commits nothing more: its partitions move after the session timeout,
no committed offset ever passes an unanswered record, and the survivor answers the rest."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter, defaultdict
from datetime import UTC, datetime

import pytest

from schemas.events import ChatEvent, Verdict
from tests.conftest import committed_and_end, running_worker, verdicts_covering
from tests.factories import BENIGN, HARMFUL, event
from tests.kafka_io import QUIET_S, read_topic
from tests.waiting import wait_until
from tests.workers.test_crash_recovery import worker_process
from topics.io import produce_events
from topics.registry import TopicNames
from workers.guard.base import GuardOutcome, GuardRequest
from workers.settings import WorkerSettings


class Unhurried:
    """The lite guard with a pause per batch, so a stream of a few hundred events is still in flight when the
    group changes."""

    def __init__(self, inner, pause_s: float) -> None:
        self.inner, self.pause_s, self.name = inner, pause_s, "unhurried"

    async def moderate(self, requests: list[GuardRequest]) -> list[GuardOutcome]:
        await asyncio.sleep(self.pause_s)
        return await self.inner.moderate(requests)

    async def close(self) -> None:
        pass


def stream(n: int, tag: str) -> list[ChatEvent]:
    pool = BENIGN + HARMFUL
    return [event(f"{pool[i % len(pool)]} ({tag} {i})", conversation=f"{tag}{i % 11}") for i in range(n)]


@pytest.mark.slow
async def test_a_member_joining_mid_stream_repeats_only_what_was_in_flight(settings: WorkerSettings, lite_guard) -> None:
    settings.kafka.commit_interval_ms = 600_000  # only the revoke (and the shutdown) commit
    settings.batch.max_batch, settings.batch.max_in_flight_events = 4, 16
    settings.kafka.max_poll_records = 16
    events = stream(600, "join")
    await produce_events(settings.kafka.bootstrap_servers, TopicNames(settings.kafka.topic_prefix).events, events)
    seen: dict[str, list[Verdict]] = {"a": [], "b": []}
    async with running_worker(settings, Unhurried(lite_guard, 0.05), on_verdict=seen["a"].append) as a:
        await wait_until(lambda: len(seen["a"]) >= 60, 60, "the first member is mid-stream")
        async with running_worker(settings, Unhurried(lite_guard, 0.05), on_verdict=seen["b"].append) as b:
            await wait_until(lambda: a.consumer.assignment() and b.consumer.assignment(), 60,
                             "the partitions are split between both members")
            answered_when_split = len(seen["a"])
            verdicts = await verdicts_covering(settings, {e.event_id for e in events}, timeout_s=120,
                                               settle_s=QUIET_S)
    assert answered_when_split < len(events), "the stream had ended before the rebalance"
    assert seen["b"], "the new member answered part of the stream"
    counts = Counter(v.event_id for v in verdicts)
    assert set(counts) == {e.event_id for e in events}
    repeated = sum(n - 1 for n in counts.values())
    # without the revoke commit, the new owner would answer again everything the first one answered on the
    # moved partitions (about half of `answered_when_split`)
    assert repeated <= settings.batch.max_in_flight_events, repeated
    committed, ends = await committed_and_end(settings, len(events))
    assert committed == ends


@pytest.mark.slow
async def test_a_member_killed_mid_stream_leaves_no_committed_offset_past_an_unanswered_record(
        settings: WorkerSettings, lite_guard) -> None:
    settings.batch.max_batch, settings.batch.max_in_flight_events = 4, 32
    topic = TopicNames(settings.kafka.topic_prefix).events
    events = stream(1000, "kill")
    with worker_process(settings) as killed:
        async with running_worker(settings, Unhurried(lite_guard, 0.01)) as survivor:
            await wait_until(lambda: 0 < len(survivor.consumer.assignment()) < 4, 120,
                             "the subprocess member holds partitions")
            killed_partitions = set(range(4)) - {tp.partition for tp in survivor.consumer.assignment()}
            await produce_events(settings.kafka.bootstrap_servers, topic, events)
            await read_topic(settings.kafka.bootstrap_servers, TopicNames(settings.kafka.topic_prefix).verdicts,
                             200, timeout_s=120)
            killed.send_signal(signal.SIGKILL)
            killed.wait()
            committed_at_kill, _ = await committed_and_end(settings, len(events))
            # read after the commits: the survivor goes on answering and committing its own partitions, and
            # whatever the commits cover was answered by the time they were read
            killed_at = datetime.now(UTC)
            verdicts = await verdicts_covering(settings, {e.event_id for e in events}, timeout_s=180,
                                               settle_s=QUIET_S)
            assert {tp.partition for tp in survivor.consumer.assignment()} == set(range(4))
    answered_at_kill = {v.event_id for v in verdicts if v.produced_at <= killed_at}
    position = {ChatEvent.model_validate_json(r.value).event_id: (r.partition, r.offset)
                for r in await read_topic(settings.kafka.bootstrap_servers, topic, len(events))}
    unanswered: dict[int, list[int]] = defaultdict(list)
    for event_id, (partition, offset) in position.items():
        if event_id not in answered_at_kill:
            unanswered[partition].append(offset)
    assert any(unanswered[p] for p in killed_partitions), "the killed member had finished its partitions"
    for partition, offset in committed_at_kill.items():
        assert all(offset <= o for o in unanswered[partition]), (partition, offset)
    assert set(Counter(v.event_id for v in verdicts)) == set(position)
