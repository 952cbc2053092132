"""A soak at CI scale (bench/soak.py; `make soak` runs it at 100,000 records): one worker process, the zero-cost
backend, 10,000 records of which a fifth are bad and a third of the rest repeats, published while it runs.
Every record is answered, its memory is flat over the second half, and the events in flight never pass
MAX_IN_FLIGHT_EVENTS plus one poll. Then the console's intake reads those verdicts and the trainer stores
labels for a share of them, each with every item taken in and its memory flat."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.soak import SoakOptions, soak_worker
from bench.soak_services import soak_console, soak_trainer
from bench.soak_stream import Answer
from workers.settings import WorkerSettings

RSS_BOUND_MB = 16.0  # growth allowed from half the records answered to all of them


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_worker_answers_every_record_in_flat_memory_and_in_flight_within_its_bound(
    settings: WorkerSettings,
) -> None:
    settings.limits.max_text_chars = 2000  # the stream's over-limit records stay small
    run = await soak_worker(settings, SoakOptions(events=10_000, rss_bound_mb=RSS_BOUND_MB, timeout_s=120))
    print(json.dumps(run.summary()))
    assert run.problems == []
    assert run.verdicts + run.dead_letters >= run.records and run.duplicates == 0
    assert run.rss_mb["end"] - run.rss_mb["middle"] <= RSS_BOUND_MB
    assert 0 < run.in_flight_peak <= settings.batch.max_in_flight_events + settings.kafka.max_poll_records


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_the_console_reads_every_verdict_and_the_trainer_stores_every_label_in_flat_memory(
    settings: WorkerSettings, tmp_path: Path,
) -> None:
    settings.limits.max_text_chars = 2000
    answers: list[Answer] = []
    run = await soak_worker(settings, SoakOptions(events=4_000, timeout_s=120), answers=answers)
    assert run.problems == []
    servers, prefix = settings.kafka.bootstrap_servers, settings.kafka.topic_prefix
    console = await soak_console(servers, prefix, run.verdicts, tmp_path, RSS_BOUND_MB)
    trainer = await soak_trainer(servers, prefix, answers, 0.05, 0.05 * run.records_per_s, tmp_path, RSS_BOUND_MB)
    print(json.dumps(console.summary()), json.dumps(trainer.summary()))
    assert console.problems == [] and console.counters["guardstream_console_verdicts_total"] == run.verdicts
    assert trainer.problems == [] and trainer.counters["guardstream_trainer_examples_written_total"] == trainer.items
