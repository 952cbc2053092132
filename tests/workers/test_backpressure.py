"""Above max_in_flight_events the worker pauses its partitions, and resumes; nothing is dropped."""

from __future__ import annotations

from tests.conftest import running_worker, verdicts_for
from tests.factories import BENIGN, event
from topics.io import produce_events
from workers.settings import WorkerSettings


async def test_a_full_pipeline_pauses_the_partitions_and_still_answers_every_event(
    settings: WorkerSettings, lite_guard
) -> None:
    settings.batch.max_in_flight_events = 8
    settings.batch.max_batch = 4
    settings.kafka.max_poll_records = 50
    events = [event(f"{BENIGN[i % len(BENIGN)]} ({i})", conversation=f"c{i % 9}") for i in range(120)]
    await produce_events(settings.kafka.bootstrap_servers, f"{settings.kafka.topic_prefix}chat.events", events)
    async with running_worker(settings, lite_guard) as worker:
        verdicts = await verdicts_for(settings, len(events), timeout_s=120)
        registry = worker.metrics.registry
        pauses = registry.get_sample_value("guardstream_backpressure_pauses_total")
    assert pauses >= 2  # paused, resumed, paused again
    assert {v.event_id for v in verdicts} == {e.event_id for e in events} and len(verdicts) == len(events)
