"""Redis going away mid-stream degrades to no cache: every event is still answered."""

from __future__ import annotations

from collections import Counter

from tests.conftest import RedisServer, running_worker, verdicts_covering
from tests.factories import BENIGN, HARMFUL, event
from tests.kafka_io import QUIET_S
from topics.io import produce_events
from workers.settings import WorkerSettings


async def test_redis_outage_mid_stream_loses_no_event(settings: WorkerSettings, lite_guard, own_redis: RedisServer) -> None:
    settings.cache.redis_url = own_redis.url
    topic = f"{settings.kafka.topic_prefix}chat.events"
    before = [event(f"{t} ({i})", conversation=f"b{i}") for i, t in enumerate(BENIGN + HARMFUL)]
    during = [event(f"{t} [{i}]", conversation=f"d{i}") for i, t in enumerate(BENIGN + HARMFUL)] + [
        event(e.text, conversation="repeat") for e in before
    ]
    after = [event(e.text, conversation="again") for e in before]
    async with running_worker(settings, lite_guard) as worker:
        await produce_events(settings.kafka.bootstrap_servers, topic, before)
        await verdicts_covering(settings, {e.event_id for e in before})
        own_redis.kill()
        await produce_events(settings.kafka.bootstrap_servers, topic, during)
        await verdicts_covering(settings, {e.event_id for e in during})
        own_redis.restart()  # an empty Redis: the cache refills from new answers
        await produce_events(settings.kafka.bootstrap_servers, topic, after)
        verdicts = await verdicts_covering(settings, {e.event_id for e in after}, settle_s=QUIET_S)
    assert Counter(v.event_id for v in verdicts) == Counter(e.event_id for e in before + during + after)
    assert all(v.status.value == "ok" for v in verdicts)
    by_id = {v.event_id: v for v in verdicts}
    assert not any(by_id[e.event_id].cache_hit for e in during)  # Redis was down: no hits, no failures
    assert worker.metrics.registry.get_sample_value("guardstream_cache_errors_total") >= 1
