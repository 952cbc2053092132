"""The transformers backend on a tiny Qwen2.5-VL built offline: directly, and inside the worker."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from schemas.events import DeadLetter, VerdictStatus
from tests.conftest import S3, running_worker, verdicts_for
from tests.factories import event, image_ref, png
from tests.kafka_io import read_topic
from tests.tiny_qwen import LESSONS
from topics.io import produce_events
from workers.errors import BackendTimeout, BackendUnavailable, OutputUnparseable
from workers.guard.base import GuardRequest, GuardResult
from workers.guard.hf_transformers import TransformersGuard
from workers.guard.prompt import INSTRUCTION, chat_messages
from workers.guard.registry import load_backend
from workers.guard_stage import GuardStage
from workers.metrics import WorkerMetrics
from workers.settings import GuardSettings, WorkerSettings


def test_messages_render_with_the_qwen_chat_template(tiny_qwen: Path) -> None:
    guard = TransformersGuard.load(tiny_qwen, max_new_tokens=8)
    request = GuardRequest("What is in this picture?", images=[LESSONS[4].request.images[0]])
    rendered = guard.processor.apply_chat_template(chat_messages(request), tokenize=False, add_generation_prompt=True)
    assert rendered == (
        f"<|im_start|>system\n{INSTRUCTION}<|im_end|>\n<|im_start|>user\nHuman user:\n"
        "<|vision_start|><|image_pad|><|vision_end|>\nWhat is in this picture?\n\nAI assistant:\nNone<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_a_batch_is_answered_in_order_with_parsed_labels_and_token_counts(tiny_qwen: Path) -> None:
    guard = TransformersGuard.load(tiny_qwen, max_new_tokens=80)
    outcomes = guard.moderate_sync([lesson.request for lesson in LESSONS])
    assert all(isinstance(o, GuardResult) for o in outcomes)
    assert [o.request_harmful for o in outcomes] == [lesson.harmful for lesson in LESSONS]  # type: ignore[union-attr]
    assert [o.response_harmful for o in outcomes] == [lesson.response_harmful for lesson in LESSONS]  # type: ignore[union-attr]
    first = outcomes[0]
    assert isinstance(first, GuardResult) and first.reasoning.startswith("Step 1:")
    assert first.prompt_tokens > 100 and 0 < first.completion_tokens <= 80  # type: ignore[operator]


def test_random_weights_give_unparseable_outcomes_that_keep_the_raw_text(untrained_qwen: Path) -> None:
    guard = TransformersGuard.load(untrained_qwen, max_new_tokens=12)
    outcome = guard.moderate_sync([GuardRequest("hello")])[0]
    assert isinstance(outcome, OutputUnparseable) and "raw output:" in str(outcome)


def test_a_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="MODEL_PATH"):
        load_backend(GuardSettings(backend="transformers"))
    with pytest.raises(BackendUnavailable, match="config.json"):
        load_backend(GuardSettings(backend="transformers", model_path=tmp_path))


async def test_the_worker_serves_the_transformers_backend_end_to_end(
    settings: WorkerSettings, tiny_qwen: Path, s3: S3
) -> None:
    settings.guard = GuardSettings(backend="transformers", model_path=tiny_qwen, max_new_tokens=80,
                                   model_name="tiny-guardreasoner", model_version="t1")
    picture = png(56, 56, (200, 40, 40))
    uri = s3.put("tiny/red.png", picture)
    events = [
        event(lesson.request.text, response=lesson.request.response,
              images=[image_ref(uri, picture)] if lesson.request.images else None)
        for lesson in LESSONS
    ]
    await produce_events(settings.kafka.bootstrap_servers, f"{settings.kafka.topic_prefix}chat.events", events)
    async with running_worker(settings, None):
        verdicts = {v.event_id: v for v in await verdicts_for(settings, len(events))}
    for e, lesson in zip(events, LESSONS, strict=True):
        v = verdicts[e.event_id]
        assert v.status is VerdictStatus.OK and v.decided_by == "transformers"
        assert (v.request_harmful, v.response_harmful) == (lesson.harmful, lesson.response_harmful)
        assert v.model.version == "t1" and v.completion_tokens and v.reasoning.startswith("Step 1:")


async def test_junk_model_output_becomes_an_error_verdict_and_a_dead_letter(
    settings: WorkerSettings, untrained_qwen: Path
) -> None:
    settings.guard = GuardSettings(backend="transformers", model_path=untrained_qwen, max_new_tokens=12)
    events = [event("hello"), event("how are you")]
    await produce_events(settings.kafka.bootstrap_servers, f"{settings.kafka.topic_prefix}chat.events", events)
    async with running_worker(settings, None):
        verdicts = await verdicts_for(settings, len(events))
        letters = await read_topic(settings.kafka.bootstrap_servers, f"{settings.kafka.topic_prefix}moderation.dlq", 2)
    assert {v.event_id for v in verdicts} == {e.event_id for e in events}
    assert all(v.status is VerdictStatus.ERROR and v.error.code == "output_unparseable" for v in verdicts)
    assert all("raw output:" not in v.error.message for v in verdicts)  # the detail goes to operators only
    dead = [DeadLetter.model_validate_json(r.value) for r in letters]
    assert {d.reason for d in dead} == {"output_unparseable"} and all("raw output:" in d.message for d in dead)


async def test_a_generation_its_caller_gave_up_on_stops_and_frees_the_thread(tiny_qwen: Path) -> None:
    guard = TransformersGuard.load(tiny_qwen, max_new_tokens=80)
    started, resume = threading.Event(), threading.Event()
    steps = 0

    def hold_first_step(module: object, args: object) -> None:  # holds the prefill until the stage gave up
        nonlocal steps
        steps += 1
        if steps == 1:
            started.set()
            resume.wait()

    hook = guard.model.register_forward_pre_hook(hold_first_step)
    stage = GuardStage(guard, GuardSettings(timeout_s=0.05, max_attempts=1), WorkerMetrics())
    try:
        [outcome] = await stage.run([LESSONS[0].request])
        assert isinstance(outcome, BackendTimeout)
    finally:
        resume.set()
    free = asyncio.wrap_future(guard.executor.submit(started.is_set))  # runs once generate() has returned
    done, _ = await asyncio.wait({free}, timeout=60)  # only keeps a failing test from hanging
    assert free in done and free.result()
    assert steps == 1  # stopped after the step it was in; left alone it writes a whole answer (~60 steps)
    hook.remove()
    [answer] = await guard.moderate([LESSONS[0].request])  # the thread serves the next call
    assert isinstance(answer, GuardResult) and answer.request_harmful
    await guard.close()
