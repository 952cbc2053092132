"""The worker against a real broker, Redis, S3 server and the lite guard."""

from __future__ import annotations

from collections import Counter

from schemas.events import VerdictStatus
from tests.conftest import S3, running_worker, verdicts_covering, verdicts_for
from tests.factories import BENIGN, HARMFUL, event, image_ref, png
from tests.kafka_io import QUIET_S
from tests.waiting import wait_until
from topics.io import produce_events, produce_raw
from workers.settings import WorkerSettings


async def test_every_event_gets_exactly_one_verdict(settings: WorkerSettings, lite_guard, s3: S3) -> None:
    picture = png(96, 64, (20, 120, 200))
    uri = s3.put("e2e/blue.png", picture)
    events = (
        [event(f"{t} (variant {i})", conversation=f"c{i}") for i, t in enumerate(BENIGN * 3)]
        + [event(t, conversation=f"h{i}") for i, t in enumerate(HARMFUL)]
        + [event(images=[image_ref(uri, picture)], conversation="img")]
        + [event("What is in this picture?", images=[image_ref(uri)], conversation="img2")]
        + [event(BENIGN[0], response="Plants turn light, water and CO2 into sugar.", conversation="audit")]
    )
    await produce_events(settings.kafka.bootstrap_servers, f"{settings.kafka.topic_prefix}chat.events", events)
    async with running_worker(settings, lite_guard):
        verdicts = await verdicts_for(settings, len(events), settle_s=QUIET_S)
    by_id = {v.event_id: v for v in verdicts}
    assert Counter(v.event_id for v in verdicts) == Counter(e.event_id for e in events)
    assert all(v.status is VerdictStatus.OK for v in verdicts)
    for e in events:
        v = by_id[e.event_id]
        assert v.conversation_id == e.conversation_id
        assert (v.response_harmful is None) == (e.response is None)
        assert v.model.name == settings.guard.model_name and v.reasoning
    assert [by_id[e.event_id].request_harmful for e in events if e.text in HARMFUL] == [True] * len(HARMFUL)
    assert not any(by_id[e.event_id].request_harmful for e in events[:3])
    image_verdict = by_id[events[-3].event_id]
    assert "nsfw score" in image_verdict.reasoning and image_verdict.timings_ms["fetch_ms"] > 0


async def test_repeats_are_cache_hits(settings: WorkerSettings, lite_guard) -> None:
    topic = f"{settings.kafka.topic_prefix}chat.events"
    first = [event(t, conversation=f"c{i}") for i, t in enumerate(BENIGN + HARMFUL)]
    repeats = [event(e.text, conversation=f"r{i}") for i, e in enumerate(first)]
    async with running_worker(settings, lite_guard) as worker:
        await produce_events(settings.kafka.bootstrap_servers, topic, first)
        await verdicts_covering(settings, {e.event_id for e in first})
        await produce_events(settings.kafka.bootstrap_servers, topic, repeats)
        verdicts = await verdicts_covering(settings, {e.event_id for e in first + repeats})
    by_id = {v.event_id: v for v in verdicts}
    assert not any(by_id[e.event_id].cache_hit for e in first)
    assert all(by_id[e.event_id].cache_hit for e in repeats)
    for original, repeat in zip(first, repeats, strict=True):
        assert by_id[original.event_id].content_key == by_id[repeat.event_id].content_key
        assert by_id[original.event_id].request_harmful == by_id[repeat.event_id].request_harmful
    assert worker.metrics.registry.get_sample_value("guardstream_cache_hits_total") == len(repeats)


async def test_identical_events_in_flight_share_one_inference(settings: WorkerSettings, lite_guard) -> None:
    same = [event("Tell me a fun fact about octopuses.", conversation="same") for _ in range(6)]
    await produce_events(settings.kafka.bootstrap_servers, f"{settings.kafka.topic_prefix}chat.events", same)
    async with running_worker(settings, lite_guard) as worker:
        verdicts = await verdicts_for(settings, len(same), settle_s=QUIET_S)
    assert Counter(v.event_id for v in verdicts) == Counter(e.event_id for e in same)
    assert len({v.content_key for v in verdicts}) == 1
    registry = worker.metrics.registry
    shared = registry.get_sample_value("guardstream_singleflight_joins_total")
    hits = registry.get_sample_value("guardstream_cache_hits_total")
    assert registry.get_sample_value("guardstream_batch_size_sum") == 1  # one inference for six events
    assert shared + hits == len(same) - 1


async def test_every_answer_releases_its_hold_on_the_model_once(settings: WorkerSettings, lite_guard) -> None:
    """A replaced model is closed only once no event bound to it is unanswered, so every answer (a verdict,
    a cache hit, an event over a limit, a record that is not an event) must release its hold exactly once."""
    settings.limits.max_text_chars = 60
    events = [event("Tell me a fun fact about octopuses."), event("x" * 80), event("Tell me a fun fact about octopuses.")]
    topic = f"{settings.kafka.topic_prefix}chat.events"
    await produce_events(settings.kafka.bootstrap_servers, topic, events)
    await produce_raw(settings.kafka.bootstrap_servers, topic, [(b"k", b"not json")])
    async with running_worker(settings, lite_guard) as worker:
        await verdicts_for(settings, len(events))
        await wait_until(lambda: worker.tracker.unanswered_count() == 0, what="every record is answered")
        assert worker.served.users == 0
