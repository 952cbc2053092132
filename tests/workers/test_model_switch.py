"""A ModelRelease on moderation.models switches a running worker's model without a restart or lost events."""

from __future__ import annotations

import asyncio
from pathlib import Path

from schemas.events import ModelRelease, VerdictStatus
from tests.conftest import S3, running_worker, verdicts_for
from tests.factories import event
from tests.tiny_qwen import LESSONS
from topics.io import produce_events, produce_raw
from workers.settings import WorkerSettings


async def wait_until(condition, timeout_s: float = 60) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout_s * 10)):
        if condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


async def test_a_release_switches_the_served_model_and_never_reuses_the_old_cache(
    settings: WorkerSettings, lite_guard, tiny_qwen: Path, s3: S3, tmp_path: Path
) -> None:
    settings.guard.artefact_cache_dir = tmp_path / "artefacts"
    servers = settings.kafka.bootstrap_servers
    events_topic = f"{settings.kafka.topic_prefix}chat.events"
    models_topic = f"{settings.kafka.topic_prefix}moderation.models"
    name = settings.guard.model_name
    texts = [lesson.request.text for lesson in LESSONS if not lesson.request.images and lesson.request.response is None]
    waves = [[event(t, conversation=f"w{w}-{i}") for i, t in enumerate(texts)] for w in range(3)]
    bad = ModelRelease(name=name, version="broken", backend="transformers", artefact_uri="/nonexistent/model")
    good = ModelRelease(name=name, version="2", backend="transformers",  # as the trainer publishes: on S3
                        artefact_uri=s3.put_folder(tiny_qwen, f"models/{settings.kafka.topic_prefix}v2"))
    other = ModelRelease(name="someone-else", version="9", backend="lite", artefact_uri="/x")

    async with running_worker(settings, lite_guard) as worker:
        await produce_events(servers, events_topic, waves[0])
        await verdicts_for(settings, len(texts))
        await produce_raw(servers, models_topic, [(b"junk", b"not a release"), (name.encode(), bad.model_dump_json().encode())])
        await wait_until(lambda: worker.metrics.registry.get_sample_value("guardstream_model_switch_failures_total") == 1)
        assert worker.served.ref.version == "1"
        await produce_raw(servers, models_topic, [(b"o", other.model_dump_json().encode()),
                                                  (name.encode(), good.model_dump_json().encode())])
        await produce_events(servers, events_topic, waves[1])  # in flight while the switch happens
        await wait_until(lambda: worker.served.ref.version == "2")
        await produce_events(servers, events_topic, waves[2])
        verdicts = await verdicts_for(settings, 3 * len(texts), timeout_s=90)

    by_id = {v.event_id: v for v in verdicts}
    assert len(verdicts) == 3 * len(texts) and set(by_id) == {e.event_id for w in waves for e in w}
    assert all(by_id[e.event_id].model.version == "1" and by_id[e.event_id].decided_by == "lite" for e in waves[0])
    assert all(by_id[e.event_id].model.version in {"1", "2"} for e in waves[1])
    for e, text in zip(waves[2], texts, strict=True):
        v = by_id[e.event_id]
        lesson = next(lesson for lesson in LESSONS if lesson.request.text == text)
        assert (v.model.version, v.decided_by, v.cache_hit, v.status) == ("2", "transformers", False, VerdictStatus.OK)
        assert v.request_harmful == lesson.harmful
        assert v.content_key != by_id[waves[0][texts.index(text)].event_id].content_key


async def test_a_replaced_model_is_closed_once_its_events_are_answered(settings: WorkerSettings, tiny_qwen: Path) -> None:
    settings.guard = settings.guard.model_copy(update={"backend": "transformers", "model_path": tiny_qwen,
                                                       "max_new_tokens": 80})
    release = ModelRelease(name=settings.guard.model_name, version="2", backend="transformers",
                           artefact_uri=str(tiny_qwen))
    events = [event(lesson.request.text) for lesson in LESSONS[:4]]
    async with running_worker(settings, None) as worker:
        retired = lambda: worker.metrics.registry.get_sample_value("guardstream_models_retired_total")  # noqa: E731
        await produce_events(settings.kafka.bootstrap_servers, f"{settings.kafka.topic_prefix}chat.events", events)
        await produce_raw(settings.kafka.bootstrap_servers, f"{settings.kafka.topic_prefix}moderation.models",
                          [(b"k", release.model_dump_json().encode())])
        await wait_until(lambda: retired() == 1)
        assert worker.served.ref.version == "2"
        verdicts = await verdicts_for(settings, len(events))
    assert retired() == 1  # v1 was closed; v2, still serving, was closed at shutdown, not retired
    assert {v.event_id for v in verdicts} == {e.event_id for e in events}
