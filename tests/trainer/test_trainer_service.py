"""The trainer service turns audit labels into a data set in S3, resolving each label by seeking, and
commits a label's offset only once the shard holding it is durable."""

from __future__ import annotations

import aiohttp

from schemas.events import AuditLabel, SourceRef
from tests.conftest import PARTITIONS, S3
from tests.factories import BENIGN, HARMFUL, event
from tests.kafka_io import committed_offsets
from tests.trainer.conftest import judged, label_for, publish_labels, running_trainer, wait_for_examples
from tests.waiting import wait_until
from topics.registry import TopicNames
from trainer.service import TrainerService
from trainer.settings import TrainerSettings
from workers.guard.lite import LiteGuard
from workers.settings import WorkerSettings


async def test_labels_become_a_deduplicated_data_set_and_offsets_follow_durable_shards(
    settings: WorkerSettings, trainer_settings: TrainerSettings, lite_guard: LiteGuard
) -> None:
    topics = TopicNames(settings.kafka.topic_prefix)
    events = [event(t, conversation=f"c{i}") for i, t in enumerate(BENIGN + HARMFUL)]
    events.append(event("Describe this.", response="Sure, here is how to do it.", conversation="cr"))
    records = await judged(settings, lite_guard, events)
    labels: list[AuditLabel | bytes] = [label_for(records[e.event_id], e.text in HARMFUL) for e in events[:-1]]
    labels.append(label_for(records[events[-1].event_id], False, True))
    relabelled = label_for(records[events[0].event_id], True, labeller="reviewer-2")  # later: this one wins
    labels += [relabelled, b"not json",
               AuditLabel(event_id="nowhere", request_harmful=True, labeller="r"),
               AuditLabel(event_id="other", request_harmful=True, labeller="r",
                          event=SourceRef(topic=topics.events, partition=records[events[1].event_id].partition,
                                          offset=0))]
    await publish_labels(trainer_settings, labels)

    async with running_trainer(trainer_settings) as trainer:
        await wait_for_examples(trainer, len(events) + 1)
        await wait_until(lambda: sum(_unresolvable(trainer).values()) >= 3, timeout_s=30,
                         what="the three bad labels counted")
        assert _unresolvable(trainer) == {"label_undecodable": 1, "no_coordinates": 1, "event_mismatch": 1}
        await wait_until(lambda: trainer.status()["pending_labels"] == 0, timeout_s=10, what="every label stored")
        examples = await trainer.dataset.load()
        manifest = await trainer.dataset.manifest()
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{trainer.health.port}"  # type: ignore[union-attr]
            metrics = await (await http.get(f"{base}/metrics")).text()
            status = await (await http.get(f"{base}/status")).json()
    by_id = {e.label.event_id: e for e in examples}
    assert len(examples) == len(events) and by_id.keys() == {e.event_id for e in events}
    assert by_id[events[0].event_id].label.labeller == "reviewer-2" and by_id[events[0].event_id].label.request_harmful
    assert by_id[events[-1].event_id].event.response == "Sure, here is how to do it."
    assert by_id[events[-1].event_id].verdict is not None  # the judged verdict travels with the example
    assert manifest.counts["request"] == {"harmful": len(HARMFUL) + 1, "unharmful": len(BENIGN)}
    assert manifest.counts["response"] == {"harmful": 1} and manifest.counts["modality"] == {"text": len(events)}
    assert 'guardstream_trainer_labels_unresolvable_total{reason="no_coordinates"} 1.0' in metrics
    assert status["dataset"] == trainer_settings.dataset.uri
    committed = await committed_offsets(settings.kafka.bootstrap_servers, trainer_settings.group_id,
                                        topics.audit_labels, PARTITIONS)
    assert sum(committed.values()) == len(labels)


def _unresolvable(trainer: TrainerService) -> dict[str, float]:
    """The unresolvable-label counts by reason, as /metrics reports them."""
    return {sample.labels["reason"]: sample.value for metric in trainer.metrics.registry.collect()
            for sample in metric.samples if sample.name == "guardstream_trainer_labels_unresolvable_total"}


async def test_while_shards_cannot_be_written_labels_stay_uncommitted_and_readiness_says_why(
    settings: WorkerSettings, trainer_settings: TrainerSettings, lite_guard: LiteGuard, s3: S3
) -> None:
    topics = TopicNames(settings.kafka.topic_prefix)
    events = [event(t, conversation=f"c{i}") for i, t in enumerate(BENIGN)]
    records = await judged(settings, lite_guard, events)
    bucket = f"later-{topics.prefix.strip('.')}"
    trainer_settings.dataset.uri = f"s3://{bucket}/data"  # a bucket that does not exist yet
    await publish_labels(trainer_settings, [label_for(records[e.event_id], False) for e in events])
    async with running_trainer(trainer_settings) as trainer:
        await wait_until(lambda: trainer.metrics.registry.get_sample_value(
            "guardstream_trainer_shard_failures_total") >= 2 and trainer.status()["pending_labels"] == len(events),
            timeout_s=30, what="shard writes failing with every label waiting")
        assert not trainer.ready and "data set writes failing" in trainer.problems()[0]
        committed = await committed_offsets(settings.kafka.bootstrap_servers, trainer_settings.group_id,
                                            topics.audit_labels, PARTITIONS)
        assert sum(committed.values()) == 0
        s3.client.create_bucket(Bucket=bucket)
        await wait_for_examples(trainer, len(events))
        await wait_until(lambda: trainer.ready, timeout_s=10, what="ready again")
    committed = await committed_offsets(settings.kafka.bootstrap_servers, trainer_settings.group_id,
                                        topics.audit_labels, PARTITIONS)
    assert sum(committed.values()) == len(events)


async def test_jobs_run_after_n_new_labels_and_on_the_schedule_and_each_decision_is_kept(
    settings: WorkerSettings, trainer_settings: TrainerSettings, lite_guard: LiteGuard
) -> None:
    events = [event(t, conversation=f"c{i}") for i, t in enumerate(BENIGN[:3])]
    records = await judged(settings, lite_guard, events)
    trainer_settings.jobs.after_new_labels = 3
    trainer_settings.jobs.interval_s = 2.0
    await publish_labels(trainer_settings, [label_for(records[e.event_id], False) for e in events])
    async with running_trainer(trainer_settings) as trainer:
        await wait_until(lambda: {r["trigger"] for r in trainer.status()["runs"]} >= {"3 new labels", "schedule"},
                         timeout_s=60, what="a run after 3 labels and a scheduled one")
        runs = trainer.status()["runs"]
    assert {r["outcome"] for r in runs} == {"refused"}  # three labels hold too few held-out ones to gate on
    assert all("fewer than gate.min_held_out" in r["decision"]["reason"] for r in runs)
