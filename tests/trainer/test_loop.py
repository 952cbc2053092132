"""The loop, end to end on the real local parts (broker, Redis, moto S3): verdicts are labelled, the labels
become a data set in S3, the lite refit runs on it, the evaluation report is written, a worse candidate
is refused, a better one is released, and the running worker switches to it and answers differently."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from schemas.events import AuditLabel, ChatEvent
from tests.conftest import S3, running_worker, verdicts_covering
from tests.trainer.conftest import label_for, publish_labels, running_trainer, verdict_records, wait_for_examples
from tests.waiting import wait_until
from topics.io import produce_events
from topics.registry import TopicNames
from trainer.held_out import is_held_out
from trainer.settings import TrainerSettings
from workers.demo_data import loop_traffic
from workers.guard.lite import LiteGuard
from workers.guard.lite_tuned import StageWeights, TunedLiteModel
from workers.model_watch import current_release
from workers.settings import WorkerSettings


def traffic(wave: str) -> tuple[list[ChatEvent], dict[str, bool]]:
    events, truth = [], {}
    for i, (text, harmful) in enumerate(loop_traffic()):
        events.append(ChatEvent(event_id=f"loop-{wave}-{i}", conversation_id=f"c{i % 5}", tenant="test", text=text))
        truth[events[-1].event_id] = harmful
    return events, truth


def accuracy(verdicts: dict[str, bool], truth: dict[str, bool]) -> float:
    return sum(verdicts[e] == truth[e] for e in truth) / len(truth)


async def test_labels_train_a_better_lite_head_that_workers_switch_to_and_a_worse_one_is_refused(
    settings: WorkerSettings, trainer_settings: TrainerSettings, lite_guard: LiteGuard, s3: S3, tmp_path: Path
) -> None:
    topics = TopicNames(settings.kafka.topic_prefix)
    # This refit fine-tunes on a 200-text package sample to stay quick, which does not keep the shipped
    # model's generality on the regression set; the gate's regression refusal is tested on its own
    # (tests/trainer/test_dataset.py), and this test is about labels reaching a release.
    trainer_settings.gate.regression_max_items = 0
    fraction = trainer_settings.gate.held_out_fraction
    events, truth = traffic("a")
    await produce_events(settings.kafka, topics.events, events)
    async with running_worker(settings, lite_guard) as worker, running_trainer(trainer_settings) as trainer:
        records = await verdict_records(trainer_settings, set(truth))
        before = {e: bool(v.request_harmful) for e, v in _verdicts(records).items()}
        training = [e.event_id for e in events if not is_held_out(e, fraction)]

        # A reviewer who gets every training label backwards: the candidate learns it, and is refused.
        wrong: list[AuditLabel | bytes] = [label_for(records[e], truth[e] != (e in training)) for e in truth]
        await publish_labels(trainer_settings, wrong)
        await wait_for_examples(trainer, len(truth))
        [refused] = await trainer.run_jobs("test")
        assert refused.outcome == "refused", refused.decision
        assert refused.decision["candidate_f1"] < refused.decision["serving_f1"]
        assert await current_release(settings.kafka, topics.models, settings.guard.model_name) is None

        # The same events labelled right (later labels win): the candidate is better and released.
        await publish_labels(trainer_settings, [label_for(records[e], truth[e]) for e in training])
        await wait_for_examples(trainer, len(truth) + len(training))
        [released] = await trainer.run_jobs("test")
        assert released.outcome == "released", released.decision
        assert released.decision["candidate_f1"] >= released.decision["serving_f1"] + trainer_settings.gate.min_f1_gain
        # these labels do not say how their events were chosen: the gate says so, and judges no random part
        assert released.decision["composition"] == {"random": 0, "selected": 0,
                                                     "unknown": released.decision["held_out"]}
        assert released.decision["random_candidate_f1"] is None
        release = await current_release(settings.kafka, topics.models, settings.guard.model_name)
        assert release is not None and release.version == released.version
        assert release.metrics["f1"] == released.decision["candidate_f1"]
        assert release.artefact_uri.startswith(f"s3://images/{topics.prefix}releases/{release.version}/")
        report = s3.client.get_object(Bucket="images", Key=f"{topics.prefix}releases/{release.version}/report/report.md")
        assert b"F1" in report["Body"].read()
        # no label judged a response: the response stage is kept as shipped, only the request stage is trained
        released_model = _released_model(s3, release.artefact_uri, tmp_path)
        assert released_model.metadata["stages_trained"] == ["request"]
        assert _same_stage(released_model.response, TunedLiteModel.load(None).response)
        assert not _same_stage(released_model.request, TunedLiteModel.load(None).request)
        assert [r["outcome"] for r in trainer.status()["runs"]] == ["released", "refused"]

        await wait_until(lambda: worker.served.ref.version == release.version, timeout_s=60,
                         what="the worker serves the release")
        again, truth_again = traffic("b")
        await produce_events(settings.kafka, topics.events, again)
        answers = await verdicts_covering(settings, set(truth_again))
    after = {v.event_id: bool(v.request_harmful) for v in answers if v.event_id in truth_again}
    assert {v.model.version for v in answers if v.event_id in truth_again} == {release.version}
    changed = sum(before[f"loop-a-{i}"] != after[f"loop-b-{i}"] for i in range(len(events)))
    assert changed >= 5
    # the shipped model already gets most of this traffic right (0.88 when measured); the refit learns the rest
    assert accuracy(after, truth_again) > accuracy(before, truth)
    assert accuracy(after, truth_again) >= 0.95


def _released_model(s3: S3, uri: str, folder: Path) -> TunedLiteModel:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    [key] = [o["Key"] for o in s3.client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
             if o["Key"].endswith(".safetensors")]
    s3.client.download_file(bucket, key, str(folder / "released.safetensors"))
    return TunedLiteModel.load(folder / "released.safetensors")


def _same_stage(a: StageWeights, b: StageWeights) -> bool:
    return (a.update.keys() == b.update.keys() and np.array_equal(a.head_weight, b.head_weight)
            and a.head_bias == b.head_bias
            and all(np.array_equal(x, y) for k in a.update for x, y in zip(a.update[k], b.update[k], strict=True)))


def _verdicts(records: dict) -> dict:  # type: ignore[type-arg]
    from schemas.events import Verdict

    return {e: Verdict.model_validate_json(r.value) for e, r in records.items()}
