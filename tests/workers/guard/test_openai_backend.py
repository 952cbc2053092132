"""The openai backend against transformers' OpenAI-compatible server running the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.events import VerdictStatus
from tests.conftest import S3, running_worker, verdicts_for
from tests.factories import event, image_ref, png
from tests.tiny_qwen import LESSONS
from topics.io import produce_events
from topics.local_broker import free_loopback_port
from workers.errors import BackendError, BackendUnavailable
from workers.guard.base import GuardRequest, GuardResult
from workers.guard.openai_backend import OpenAIGuard, openai_messages
from workers.guard.registry import load_backend
from workers.settings import GuardSettings, WorkerSettings


def settings_for(base_url: str, model: Path) -> GuardSettings:
    return GuardSettings(backend="openai", openai_base_url=base_url, model_path=model, max_new_tokens=80,
                         openai_max_retries=0, timeout_s=30)


def test_images_become_data_uri_parts_in_place() -> None:
    image = LESSONS[4].request.images[0]
    _, user = openai_messages(GuardRequest("What is in this picture?", images=[image, image]))
    kinds = [p["type"] for p in user["content"]]
    assert kinds == ["text", "image_url", "text", "image_url", "text", "text"]
    assert user["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")


async def test_the_server_answers_every_lesson_with_parsed_labels(openai_server: str, tiny_qwen: Path) -> None:
    guard = load_backend(settings_for(openai_server, tiny_qwen))
    outcomes = await guard.moderate([lesson.request for lesson in LESSONS])
    await guard.close()
    assert all(isinstance(o, GuardResult) and o.decided_by == "openai" for o in outcomes)
    assert [o.request_harmful for o in outcomes] == [lesson.harmful for lesson in LESSONS]  # type: ignore[union-attr]
    assert [o.response_harmful for o in outcomes] == [lesson.response_harmful for lesson in LESSONS]  # type: ignore[union-attr]
    first = outcomes[0]
    assert first.reasoning.startswith("Step 1:") and first.prompt_tokens and first.completion_tokens  # type: ignore[union-attr]


async def test_an_unreachable_server_is_a_retriable_backend_error(tiny_qwen: Path) -> None:
    guard = load_backend(settings_for(f"http://127.0.0.1:{free_loopback_port()}/v1", tiny_qwen))
    with pytest.raises(BackendError) as caught:
        await guard.moderate([GuardRequest("hello")])
    assert caught.value.retriable
    await guard.close()


def test_missing_settings_are_clear_errors() -> None:
    with pytest.raises(BackendUnavailable, match="OPENAI_BASE_URL"):
        OpenAIGuard.from_settings(GuardSettings(backend="openai"))
    with pytest.raises(BackendUnavailable, match="OPENAI_MODEL"):
        OpenAIGuard.from_settings(GuardSettings(backend="openai", openai_base_url="http://127.0.0.1:9/v1"))


async def test_the_worker_serves_the_openai_backend_end_to_end(
    settings: WorkerSettings, openai_server: str, tiny_qwen: Path, s3: S3
) -> None:
    settings.guard = settings_for(openai_server, tiny_qwen)
    picture = png(56, 56, (200, 40, 40))
    uri = s3.put("openai/red.png", picture)
    events = [event(lesson.request.text, response=lesson.request.response,
                    images=[image_ref(uri, picture)] if lesson.request.images else None) for lesson in LESSONS]
    await produce_events(settings.kafka.bootstrap_servers, f"{settings.kafka.topic_prefix}chat.events", events)
    async with running_worker(settings, None):
        verdicts = {v.event_id: v for v in await verdicts_for(settings, len(events))}
    for e, lesson in zip(events, LESSONS, strict=True):
        v = verdicts[e.event_id]
        assert (v.status, v.decided_by, v.request_harmful) == (VerdictStatus.OK, "openai", lesson.harmful)
