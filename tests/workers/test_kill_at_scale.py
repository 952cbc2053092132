"""SIGKILL a worker process five times mid-stream over 15,000 records (repeats and bad records mixed in) and
restart it each time (bench/kill_at_scale.py; `make soak` runs it at full scale).

At every kill some records are still unanswered, and no committed offset has passed a record without a
verdict or a dead letter. At the end every record is answered and verdicts that must agree do.
"""

from __future__ import annotations

import json

import pytest

from bench.kill_at_scale import KillOptions, run_kills
from tests.kafka_io import QUIET_S
from workers.settings import WorkerSettings

EVENTS = 15_000
KILLS = 5


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_every_kill_lands_mid_stream_commits_nothing_unanswered_and_restarts_answer_all(
    settings: WorkerSettings,
) -> None:
    settings.limits.max_text_chars = 2000  # the stream's over-limit records stay small
    # a restart waits out the killed member's session before its group rebalances (on the local broker about
    # twice the session timeout): 3 s keeps five restarts short; the commit invariant does not depend on it
    settings.kafka.session_timeout_ms = 3000
    report = await run_kills(settings, KillOptions(events=EVENTS, kills=KILLS, quiet_s=QUIET_S))
    print(json.dumps(report.summary()))
    assert report.problems == []
    assert len(report.kills) == KILLS
    assert all(k.unanswered > 0 for k in report.kills), "a kill landed after the stream was done"
    assert all(not k.passed_unanswered for k in report.kills)
    assert report.unanswered_at_end == 0 and report.disagreements == []
    assert all(k.restart.first_new_answer is not None for k in report.kills)
