"""Topic creation and checks, produce and tail, and the CLI, against the real broker."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from guardstream.cli import app
from guardstream.topics_cli import InvalidInputLine, read_events
from tests.factories import event
from tests.kafka_io import read_topic
from topics.admin import TopicsRefused, check_topics, count_brokers, create_topics, raise_for_refusals
from topics.local_broker import LocalBroker
from topics.registry import TopicNames, choose_replication, topic_specs


async def test_create_is_idempotent_and_check_sees_the_partitions(broker: LocalBroker) -> None:
    names = TopicNames(f"c-{uuid.uuid4().hex[:8]}.")
    specs = topic_specs(names, partitions=3)
    before = await check_topics(broker.bootstrap_servers, specs)
    assert [c.describe() for c in before] == ["missing"] * len(specs)
    assert sorted(await create_topics(broker.bootstrap_servers, specs)) == sorted(s.name for s in specs)
    assert await create_topics(broker.bootstrap_servers, specs) == []
    after = await check_topics(broker.bootstrap_servers, specs)
    assert all(c.ok for c in after)
    wrong = await check_topics(broker.bootstrap_servers, topic_specs(names, partitions=5))
    assert wrong[0].describe() == "has 3 partitions, expected 5"


def test_the_cli_creates_checks_produces_and_exports(broker: LocalBroker, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = f"cli-{uuid.uuid4().hex[:8]}."
    monkeypatch.setenv("GUARDSTREAM_KAFKA__BOOTSTRAP_SERVERS", broker.bootstrap_servers)
    monkeypatch.setenv("GUARDSTREAM_KAFKA__TOPIC_PREFIX", prefix)
    runner = CliRunner()
    assert runner.invoke(app, ["topics", "check", "--partitions", "2"]).exit_code == 1
    created = runner.invoke(app, ["topics", "create", "--partitions", "2"])
    assert created.exit_code == 0 and f"{prefix}chat.events: created" in created.output
    assert runner.invoke(app, ["topics", "check", "--partitions", "2"]).exit_code == 0
    events = [event("hello"), event("world")]
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(e.model_dump_json() for e in events) + "\n")
    produced = runner.invoke(app, ["produce", str(source)])
    assert produced.exit_code == 0 and "published 2 events" in produced.output
    exported = runner.invoke(app, ["schemas", "export", str(tmp_path / "schemas")])
    assert exported.exit_code == 0 and (tmp_path / "schemas" / "Verdict.schema.json").exists()


async def test_produced_events_arrive_keyed_by_conversation(broker: LocalBroker, tmp_path: Path) -> None:
    names = TopicNames(f"p-{uuid.uuid4().hex[:8]}.")
    await create_topics(broker.bootstrap_servers, topic_specs(names, partitions=2))
    from topics.io import produce_events

    events = [event("one", conversation="conv-a"), event("two", conversation="conv-b")]
    await produce_events(broker.bootstrap_servers, names.events, events)
    records = await read_topic(broker.bootstrap_servers, names.events, 2)
    assert sorted(r.key for r in records) == [b"conv-a", b"conv-b"]
    assert sorted(json.loads(r.value)["text"] for r in records) == ["one", "two"]


def test_a_bad_line_in_a_produce_file_names_its_line(tmp_path: Path) -> None:
    source = tmp_path / "events.jsonl"
    source.write_text(event("fine").model_dump_json() + "\n" + '{"event_id": "x"}\n')
    with pytest.raises(InvalidInputLine, match="events.jsonl:2"):
        read_events(source)


async def test_tail_yields_records_as_json_and_marks_undecodable_ones(broker: LocalBroker) -> None:
    from topics.io import produce_raw, tail_topic

    names = TopicNames(f"tail-{uuid.uuid4().hex[:8]}.")
    await create_topics(broker.bootstrap_servers, topic_specs(names, partitions=1))
    await produce_raw(broker.bootstrap_servers, names.verdicts, [(b"k", b'{"a": 1}'), (b"k", b"\xff not json")])
    seen = []
    async for item in tail_topic(broker.bootstrap_servers, names.verdicts, from_beginning=True):
        seen.append(item)
        if len(seen) == 2:
            break
    assert seen[0] == {"partition": 0, "offset": 0, "value": {"a": 1}}
    assert seen[1]["offset"] == 1 and "not json" in str(seen[1]["value"])


@pytest.mark.parametrize(("brokers", "chosen"), [(1, 1), (3, 3), (5, 3)])
def test_the_default_replication_is_up_to_three_copies_as_the_cluster_allows(brokers: int, chosen: int) -> None:
    assert choose_replication(brokers) == chosen
    assert choose_replication(brokers, configured=2) == 2  # kafka.replication_factor, when set, decides


@pytest.mark.parametrize(("replication", "min_insync"), [(1, None), (2, "2"), (3, "2"), (5, "2")])
def test_every_topic_waits_for_a_second_copy_once_there_is_one(replication: int, min_insync: str | None) -> None:
    names = TopicNames("x.")
    specs = {s.name: s for s in topic_specs(names, partitions=4, replication_factor=replication)}
    assert all(s.replication_factor == replication for s in specs.values())
    for name in (names.events, names.verdicts, names.audit_labels, names.dlq, names.models):
        assert specs[name].configs.get("min.insync.replicas") == min_insync


def test_a_refused_topic_is_an_error_and_one_created_meanwhile_is_not() -> None:
    assert raise_for_refusals([("a", 0, None), ("b", 36, "Topic with this name already exists.")]) == ["a"]
    with pytest.raises(TopicsRefused, match="c: InvalidReplicationFactorError Replication factor: 3 larger"):
        raise_for_refusals([("a", 0, None), ("c", 38, "Replication factor: 3 larger than available brokers: 1.")])


def test_on_a_one_broker_cluster_create_chooses_one_copy_unless_told(broker: LocalBroker,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = f"rf-{uuid.uuid4().hex[:8]}."
    monkeypatch.setenv("GUARDSTREAM_KAFKA__BOOTSTRAP_SERVERS", broker.bootstrap_servers)
    monkeypatch.setenv("GUARDSTREAM_KAFKA__TOPIC_PREFIX", prefix)
    assert asyncio.run(count_brokers(broker.bootstrap_servers)) == 1
    runner = CliRunner()
    created = runner.invoke(app, ["topics", "create", "--partitions", "2"])
    assert created.exit_code == 0 and f"{prefix}chat.events: created (replication factor 1)" in created.output
    assert runner.invoke(app, ["topics", "check", "--partitions", "2"]).exit_code == 0

    other = f"rf3-{uuid.uuid4().hex[:8]}."  # this broker accepts any factor (a real one refuses more than it has)
    monkeypatch.setenv("GUARDSTREAM_KAFKA__TOPIC_PREFIX", other)
    created = runner.invoke(app, ["topics", "create", "--partitions", "2", "--replication", "3"])
    assert f"{other}chat.events: created (replication factor 3)" in created.output
    checked = runner.invoke(app, ["topics", "check", "--partitions", "2"])
    assert checked.exit_code == 1 and "has replication factor 3, expected 1" in checked.output
    monkeypatch.setenv("GUARDSTREAM_KAFKA__REPLICATION_FACTOR", "3")
    assert runner.invoke(app, ["topics", "check", "--partitions", "2"]).exit_code == 0
