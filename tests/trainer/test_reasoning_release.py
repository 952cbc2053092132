"""The reasoning jobs through the trainer's job interface (`run_job`, what `guardstream train run` calls), on the
real broker and moto S3: SFT, then GRPO going on from the SFT release, each evaluated by the gate through the
transformers backend, released as `kind: adapter`, and served by a running worker that switches to it. A
candidate whose output format breaks is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.events import VerdictStatus
from tests.conftest import S3, running_worker, verdicts_covering
from tests.factories import event
from tests.tiny_qwen import build_tiny_adapter
from tests.trainer.reasoning_fixtures import MODEL, TEXT_LESSONS, lesson_examples, tiny_reasoning
from topics.io import produce_events
from topics.registry import TopicNames
from trainer import jobs
from trainer.dataset import DataSet
from trainer.job_interface import Candidate, TrainingData
from trainer.pipeline import run_job
from trainer.settings import TrainerSettings
from workers.model_watch import current_release
from workers.settings import GuardSettings, WorkerSettings


@pytest.fixture
def reasoning_settings(trainer_settings: TrainerSettings, settings: WorkerSettings, tiny_qwen: Path,
                       tmp_path: Path) -> TrainerSettings:
    settings.guard = GuardSettings(backend="transformers", model_path=tiny_qwen, max_new_tokens=80, model_name=MODEL,
                                   model_version="1", artefact_cache_dir=tmp_path / "artefacts")
    trainer_settings.guard = settings.guard
    # the labels agree with the serving model: a candidate that keeps its answers gains nothing, and this test is
    # about the path from labels to a served adapter (how much a job gains is the job tests' and the note's)
    trainer_settings.gate = trainer_settings.gate.model_copy(update={"min_held_out": 2, "regression_max_items": 0,
                                                                      "min_f1_gain": 0.0})
    trainer_settings.reasoning = tiny_reasoning(learning_rate=1e-4)
    return trainer_settings


async def test_sft_then_grpo_are_released_as_adapters_and_a_running_worker_answers_with_them(
        reasoning_settings: TrainerSettings, settings: WorkerSettings, s3: S3) -> None:
    await DataSet.open(reasoning_settings.dataset.uri, reasoning_settings.fetch).append(lesson_examples(8))
    topics = TopicNames(settings.kafka.topic_prefix)
    async with running_worker(settings, None) as worker:
        sft = await run_job("reasoning-sft", reasoning_settings, trigger="test")
        assert sft.outcome == "released", (sft.error, sft.decision)
        assert sft.decision["candidate_error_rate"] == 0.0
        release = await current_release(settings.kafka, topics.models, MODEL)
        assert release is not None and (release.version, release.kind) == (sft.version, "adapter")
        assert release.backend == "transformers" and release.base_model == str(settings.guard.model_path)
        report = s3.client.get_object(Bucket="images", Key=f"{topics.prefix}releases/{sft.version}/report/report.md")
        assert b"## Training" in report["Body"].read()  # the job's figures beside the evaluation

        grpo = await run_job("reasoning-grpo", reasoning_settings, trigger="test")
        assert grpo.outcome == "released", (grpo.error, grpo.decision)
        assert grpo.serving_version == sft.version  # judged against the SFT release, and trained on from it
        decision = s3.client.get_object(Bucket="images", Key=f"{topics.prefix}releases/{grpo.version}/decision.json")
        assert grpo.version.encode() in decision["Body"].read()

        await _wait_for_version(worker, grpo.version)
        fresh = [event(lesson.request.text, response=lesson.request.response, conversation=f"x{i}")
                 for i, lesson in enumerate(TEXT_LESSONS)]
        await produce_events(settings.kafka.bootstrap_servers, topics.events, fresh)
        verdicts = {v.event_id: v for v in await verdicts_covering(settings, {e.event_id for e in fresh})}
    for chat, lesson in zip(fresh, TEXT_LESSONS, strict=True):
        answer = verdicts[chat.event_id]
        assert (answer.status, answer.model.version, answer.decided_by) == (VerdictStatus.OK, grpo.version,
                                                                             "transformers")
        assert answer.request_harmful is lesson.harmful


async def test_a_candidate_whose_output_format_breaks_is_refused(
        reasoning_settings: TrainerSettings, settings: WorkerSettings, tiny_qwen: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An adapter with random weights (what a diverged run leaves): scored through the transformers backend, its
    unparseable outputs are errors, and the gate refuses it."""
    await DataSet.open(reasoning_settings.dataset.uri, reasoning_settings.fetch).append(lesson_examples(8))
    noise = build_tiny_adapter(tiny_qwen, tmp_path / "noise", seed=1)

    class Diverged:
        name = "diverged"

        def train(self, data: TrainingData, out_dir: Path) -> Candidate:
            return Candidate(version="diverged-1", backend="transformers", artefact=noise, kind="adapter",
                             base_model=str(tiny_qwen))

    monkeypatch.setitem(jobs.JOBS, "diverged", lambda _settings: Diverged())

    record = await run_job("diverged", reasoning_settings, trigger="test")

    assert record.outcome == "refused", (record.error, record.decision)
    assert record.decision["candidate_error_rate"] > reasoning_settings.gate.max_error_rate
    assert "gate.max_error_rate" in record.decision["reason"]
    assert await current_release(settings.kafka, TopicNames(settings.kafka.topic_prefix).models, MODEL) is None


async def _wait_for_version(worker: object, version: str) -> None:
    from tests.waiting import wait_until

    await wait_until(lambda: worker.served.ref.version == version, timeout_s=120,  # type: ignore[attr-defined]
                     what=f"the worker serves {version}")
