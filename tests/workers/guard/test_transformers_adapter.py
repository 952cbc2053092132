"""Adapter releases on the transformers backend: a PEFT LoRA adapter served on the base model already
loaded, through the release path and inside a running worker."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import Qwen2_5_VLForConditionalGeneration

from schemas.events import ModelRelease, VerdictStatus
from tests.conftest import S3, running_worker, verdicts_covering
from tests.factories import event
from tests.tiny_qwen import LESSONS, build_tiny_adapter
from tests.waiting import wait_until
from topics.io import produce_events, produce_raw
from workers.errors import BackendUnavailable
from workers.guard.base import GuardResult
from workers.guard.hf_transformers import TransformersGuard
from workers.guard.prompt import chat_messages
from workers.guard.registry import load_backend
from workers.served_model import load_release, release_settings
from workers.settings import GuardSettings, WorkerSettings

REQUESTS = [lesson.request for lesson in LESSONS]
TEXT_LESSONS = [lesson for lesson in LESSONS if not lesson.request.images]


@pytest.fixture(scope="module")
def noise_adapter(tiny_qwen: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fixed non-zero LoRA weights: the model says something else, mostly junk."""
    return build_tiny_adapter(tiny_qwen, tmp_path_factory.mktemp("noise-adapter"), seed=1)


@pytest.fixture(scope="module")
def flip_adapter(tiny_qwen: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Trained to answer in the same format with every label reversed."""
    return build_tiny_adapter(tiny_qwen, tmp_path_factory.mktemp("flip-adapter"), train_steps=40)


def peft_texts(base: Path, adapter: Path, guard: TransformersGuard, max_new_tokens: int) -> list[str]:
    """What a PeftModel built directly from `adapter` on a fresh copy of `base` says, greedy, to REQUESTS."""
    model = PeftModel.from_pretrained(Qwen2_5_VLForConditionalGeneration.from_pretrained(base), adapter).eval()
    processor = guard.processor
    texts = [processor.apply_chat_template(chat_messages(r), tokenize=False, add_generation_prompt=True)
             for r in REQUESTS]
    images = [image for r in REQUESTS for image in r.images]
    inputs = processor(text=texts, images=images or None, padding=True, return_tensors="pt")
    with torch.inference_mode():
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                   top_p=None, top_k=None, pad_token_id=processor.tokenizer.pad_token_id)
    return processor.tokenizer.batch_decode(generated[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def labels(guard: TransformersGuard) -> list[tuple[bool | None, bool | None]]:
    outcomes = guard.moderate_sync(REQUESTS)
    assert all(isinstance(o, GuardResult) for o in outcomes), outcomes
    return [(o.request_harmful, o.response_harmful) for o in outcomes]  # type: ignore[union-attr]


async def test_an_adapter_is_applied_on_the_loaded_model_as_peft_applies_it(
    tiny_qwen: Path, noise_adapter: Path, flip_adapter: Path
) -> None:
    base = TransformersGuard.load(tiny_qwen, max_new_tokens=80)
    base_texts = [text for text, _, _ in base.complete(REQUESTS)]
    noisy = base.with_adapter("v2", noise_adapter)
    noisy_texts = [text for text, _, _ in noisy.complete(REQUESTS)]
    assert noisy.model is base.model and noisy.adapter is not None  # the base weights were not loaded again
    assert all(a != b for a, b in zip(noisy_texts, base_texts, strict=True))
    assert noisy_texts == peft_texts(tiny_qwen, noise_adapter, base, max_new_tokens=80)
    assert [text for text, _, _ in base.complete(REQUESTS)] == base_texts  # the base view is the base model still

    flipped = noisy.with_adapter("v3", flip_adapter)  # another adapter on the same model
    assert labels(flipped) == [(not lesson.harmful, None if lesson.response_harmful is None
                                else not lesson.response_harmful) for lesson in LESSONS]
    assert [text for text, _, _ in noisy.complete(REQUESTS)] == noisy_texts
    await noisy.close()  # retired: its adapter leaves the model, the newest view serves on
    assert set(base.model.peft_config) == {flipped.adapter}
    assert labels(flipped)[0] == (False, None)
    await base.close()
    await flipped.close()


def adapter_release(artefact: Path, base_model: str | None, version: str = "v2-lora") -> ModelRelease:
    return ModelRelease(name="guard", version=version, backend="transformers", artefact_uri=str(artefact),
                        kind="adapter", base_model=base_model)


async def test_an_adapter_release_goes_through_the_release_path(
    tiny_qwen: Path, flip_adapter: Path, tmp_path: Path
) -> None:
    settings = GuardSettings(backend="transformers", model_path=tiny_qwen, max_new_tokens=80)
    current = load_backend(settings)
    assert isinstance(current, TransformersGuard)
    release = adapter_release(flip_adapter, f"some-org/{tiny_qwen.name}")  # a hub id naming the same checkpoint
    guard = release_settings(settings, release, flip_adapter)
    assert (guard.model_path, guard.transformers_lora_adapter, guard.model_version) == (tiny_qwen, flip_adapter,
                                                                                         "v2-lora")
    switched = load_release(current, guard, release)
    assert isinstance(switched, TransformersGuard) and switched.model is current.model
    reversed_labels = [(not lesson.harmful, None if lesson.response_harmful is None else not lesson.response_harmful)
                       for lesson in LESSONS]
    assert labels(switched) == reversed_labels
    assert labels(current) == [(lesson.harmful, lesson.response_harmful) for lesson in LESSONS]

    fresh = load_backend(guard)  # as a process that starts on the release loads it (the gate, a new worker)
    assert isinstance(fresh, TransformersGuard) and labels(fresh) == reversed_labels
    await fresh.close()

    with pytest.raises(BackendUnavailable, match=f"'other-base'.*'{tiny_qwen}'"):
        release_settings(settings, adapter_release(flip_adapter, "other-base"), flip_adapter)
    with pytest.raises(BackendUnavailable, match="lite backend cannot serve adapter releases"):
        release_settings(settings, adapter_release(flip_adapter, None).model_copy(update={"backend": "lite"}),
                         flip_adapter)
    empty = tmp_path / "not-an-adapter"
    empty.mkdir()
    with pytest.raises(BackendUnavailable, match="adapter_config.json missing"):
        load_release(switched, release_settings(settings, adapter_release(empty, None, "v3"), empty),
                     adapter_release(empty, None, "v3"))
    unfit = shutil.copytree(flip_adapter, tmp_path / "unfit")  # its weights are rank 4, its config says 8
    (unfit / "adapter_config.json").write_text(
        json.dumps(json.loads((unfit / "adapter_config.json").read_text()) | {"r": 8}))
    with pytest.raises(BackendUnavailable, match="v4 does not load onto.*MISMATCH"):
        load_release(switched, release_settings(settings, adapter_release(unfit, None, "v4"), unfit),
                     adapter_release(unfit, None, "v4"))
    assert set(switched.model.peft_config) == {switched.adapter}  # a refused release leaves the model as it was
    assert labels(switched) == reversed_labels
    await current.close()
    await switched.close()


async def test_a_running_worker_switches_to_an_adapter_release_and_answers_with_it(
    settings: WorkerSettings, tiny_qwen: Path, flip_adapter: Path, s3: S3, tmp_path: Path
) -> None:
    settings.guard = GuardSettings(backend="transformers", model_path=tiny_qwen, max_new_tokens=80,
                                   model_name="tiny-guardreasoner", model_version="1",
                                   artefact_cache_dir=tmp_path / "artefacts")
    release = ModelRelease(name="tiny-guardreasoner", version="2-lora", backend="transformers", kind="adapter",
                           base_model=tiny_qwen.name,  # as the trainer publishes: on S3
                           artefact_uri=s3.put_folder(flip_adapter, f"models/{settings.kafka.topic_prefix}lora"))
    events_topic = f"{settings.kafka.topic_prefix}chat.events"
    before = [event(lesson.request.text, response=lesson.request.response, conversation=f"b{i}")
              for i, lesson in enumerate(TEXT_LESSONS)]
    after = [event(lesson.request.text, response=lesson.request.response, conversation=f"a{i}")
             for i, lesson in enumerate(TEXT_LESSONS)]
    async with running_worker(settings, None) as worker:
        v1 = worker.served
        await produce_events(settings.kafka.bootstrap_servers, events_topic, before)
        await verdicts_covering(settings, {e.event_id for e in before})
        await produce_raw(settings.kafka.bootstrap_servers, f"{settings.kafka.topic_prefix}moderation.models",
                          [(b"tiny-guardreasoner", release.model_dump_json().encode())])
        await wait_until(lambda: worker.served.ref.version == "2-lora", timeout_s=60)
        assert worker.served.backend.model is v1.backend.model  # type: ignore[attr-defined]
        await wait_until(lambda: worker.metrics.registry.get_sample_value("guardstream_models_retired_total") == 1)
        await produce_events(settings.kafka.bootstrap_servers, events_topic, after)  # served after v1 retired
        verdicts = await verdicts_covering(settings, {e.event_id for e in before + after})
    by_id = {v.event_id: v for v in verdicts}
    for e, lesson in zip(before, TEXT_LESSONS, strict=True):
        v = by_id[e.event_id]
        assert (v.status, v.model.version, v.request_harmful) == (VerdictStatus.OK, "1", lesson.harmful)
    for e, lesson in zip(after, TEXT_LESSONS, strict=True):
        v = by_id[e.event_id]
        assert (v.status, v.model.version, v.decided_by) == (VerdictStatus.OK, "2-lora", "transformers")
        assert (v.request_harmful, v.cache_hit) == (not lesson.harmful, False)
        if lesson.response_harmful is not None:
            assert v.response_harmful is (not lesson.response_harmful)
