"""`guardstream replay --to-topic`: a range of events re-moderated into a verdict topic of its own,
resumable from its position file, never into the live verdict topic unless asked. The command's exit codes
and one-line failures are tested in tests/topics/test_replay_cli.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from guardstream.cli import app
from schemas.events import ModelRef, Verdict
from tests.conftest import PARTITIONS
from tests.factories import BENIGN, HARMFUL, event
from tests.kafka_io import partition_ends, read_topic
from topics.admin import create_topics
from topics.io import produce_events, produce_raw
from topics.ranges import RangeSpec, RateLimit
from topics.registry import TopicNames, TopicSpec
from workers.backfill import ReplayRefused, check_target, judging_model, run_backfill
from workers.guard.lite import LiteGuard
from workers.settings import GuardSettings, WorkerSettings


async def test_a_backfill_answers_each_event_in_range_once_and_resumes_where_it_stopped(
    settings: WorkerSettings, lite_guard: LiteGuard, tmp_path: Path
) -> None:
    topics = TopicNames(settings.kafka.topic_prefix)
    target = f"{topics.prefix}backfill.verdicts"
    await create_topics(settings.kafka.bootstrap_servers, [TopicSpec(target, PARTITIONS, 1, {})])
    events = [event(t, conversation=f"c{i}") for i, t in enumerate((BENIGN + HARMFUL) * 2)]
    await produce_events(settings.kafka, topics.events, events)
    await produce_raw(settings.kafka, topics.events, [(b"c0", b"not json")])
    records = await read_topic(settings.kafka.bootstrap_servers, topics.events, len(events) + 1)
    ends = partition_ends(records, PARTITIONS)
    spec = RangeSpec(offsets=",".join(f"{p}:1-{end}" for p, end in ends.items() if end))  # each partition but its first
    wanted = {(r.partition, r.offset) for r in records if r.offset >= 1}
    position = tmp_path / "position.json"

    first = await run_backfill(settings, lite_guard, topics.events, target, spec, position, RateLimit(None),
                               batch_size=3, idle_timeout_s=3, max_batches=1)
    assert first.incomplete and 0 < first.read <= 3
    second = await run_backfill(settings, lite_guard, topics.events, target, spec, position, RateLimit(None),
                                batch_size=3, idle_timeout_s=3)
    assert second.incomplete == {} and first.read + second.read == len(wanted)

    undecodable = sum(r.value == b"not json" for r in records if (r.partition, r.offset) in wanted)
    answers = await read_topic(settings.kafka.bootstrap_servers, target, len(wanted) - undecodable, settle_s=1.5)
    verdicts = [Verdict.model_validate_json(a.value) for a in answers]
    sources = [(v.source.partition, v.source.offset) for v in verdicts if v.source is not None]
    assert sorted(sources) == sorted(w for w in wanted if w not in _raw_at(records, b"not json"))  # once each
    assert first.counts.get("undecodable:decode_failed", 0) + second.counts.get("undecodable:decode_failed", 0) \
        == undecodable
    by_offset = {(r.partition, r.offset): r for r in records}
    assert all(v.event_id in by_offset[(v.source.partition, v.source.offset)].value.decode() for v in verdicts
               if v.source is not None)


def _raw_at(records: list, value: bytes) -> set[tuple[int, int]]:  # type: ignore[type-arg]
    return {(r.partition, r.offset) for r in records if r.value == value}


def test_a_backfill_refuses_the_live_verdict_topic_and_its_own_source(settings: WorkerSettings) -> None:
    topics = TopicNames(settings.kafka.topic_prefix)
    with pytest.raises(ReplayRefused, match="live verdict topic"):
        check_target(settings, topics.events, topics.verdicts, allow_live_topic=False)
    with pytest.raises(ReplayRefused, match="being replayed"):
        check_target(settings, topics.events, topics.events, allow_live_topic=True)
    check_target(settings, topics.events, topics.verdicts, allow_live_topic=True)
    check_target(settings, topics.events, f"{topics.prefix}backfill.verdicts", allow_live_topic=False)


@pytest.mark.parametrize("name", ["audit_labels", "models", "dlq", "events"])
def test_a_backfill_refuses_every_project_topic_that_does_not_hold_verdicts(settings: WorkerSettings,
                                                                            name: str) -> None:
    topics = TopicNames(settings.kafka.topic_prefix)
    copy = f"{topics.prefix}events.copy"  # a replay of another topic, so that the events topic is not the source
    with pytest.raises(ReplayRefused, match="does not hold verdicts"):
        check_target(settings, copy, getattr(topics, name), allow_live_topic=True)


async def test_backfill_verdicts_name_the_backend_that_judged_them_not_the_configured_model(
    settings: WorkerSettings, lite_guard: LiteGuard, tmp_path: Path
) -> None:
    """Configured: a transformers model, guard-7b version 3; `--backend lite` judged, so the lite heads did."""
    topics = TopicNames(settings.kafka.topic_prefix)
    target = f"{topics.prefix}backfill.verdicts"
    await create_topics(settings.kafka.bootstrap_servers, [TopicSpec(target, 1, 1, {})])
    configured = settings.model_copy(update={"guard": GuardSettings(backend="transformers", model_name="guard-7b",
                                                                    model_version="3")})
    events = [event(BENIGN[0], conversation="c0"), event("x" * (settings.limits.max_text_chars + 1))]
    await produce_events(settings.kafka, topics.events, events)
    records = await read_topic(settings.kafka.bootstrap_servers, topics.events, len(events))
    spec = RangeSpec(offsets=",".join(f"{p}:0-{end}" for p, end in partition_ends(records, PARTITIONS).items()))

    summary = await run_backfill(configured, lite_guard, topics.events, target, spec, None, RateLimit(None),
                                 batch_size=8, idle_timeout_s=3)
    assert summary.counts == {"verdicts": 1, "error_verdicts": 1}  # an answer, and an over-limit event's error
    answers = await read_topic(settings.kafka.bootstrap_servers, target, len(events), settle_s=1.5)
    judged_by = {Verdict.model_validate_json(a.value).model for a in answers}
    assert judged_by == {ModelRef(name="lite", version=lite_guard.fingerprint)}


def test_a_backfill_by_the_configured_backend_names_the_configured_model(settings: WorkerSettings,
                                                                         lite_guard: LiteGuard) -> None:
    assert judging_model(settings.guard, lite_guard) == ModelRef(name=settings.guard.model_name,
                                                                 version=settings.guard.model_version)


async def test_the_command_names_the_backend_it_was_given_in_its_verdicts(
    settings: WorkerSettings, lite_guard: LiteGuard, monkeypatch: pytest.MonkeyPatch
) -> None:
    topics = TopicNames(settings.kafka.topic_prefix)
    target = f"{topics.prefix}backfill.verdicts"
    await create_topics(settings.kafka.bootstrap_servers, [TopicSpec(target, 1, 1, {})])
    await produce_events(settings.kafka, topics.events, [event(BENIGN[0])])
    records = await read_topic(settings.kafka.bootstrap_servers, topics.events, 1)
    _configure(monkeypatch, settings, GUARD__BACKEND="transformers", GUARD__MODEL_NAME="guard-7b",
               GUARD__MODEL_VERSION="3")
    result = await _invoke(["replay", "--to-topic", target, "--backend", "lite", "--idle-timeout-s", "3",
                            "--offsets", f"{records[0].partition}:0-1"])
    assert result.exit_code == 0, result.output
    answers = await read_topic(settings.kafka.bootstrap_servers, target, 1)
    assert Verdict.model_validate_json(answers[0].value).model == ModelRef(name="lite", version=lite_guard.fingerprint)


def _configure(monkeypatch: pytest.MonkeyPatch, settings: WorkerSettings, **env: str) -> None:
    monkeypatch.setenv("GUARDSTREAM_KAFKA__BOOTSTRAP_SERVERS", settings.kafka.bootstrap_servers)
    monkeypatch.setenv("GUARDSTREAM_KAFKA__TOPIC_PREFIX", settings.kafka.topic_prefix)
    for name, value in env.items():
        monkeypatch.setenv(f"GUARDSTREAM_{name}", value)


async def _invoke(args: list[str]) -> Result:
    """The command runs its own event loop: run it on a thread, off this test's loop."""
    return await asyncio.to_thread(CliRunner().invoke, app, args)
