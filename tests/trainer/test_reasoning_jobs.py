"""The reasoning jobs on the tiny Qwen2.5-VL (real model code, real TRL trainers, on the CPU): the SFT loss is
on the target alone and goes down; GRPO uses the scheduled clip range step by step and raises the guard reward
on a task the model can learn; both save an adapter with its sources and figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from datasets import Dataset

from tests.trainer.reasoning_fixtures import CUE_TASK, cue_items, lesson_items, tiny_reasoning
from tests.trainer.test_reasoning_data import verdict
from trainer.clip_schedule import clip_range, default_floor
from trainer.job_interface import TrainingData
from trainer.jobs import make_job
from trainer.reasoning_data import ReasoningSource, SftExample, build_target, prompt_of
from trainer.reasoning_grpo import ReasoningGrpo
from trainer.reasoning_inputs import Base, EventImages, load_trainable, lora_config, sft_row
from trainer.reasoning_job import NothingToTrain
from trainer.reasoning_sft import ReasoningSft
from trainer.settings import TrainerSettings
from workers.guard.parse import parse_output
from workers.settings import FetchSettings, GuardSettings


@pytest.fixture
def job_settings(tiny_qwen: Path, tmp_path: Path) -> TrainerSettings:
    return TrainerSettings(guard=GuardSettings(backend="transformers", model_path=tiny_qwen, max_new_tokens=96),
                           fetch=FetchSettings(file_root=tmp_path), reasoning=tiny_reasoning(),
                           data_dir=tmp_path / "data")


def training_data(settings: TrainerSettings, tmp_path: Path, flip: bool = False,
                  verdicts: dict[str, Any] | None = None) -> TrainingData:
    items = lesson_items(settings.gate.held_out_fraction, tmp_path, flip)
    return TrainingData(items, "test", "2026-12-06T00:00:00+00:00", 0, verdicts=verdicts or {},
                        serving=settings.guard)


def test_the_sft_loss_is_on_the_target_alone(job_settings: TrainerSettings, tmp_path: Path) -> None:
    items = lesson_items(job_settings.gate.held_out_fraction, tmp_path)
    with_image, with_response = items[4], items[5]
    job = ReasoningSft(job_settings)
    base = Base(job_settings.guard.model_path, None, "transformers")  # type: ignore[arg-type]
    model, processor = load_trainable(base, job.settings)
    images = EventImages({with_image.event.event_id: [_red()], with_response.event.event_id: []})
    examples = [SftExample(prompt_of(item.event), build_target(f"Step 1: look at {i}.", item.request_harmful,  # type: ignore[arg-type]
                                                               item.response_harmful),
                           ReasoningSource.SERVING, item.request_harmful, item.response_harmful)  # type: ignore[arg-type]
                for i, item in enumerate((with_image, with_response))]
    rows = [sft_row(example, images) for example in examples]
    trainer = job.make_trainer(model, processor, rows, tmp_path / "out", lora_config(job.settings))

    batch = trainer.data_collator([Dataset.from_list(rows)[i] for i in range(len(rows))])

    tokenizer = processor.tokenizer
    for row, example in enumerate(examples):
        labels, ids, mask = batch["labels"][row], batch["input_ids"][row], batch["attention_mask"][row]
        trained = (labels != -100).nonzero().flatten().tolist()
        assert trained == list(range(trained[0], trained[-1] + 1)), "the trained tokens are one run"
        assert tokenizer.decode(ids[trained]) == example.target + "<|im_end|>\n"
        assert parse_output(tokenizer.decode(ids[trained], skip_special_tokens=True),
                            has_response=example.response_harmful is not None).ok
        prompt = [i for i in range(len(ids)) if mask[i] and i < trained[0]]
        assert prompt and all(labels[i] == -100 for i in prompt), "no prompt token is trained"
    assert batch["pixel_values"].shape[0] > 0, "the image went into the batch"


def test_the_sft_job_lowers_the_loss_and_saves_an_adapter_with_its_sources_and_figures(
        job_settings: TrainerSettings, tmp_path: Path) -> None:
    data = training_data(job_settings, tmp_path)
    # the serving model's own reasoning for one item that its verdict got right; the rest is sampled
    first = data.examples[0]
    data.verdicts[first.event.event_id] = verdict(first.event, first.request_harmful, reasoning="It asks for a bomb.",
                                                  decided_by="transformers")

    candidate = make_job("reasoning-sft", job_settings).train(data, tmp_path / "run")

    assert candidate.kind == "adapter" and candidate.backend == "transformers"
    assert candidate.base_model == str(job_settings.guard.model_path)
    assert (candidate.artefact / "adapter_config.json").is_file()
    job = json.loads((candidate.artefact / "job.json").read_text())
    assert job["sources"]["labelled_items"] == len(data.examples)
    assert job["sources"]["reasoning_sources"].get(ReasoningSource.SERVING) == 1
    assert job["sources"]["sft_examples"] + job["sources"]["rl_only"] == len(data.examples)
    losses = [row["loss"] for row in json.loads(candidate.report_files[0].read_text())["steps"]]
    assert len(losses) == job_settings.reasoning.sft.max_steps
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    assert candidate.report_files[1].suffix == ".png" and candidate.report_files[1].stat().st_size > 0


def test_a_job_with_no_checkpoint_to_train_says_so(job_settings: TrainerSettings, tmp_path: Path) -> None:
    lite = job_settings.guard.model_copy(update={"backend": "lite", "model_path": None})
    data = TrainingData(lesson_items(0.2, tmp_path), "test", "now", 0, serving=lite)

    with pytest.raises(ValueError, match="GUARDSTREAM_GUARD__MODEL_PATH"):
        make_job("reasoning-sft", job_settings).train(data, tmp_path / "run")


def test_labels_that_fill_no_result_block_are_nothing_to_train(job_settings: TrainerSettings, tmp_path: Path) -> None:
    data = training_data(job_settings, tmp_path)
    unlabelled = TrainingData([item.__class__(item.event, None) for item in data.examples], "test", "now", 0,
                              serving=job_settings.guard)

    with pytest.raises(NothingToTrain, match="none of 6 labelled items"):
        make_job("reasoning-grpo", job_settings).train(unlabelled, tmp_path / "run")


def test_grpo_uses_the_scheduled_clip_range_at_each_step(job_settings: TrainerSettings, tmp_path: Path) -> None:
    job = ReasoningGrpo(job_settings)
    base = Base(job_settings.guard.model_path, None, "transformers")  # type: ignore[arg-type]
    model, processor = load_trainable(base, job.settings)
    items = lesson_items(job_settings.gate.held_out_fraction, tmp_path)[:4]
    images = EventImages({item.event.event_id: [] for item in items})
    rows = job.rows(items, images, None, {})  # type: ignore[arg-type]  # "all" items: nothing is sampled
    trainer = job.make_trainer(model, processor, rows, tmp_path / "out", lora_config(job.settings))
    used: list[tuple[int, float, float]] = []
    compute_loss = trainer.compute_loss

    def spy(*args: Any, **kwargs: Any) -> Any:  # what the loss is computed with, read at that moment
        used.append((trainer.state.global_step, trainer.epsilon_low, trainer.epsilon_high))
        return compute_loss(*args, **kwargs)

    trainer.compute_loss = spy
    trainer.train()

    steps = job.settings.grpo.max_steps
    assert [step for step, _, _ in used] == list(range(steps))
    for step, low, high in used:
        assert low == high == pytest.approx(clip_range(step, steps, 0.2, default_floor(0.2)))
    assert used[0][1] == pytest.approx(0.2) and used[-1][1] < used[0][1]


def test_grpo_trains_on_text_and_image_prompts_in_one_batch_and_saves_an_adapter_with_its_figures(
        job_settings: TrainerSettings, tmp_path: Path) -> None:
    """Two prompts a step, so text-only prompts share batches with the image prompt (TRL 1.16 hands their
    images to the processor as None, which Qwen's processor refuses: trainer/reasoning_inputs.py)."""
    job_settings.reasoning = tiny_reasoning(max_steps=6, num_generations=4, batch_size=8, concat_share=0.25)
    data = training_data(job_settings, tmp_path, flip=True)

    candidate = make_job("reasoning-grpo", job_settings).train(data, tmp_path / "run")

    assert candidate.kind == "adapter" and (candidate.artefact / "adapter_config.json").is_file()
    figures = json.loads(candidate.report_files[0].read_text())
    steps = figures["steps"]
    assert len(steps) == 6 and all(row["reward"] is not None for row in steps)
    clips = [row["clip_range"] for row in steps]
    assert clips == sorted(clips, reverse=True) and clips[0] > clips[-1] > 0
    assert figures["summary"]["mean_tokens_per_s"] > 0
    sources = json.loads((candidate.artefact / "job.json").read_text())["sources"]
    assert sources["concatenated"] >= 1 and sources["rl_items"] == len(data.examples) + sources["concatenated"]


def test_grpo_raises_the_guard_reward_on_a_task_the_tiny_model_can_learn(job_settings: TrainerSettings,
                                                                         tmp_path: Path) -> None:
    """Four requests whose label one word decides (a bomb or a poison: harmful; people or a book: not), about
    four answers in ten wrong at first. The job's own reward (trainer/reasoning_reward.py) and the reference's
    group of 16; set for the tiny model: temperature 0.5, at which its outputs parse (at 1.2 more than half do
    not, and each scores -80², which drowns every label), and lr 2e-3 (at the reference's 1e-6 the reward does
    not move). The rise is read from the job's figures, step by step."""
    job_settings.reasoning = tiny_reasoning(num_generations=16, batch_size=16 * len(CUE_TASK), max_steps=20,
                                            temperature=0.5, learning_rate=2e-3)
    data = TrainingData(cue_items(job_settings.gate.held_out_fraction), "test", "2026-12-06T00:00:00+00:00", 0,
                        serving=job_settings.guard)

    candidate = make_job("reasoning-grpo", job_settings).train(data, tmp_path / "run")

    rewards = [row["reward"] for row in json.loads(candidate.report_files[0].read_text())["steps"]]
    assert len(rewards) == 20
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    # A wrong label at the lessons' length (48 of 80 tokens) scores about -2.8, a right one 0: a step's mean
    # under -0.5 has a fifth or more of its answers wrong, one over -0.2 under a fourteenth (and none malformed).
    assert first < -0.5 and last > -0.2 and last - first > 0.5, rewards
    summary = json.loads((candidate.artefact / "job.json").read_text())["figures"]
    assert summary["first_reward"] == rewards[0] and summary["last_reward"] == rewards[-1]


def _red() -> Any:
    from PIL import Image

    return Image.new("RGB", (56, 56), (200, 40, 40))
