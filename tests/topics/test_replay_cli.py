"""`guardstream replay` as a user runs it (the real console script): every record of an open range on the local
broker, Ctrl-C that saves the position and says how to resume, short topic names, a created or refused
target, and each failure as one line with its exit code."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import signal
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from tests.conftest import PARTITIONS
from tests.factories import BENIGN, HARMFUL, event
from tests.kafka_io import QUIET_S, read_topic, read_until
from tests.topics.guardstream_process import cli_env, finish, guardstream, start
from topics.admin import create_topics
from topics.clients import stop_consumer
from topics.io import produce_events
from topics.ranges import RangeSpec, ReplayPosition
from topics.registry import TopicNames, TopicSpec
from workers.settings import WorkerSettings

OPEN_RANGE = ",".join(f"{p}:0-" for p in range(PARTITIONS))
EVENTS = 60


async def _publish(settings: WorkerSettings) -> set[tuple[int, int]]:
    """EVENTS events, sent as `guardstream produce` sends them (several to a batch); where each landed."""
    texts = BENIGN + HARMFUL
    events = [event(texts[i % len(texts)], conversation=f"c{i % 7}") for i in range(EVENTS)]
    topic = TopicNames(settings.kafka.topic_prefix).events
    await produce_events(settings.kafka, topic, events)
    return {(r.partition, r.offset) for r in await read_topic(settings.kafka.bootstrap_servers, topic, EVENTS)}


async def _backfill_target_and_events(settings: WorkerSettings) -> tuple[str, set[tuple[int, int]]]:
    """A backfill target topic made beforehand, and the events published for the replay to read."""
    target = f"{TopicNames(settings.kafka.topic_prefix).prefix}backfill.verdicts"
    await create_topics(settings.kafka.bootstrap_servers, [TopicSpec(target, PARTITIONS, 1, {})])
    return target, await _publish(settings)


async def _sources(settings: WorkerSettings, target: str, wanted: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """The event records the verdicts on `target` answer, once each of `wanted` has one."""
    def answered(records: list) -> set[tuple[int, int]]:  # type: ignore[type-arg]
        return {(s["partition"], s["offset"]) for s in (json.loads(r.value)["source"] for r in records)}

    records = await read_until(settings.kafka.bootstrap_servers, target, lambda rs: wanted <= answered(rs),
                               timeout_s=120, settle_s=QUIET_S, what="a verdict for every event")
    return answered(records)


async def _partitions(settings: WorkerSettings, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, group_id=None)
    await consumer.start()
    try:
        return len(consumer.partitions_for_topic(topic) or ())
    finally:
        await stop_consumer(consumer)


async def test_ctrl_c_saves_the_position_and_prints_the_command_that_resumes(settings: WorkerSettings,
                                                                            tmp_path: Path) -> None:
    """`--rate 3` is slow enough to be interrupted; no --position was given, so one is written and named."""
    topics = TopicNames(settings.kafka.topic_prefix)
    target, wanted = await _backfill_target_and_events(settings)
    env = cli_env(settings, tmp_path / "data")
    process = start(["replay", "--to-topic", target, "--offsets", OPEN_RANGE, "--rate", "3"], env)
    try:
        await read_topic(settings.kafka.bootstrap_servers, target, 1, timeout_s=120)  # progress: a verdict is out
        process.send_signal(signal.SIGINT)
        interrupted = await asyncio.to_thread(finish, process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert interrupted.code == 130, interrupted.stderr
    line = interrupted.one_line_error
    assert line.startswith("guardstream: interrupted after "), line
    resume = shlex.split(re.search(r"resume with: (.+)$", line)[1])  # type: ignore[index]
    kept = Path(resume[resume.index("--position") + 1])
    assert resume[:2] == ["guardstream", "replay"] and kept.parent == tmp_path / "data" / "replay"
    position = ReplayPosition.load(kept, topics.events, RangeSpec(offsets=OPEN_RANGE))
    done = sum(n - start for n, (start, _) in zip(position.next.values(), position.bounds.values(), strict=True))
    assert 0 < done < EVENTS

    del resume[resume.index("--rate"):resume.index("--rate") + 2]  # the rest at full speed
    resumed = await guardstream(resume[1:], env)
    assert resumed.code == 0, resumed.stderr
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["incomplete"] == {} and summary["read"] <= EVENTS - done  # it went on, not from the start
    assert await _sources(settings, target, wanted) == wanted


async def test_an_open_or_time_range_backfills_every_event_into_a_target_it_creates(settings: WorkerSettings,
                                                                                   tmp_path: Path) -> None:
    """60 events in multi-record batches: the local broker's end offsets say 1 per partition; all 60 are judged."""
    topics = TopicNames(settings.kafka.topic_prefix)
    wanted = await _publish(settings)
    env = cli_env(settings, tmp_path / "data")
    for target, bounds in ((f"{topics.prefix}by-offsets", ["--offsets", OPEN_RANGE]),
                           (f"{topics.prefix}by-time", ["--since", "2000-01-01T00:00:00"])):
        done = await guardstream(["replay", "--to-topic", target, *bounds, "--idle-timeout-s", "3"], env)
        assert done.code == 0, done.stderr
        assert done.one_line_error == (f"created the target topic {target} with {PARTITIONS} partitions, as many as "
                                       f"{topics.events}")
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        assert summary["read"] == EVENTS and summary["incomplete"] == {}
        assert sum(summary["counts"].values()) == EVENTS
        assert await _partitions(settings, target) == PARTITIONS
        assert await _sources(settings, target, wanted) == wanted


async def test_the_short_name_verdicts_is_the_live_topic_and_is_refused(settings: WorkerSettings,
                                                                       tmp_path: Path) -> None:
    env = cli_env(settings, tmp_path / "data")
    live = TopicNames(settings.kafka.topic_prefix).verdicts
    refused = await guardstream(["replay", "--to-topic", "verdicts", "--offsets", "0:0-1"], env)
    assert refused.code == 5
    assert refused.one_line_error == (f"guardstream: '{live}' is the live verdict topic; backfill into a topic of "
                                      "its own (or give --allow-live-topic to write the live one)")
    dlq = await guardstream(["replay", "--to-topic", "dlq", "--offsets", "0:0-1"], env)
    assert dlq.code == 5 and "does not hold verdicts" in dlq.one_line_error


async def test_a_missing_target_is_refused_with_no_create_topic(settings: WorkerSettings, tmp_path: Path) -> None:
    target = f"{settings.kafka.topic_prefix}not-there"
    refused = await guardstream(["replay", "--to-topic", target, "--offsets", "0:0-1", "--no-create-topic"],
                                cli_env(settings, tmp_path / "data"))
    assert refused.code == 5 and f"the target topic '{target}' does not exist" in refused.one_line_error
    assert await _partitions(settings, target) == 0


async def test_a_bad_range_or_a_position_file_for_another_range_is_one_line(settings: WorkerSettings,
                                                                           tmp_path: Path) -> None:
    topics = TopicNames(settings.kafka.topic_prefix)
    env = cli_env(settings, tmp_path / "data", GUARDSTREAM_DATASET__URI=str(tmp_path / "dataset"))
    target = f"{topics.prefix}backfill.verdicts"
    position = tmp_path / "position.json"
    ReplayPosition.start(topics.audit_labels, {0: (0, 3)}, position, RangeSpec(offsets="0:0-3")).save()
    for args, code, says in (
        (["--to-topic", target, "--offsets", "0:5-2"], 2, "--offsets: '0:5-2' ends before it starts"),
        (["--to-topic", target], 2, "give either --offsets or time bounds"),
        (["--offsets", "0:0-1"], 2, "give either --to-topic TOPIC (backfill) or --export"),
        (["--to-topic", target, "--offsets", "9:0-1"], 3, f"{topics.events} has no partition 9"),
        (["--export", "--offsets", "0:5-9", "--position", str(position)], 3, "records the range 0:0-3, not 0:5-9"),
    ):
        failed = await guardstream(["replay", *args], env)
        assert failed.code == code and says in failed.one_line_error, (args, failed)


async def test_a_partition_left_unfinished_exits_partial_with_its_position(settings: WorkerSettings,
                                                                         tmp_path: Path) -> None:
    topics = TopicNames(settings.kafka.topic_prefix)
    target, wanted = await _backfill_target_and_events(settings)
    partition = min(p for p, _ in wanted)
    held = sum(p == partition for p, _ in wanted)
    env = cli_env(settings, tmp_path / "data")
    partial = await guardstream(["replay", "--to-topic", target, "--offsets", f"{partition}:0-{held + 5}",
                                 "--idle-timeout-s", "1"], env)
    assert partial.code == 6, partial.stderr
    line = partial.one_line_error
    assert f"partitions left unfinished (nothing came for 1s): {partition} at offset {held} of {held + 5}" in line
    resume = shlex.split(re.search(r"resume with: (.+)$", line)[1])  # type: ignore[index]
    kept = Path(resume[resume.index("--position") + 1])
    assert ReplayPosition.load(kept, topics.events, RangeSpec(offsets=f"{partition}:0-{held + 5}")).next == {
        partition: held}
    assert json.loads(partial.stdout.strip().splitlines()[-1])["incomplete"] == {str(partition): held}
