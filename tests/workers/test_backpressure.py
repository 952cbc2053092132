"""Above max_in_flight_events the worker pauses its partitions, and resumes; nothing is dropped."""

from __future__ import annotations

import asyncio
from collections import Counter

from tests.conftest import running_worker, verdicts_for
from tests.factories import BENIGN, event
from tests.kafka_io import QUIET_S
from topics.io import produce_events
from workers.settings import WorkerSettings
from workers.worker import Worker

SAMPLE_S = 0.002


async def sample_in_flight(worker: Worker, samples: list[int]) -> None:
    while True:
        samples.append(worker.tracker.unanswered_count())
        await asyncio.sleep(SAMPLE_S)


async def test_in_flight_events_stay_within_the_limit_and_every_event_is_answered_once(
    settings: WorkerSettings, lite_guard
) -> None:
    limit, per_poll = 8, 4
    settings.batch.max_in_flight_events = limit
    settings.batch.max_batch = 4
    settings.kafka.max_poll_records = per_poll
    events = [event(f"{BENIGN[i % len(BENIGN)]} ({i})", conversation=f"c{i % 9}") for i in range(120)]
    await produce_events(settings.kafka.bootstrap_servers, f"{settings.kafka.topic_prefix}chat.events", events)
    samples: list[int] = []
    async with running_worker(settings, lite_guard) as worker:
        sampler = asyncio.create_task(sample_in_flight(worker, samples))
        try:
            verdicts = await verdicts_for(settings, len(events), timeout_s=120, settle_s=QUIET_S)
        finally:
            sampler.cancel()
        pauses = worker.metrics.registry.get_sample_value("guardstream_backpressure_pauses_total")
    # The worker polls only while not paused, that is after a check that found fewer than `limit` events
    # unanswered; until the next poll answers only lower the count, and a poll adds at most `per_poll`.
    assert max(samples) <= limit - 1 + per_poll, f"in flight peaked at {max(samples)}"
    assert max(samples) >= limit, "the limit was never reached: pausing was not exercised"
    assert pauses >= 2  # paused, resumed, paused again
    assert Counter(v.event_id for v in verdicts) == Counter(e.event_id for e in events)
