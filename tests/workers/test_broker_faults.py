"""The worker with its broker behind a fault proxy: every byte between them can be cut. A cut longer than the
group's session timeout evicts the worker from its group; it waits, rejoins and resumes where its commits say,
losing and skipping no offset, and /readyz says the brokers are failing while they are."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from runtime.dependency_state import BROKER
from schemas.events import Verdict
from tests.conftest import ProxiedBroker, committed_and_end, running_worker, verdicts_covering
from tests.factories import BENIGN, HARMFUL, event
from tests.kafka_io import QUIET_S
from tests.waiting import wait_until
from tests.workers.test_crash_recovery import worker_process
from topics.admin import create_topics
from topics.io import produce_events
from topics.registry import TopicNames, topic_specs
from workers.settings import WorkerSettings

PARTITIONS = 4


@pytest.fixture
async def on_proxied_broker(settings: WorkerSettings, proxied_broker: ProxiedBroker) -> WorkerSettings:
    settings.kafka.bootstrap_servers = proxied_broker.bootstrap_servers
    settings.kafka.broker_check_interval_s = 0.5
    await create_topics(proxied_broker.bootstrap_servers,
                        topic_specs(TopicNames(settings.kafka.topic_prefix), partitions=PARTITIONS))
    return settings


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["refuse", "blackhole"])
async def test_a_broker_cut_longer_than_the_session_timeout_loses_and_skips_nothing(
        on_proxied_broker: WorkerSettings, proxied_broker: ProxiedBroker, lite_guard, fault: str) -> None:
    settings = on_proxied_broker
    settings.batch.max_batch, settings.batch.max_in_flight_events = 4, 32  # the stream is mid-way at the cut
    topic = TopicNames(settings.kafka.topic_prefix).events
    pool = BENIGN + HARMFUL
    first = [event(f"{pool[i % len(pool)]} (first {i})", conversation=f"c{i % 7}") for i in range(400)]
    second = [event(f"{pool[i % len(pool)]} (second {i})", conversation=f"d{i % 7}") for i in range(100)]
    await produce_events(settings.kafka.bootstrap_servers, topic, first)
    answered: list[Verdict] = []
    async with running_worker(settings, lite_guard, on_verdict=answered.append) as worker:
        await wait_until(lambda: len(answered) >= 20, 60, "the first verdicts")
        with proxied_broker.proxy.fault(fault):
            cut_at = time.monotonic()
            await wait_until(lambda: any(p.startswith(f"{BROKER} failing") for p in worker.problems()), 30,
                             "/readyz names the brokers")
            assert not worker.ready
            assert len({v.event_id for v in answered}) < len(first), "the cut came after the stream had ended"
            outlasted = settings.kafka.session_timeout_ms / 1000 + 1
            await wait_until(lambda: time.monotonic() - cut_at > outlasted, outlasted + 5,
                             "the cut outlasts the session timeout")
        await produce_events(settings.kafka.bootstrap_servers, topic, second)
        verdicts = await verdicts_covering(settings, {e.event_id for e in first + second}, timeout_s=120,
                                           settle_s=QUIET_S)
        await wait_until(lambda: worker.ready, 30, "ready again once the brokers answer")
    committed, ends = await committed_and_end(settings, len(first) + len(second))
    assert committed == ends, "every offset is committed in the end: none skipped, none left behind"
    counts = Counter(v.event_id for v in verdicts)
    assert set(counts) == {e.event_id for e in first + second}
    repeated = sum(n - 1 for n in counts.values())
    assert repeated <= settings.batch.max_in_flight_events + settings.kafka.max_poll_records, (
        "only answers not yet committed at the cut may be given twice")


@pytest.mark.slow
async def test_a_worker_started_while_its_broker_is_unreachable_waits_then_answers(
        on_proxied_broker: WorkerSettings, proxied_broker: ProxiedBroker) -> None:
    settings = on_proxied_broker
    settings.startup_wait_s = 60
    events = [event(f"{BENIGN[i % len(BENIGN)]} (late {i})") for i in range(20)]
    await produce_events(settings.kafka.bootstrap_servers, TopicNames(settings.kafka.topic_prefix).events, events)
    with worker_process(settings) as process:
        with proxied_broker.proxy.fault("refuse"):
            started = time.monotonic()
            await wait_until(lambda: process.poll() is not None or time.monotonic() - started > 3, 10,
                             "the worker has waited through several failed checks")
            assert process.poll() is None, "the worker gave up instead of waiting for its broker"
        verdicts = await verdicts_covering(settings, {e.event_id for e in events}, timeout_s=120)
    assert {v.event_id for v in verdicts} == {e.event_id for e in events}
