"""Kill a worker process mid-stream (SIGKILL: no drain, no final commit) and restart one.

What is committed must never pass an unanswered offset, and after the restart every event has a verdict.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from pydantic import SecretStr

from schemas.events import ChatEvent
from tests.conftest import committed_and_end, running_worker, verdicts_covering, verdicts_for
from tests.factories import BENIGN, HARMFUL, event
from tests.kafka_io import QUIET_S, read_topic
from topics.io import produce_events
from workers.settings import WorkerSettings

EVENTS = 400


def settings_env(settings: WorkerSettings) -> dict[str, str]:
    """The settings as GUARDSTREAM_* variables, as an operator would pass them."""
    env: dict[str, str] = {}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}__{key.upper()}" if prefix else key.upper(), inner)
        elif isinstance(value, SecretStr):  # dumped as ******** otherwise
            env[f"GUARDSTREAM_{prefix}"] = value.get_secret_value()
        elif value is not None:
            env[f"GUARDSTREAM_{prefix}"] = json.dumps(value) if isinstance(value, list | bool) else str(value)

    walk("", settings.model_dump())
    return env


@contextmanager
def worker_process(settings: WorkerSettings) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m guardstream worker` with these settings; killed on exit if it is still running."""
    env = {**os.environ, **settings_env(settings), "GUARDSTREAM_OBSERVABILITY__LOG_LEVEL": "warning"}
    process = subprocess.Popen([sys.executable, "-m", "guardstream", "worker"], env=env)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
async def test_killed_worker_commits_no_unanswered_offset_and_restart_answers_all(
    settings: WorkerSettings, lite_guard
) -> None:
    settings.batch.max_batch = 4
    settings.batch.max_in_flight_events = 64
    topic = f"{settings.kafka.topic_prefix}chat.events"
    texts = BENIGN + HARMFUL
    events = [event(f"{texts[i % len(texts)]} (message {i})", conversation=f"c{i % 13}") for i in range(EVENTS)]
    await produce_events(settings.kafka.bootstrap_servers, topic, events)

    with worker_process(settings) as process:
        await verdicts_for(settings, 40, timeout_s=120)
        process.send_signal(signal.SIGKILL)
        process.wait()

    commits, _ = await committed_and_end(settings, EVENTS)
    inputs = await read_topic(settings.kafka.bootstrap_servers, topic, EVENTS)
    answered = {v.event_id for v in await verdicts_for(settings, 40, settle_s=QUIET_S)}  # all it got out
    position = {ChatEvent.model_validate_json(r.value).event_id: (r.partition, r.offset) for r in inputs}
    assert len(answered) < EVENTS, "the worker finished before it was killed: nothing was tested"
    unanswered_offsets: dict[int, list[int]] = defaultdict(list)
    for event_id, (partition, offset) in position.items():
        if event_id not in answered:
            unanswered_offsets[partition].append(offset)
    for partition, offset in commits.items():
        assert all(offset <= o for o in unanswered_offsets[partition]), (partition, offset)
    assert sum(commits.values()) > 0, "nothing was committed before the kill: the invariant was not exercised"

    async with running_worker(settings, lite_guard):
        verdicts = await verdicts_covering(settings, set(position), timeout_s=120)
    assert {v.event_id for v in verdicts} == set(position)


@pytest.mark.slow
async def test_sigterm_drains_commits_and_exits_cleanly(settings: WorkerSettings) -> None:
    settings.kafka.commit_interval_ms = 600_000  # only the shutdown commit can make the offsets below
    topic = f"{settings.kafka.topic_prefix}chat.events"
    events = [event(f"{BENIGN[i % len(BENIGN)]} (note {i})", conversation=f"c{i % 5}") for i in range(60)]
    await produce_events(settings.kafka.bootstrap_servers, topic, events)
    with worker_process(settings) as process:
        verdicts = await verdicts_covering(settings, {e.event_id for e in events}, timeout_s=120)
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=60)
    assert returncode == 0
    assert {v.event_id for v in verdicts} == {e.event_id for e in events}
    committed, ends = await committed_and_end(settings, len(events))
    assert committed == ends
