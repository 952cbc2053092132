"""`guardstream label`: labels given by event id get the coordinates the trainer resolves them by, and every
failure is one line with its exit code, with nothing published."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from schemas.events import AuditLabel
from tests.conftest import running_worker, verdicts_for
from tests.factories import BENIGN, HARMFUL, event
from tests.kafka_io import QUIET_S, read_topic
from topics.io import produce_events
from topics.local_broker import free_loopback_port
from topics.records import RecordReader
from topics.registry import TopicNames
from trainer.label_cli import publish_labels
from trainer.resolve import Resolver
from workers.settings import WorkerSettings

GUARDSTREAM = Path(sys.executable).with_name("guardstream")


def label_cli(settings: WorkerSettings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDSTREAM_")}
    env.update(GUARDSTREAM_KAFKA__BOOTSTRAP_SERVERS=settings.kafka.bootstrap_servers,
               GUARDSTREAM_KAFKA__TOPIC_PREFIX=settings.kafka.topic_prefix)
    return subprocess.run([str(GUARDSTREAM), "label", *args], env=env, capture_output=True, text=True, timeout=120)


async def test_labels_by_event_id_are_published_with_coordinates_the_trainer_resolves(settings: WorkerSettings,
                                                                                      lite_guard) -> None:
    topics = TopicNames(settings.kafka.topic_prefix)
    judged = [event(BENIGN[0]), event(HARMFUL[0], response="No.")]
    await produce_events(settings.kafka.bootstrap_servers, topics.events, judged)
    async with running_worker(settings, lite_guard):
        await verdicts_for(settings, len(judged))
    unjudged = event(BENIGN[1])  # published after the worker stopped: no verdict, only its event
    await produce_events(settings.kafka.bootstrap_servers, topics.events, [unjudged])
    labels = [AuditLabel(event_id=judged[0].event_id, request_harmful=False, labeller="r"),
              AuditLabel(event_id=judged[1].event_id, request_harmful=True, response_harmful=False, labeller="r"),
              AuditLabel(event_id=unjudged.event_id, request_harmful=False, labeller="r")]

    _, looked_up = await publish_labels(settings.kafka, labels)

    assert looked_up == 3
    records = await read_topic(settings.kafka.bootstrap_servers, topics.audit_labels, 3, settle_s=QUIET_S)
    reader = RecordReader(settings.kafka, timeout_s=5)
    await reader.start()
    try:
        examples = [await Resolver(reader, settings.limits).resolve(r.value) for r in records]
    finally:
        await reader.stop()
    by_id = {e.event.event_id: e for e in examples}
    assert set(by_id) == {label.event_id for label in labels}
    assert by_id[judged[1].event_id].verdict is not None and by_id[judged[1].event_id].event.response == "No."
    assert by_id[judged[1].event_id].label.response_harmful is False
    assert by_id[unjudged.event_id].verdict is None and by_id[unjudged.event_id].label.event is not None


async def test_a_bad_line_or_an_unknown_id_is_one_line_and_publishes_nothing(settings: WorkerSettings,
                                                                            tmp_path: Path) -> None:
    topics = TopicNames(settings.kafka.topic_prefix)
    known = event(BENIGN[2])
    await produce_events(settings.kafka.bootstrap_servers, topics.events, [known])
    bad = tmp_path / "labels.jsonl"
    bad.write_text(f'{{"event_id": "{known.event_id}", "request_harmful": false, "labeller": "r"}}\n'
                   f'{{"event_id": "{known.event_id}", "request_harmful": "maybe", "labeller": "r"}}\n')
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(f'{{"event_id": "{known.event_id}", "request_harmful": false, "labeller": "r"}}\n'
                       '{"event_id": "nowhere-1", "request_harmful": true, "labeller": "r"}\n')

    bad_line = label_cli(settings, str(bad))
    unknown_id = label_cli(settings, str(unknown))
    good = label_cli(settings, "--event-id", known.event_id, "--request", "unharmful", "--reviewer", "bob")

    assert (bad_line.returncode, unknown_id.returncode, good.returncode) == (3, 3, 0), good.stderr
    [bad_message] = bad_line.stderr.splitlines()
    assert f"{bad}:2: " in bad_message and "request_harmful" in bad_message and "nothing was published" in bad_message
    [unknown_message] = unknown_id.stderr.splitlines()
    assert "nowhere-1" in unknown_message and known.event_id not in unknown_message
    assert "published 1 label to" in good.stdout
    [published] = await read_topic(settings.kafka.bootstrap_servers, topics.audit_labels, 1, settle_s=QUIET_S)
    label = AuditLabel.model_validate_json(published.value)
    assert (label.labeller, label.request_harmful, label.event is not None) == ("bob", False, True)


def test_a_wrong_command_line_or_no_broker_is_one_line_with_its_exit_code(settings: WorkerSettings) -> None:
    nothing = label_cli(settings)
    half = label_cli(settings, "--event-id", "e1")
    settings.kafka.bootstrap_servers = f"127.0.0.1:{free_loopback_port()}"  # nothing listens there
    no_broker = label_cli(settings, "--event-id", "e1", "--request", "harmful", "--reviewer", "bob")

    assert (nothing.returncode, half.returncode, no_broker.returncode) == (2, 2, 4)
    for done in (nothing, half, no_broker):
        [line] = done.stderr.splitlines()
        assert line.startswith("guardstream: ")
    assert "--event-id" in nothing.stderr and "--reviewer" in half.stderr
    assert "GUARDSTREAM_KAFKA__BOOTSTRAP_SERVERS" in no_broker.stderr
