"""The console's intake and the trainer's label path under the worker soak's stream, each as its own process
(`guardstream console`, `guardstream trainer`), configured by the environment alone.

- console: reads every verdict the worker phase wrote (its backlog, tens of thousands), samples the review
  queue and reads each queued event at its coordinates, into a SQLite review store. Every verdict is read,
  none is undecodable or refused, no queued event is unreadable; its verdicts/s against the worker's.
- trainer: labels for `label_share` of those verdicts (reviewers label a sample), published while the trainer
  runs at that share of the worker's answer rate; each label is resolved by seeking its verdict and event and
  written to a local data set. Every label is stored, none unresolvable.
Both: resident memory at 10%, 50% and 100% of the items, the second half's growth within a bound.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from aiokafka import AIOKafkaProducer
from rich.progress import Progress

from bench.soak_stream import Answer, WorkerProcess
from console.passwords import hash_token
from schemas.events import AuditLabel, SourceRef
from topics.registry import TopicNames
from topics.settings import LOCAL_BROKER_FETCH_MAX_WAIT_MS

MB = 1024 * 1024


@dataclass
class ServiceRun:
    name: str
    items: int  # verdicts (console) or labels (trainer) it had to take in
    seconds: float = 0.0
    items_per_s: float = 0.0
    rss_mb: dict[str, float] = field(default_factory=dict)  # ready, start (10%), middle (50%), end (100%)
    rss_bound_mb: float = 0.0
    offered_per_s: float | None = None  # the rate its input was published at (None: a backlog)
    counters: dict[str, float] = field(default_factory=dict)
    exit_status: int | None = None
    samples: list[dict[str, float]] = field(default_factory=list)  # at, done, rss_mb
    problems: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "samples"}


def _base_env(bootstrap_servers: str, prefix: str, name: str) -> dict[str, str]:
    return {"GUARDSTREAM_KAFKA__BOOTSTRAP_SERVERS": bootstrap_servers, "GUARDSTREAM_KAFKA__TOPIC_PREFIX": prefix,
            "GUARDSTREAM_KAFKA__FETCH_MAX_WAIT_MS": str(LOCAL_BROKER_FETCH_MAX_WAIT_MS),
            "GUARDSTREAM_KAFKA__SESSION_TIMEOUT_MS": "6000", "GUARDSTREAM_GROUP_ID": f"{name}-{prefix}",
            "GUARDSTREAM_OBSERVABILITY__LOG_LEVEL": "error"}


async def soak_console(bootstrap_servers: str, prefix: str, verdicts: int, work: Path, rss_bound_mb: float,
                       log: IO[bytes] | None = None, progress: Progress | None = None) -> ServiceRun:
    """`guardstream console` until it has read `verdicts` verdicts from the topics under `prefix`."""
    env = {**_base_env(bootstrap_servers, prefix, "console"),
           "GUARDSTREAM_DATABASE_URL": f"sqlite:///{work / 'review.db'}", "GUARDSTREAM_PORT": "0",
           "GUARDSTREAM_ACCESS__REVIEWERS": f'{{"soak": "{hash_token("soak-token-not-secret")}"}}'}
    run = ServiceRun("console", verdicts, rss_bound_mb=rss_bound_mb)
    seen = "guardstream_console_verdicts_total"
    await _drive(WorkerProcess(env, log, module="guardstream", args=("console",)), run, seen, progress)
    bad = {k: v for k, v in run.counters.items()
           if k.startswith(("guardstream_console_verdicts_undecodable", "guardstream_console_verdicts_refused",
                            "guardstream_console_events_unreadable")) and k.endswith("_total") and v}
    run.problems += [f"{k} = {v:.0f}" for k, v in bad.items()]
    return run


async def soak_trainer(bootstrap_servers: str, prefix: str, answers: list[Answer], label_share: float,
                       labels_per_s: float, work: Path, rss_bound_mb: float, log: IO[bytes] | None = None,
                       progress: Progress | None = None) -> ServiceRun:
    """`guardstream trainer` taking in labels for every 1/`label_share`-th verdict, published `labels_per_s`."""
    labels = audit_labels(answers, TopicNames(prefix), label_share)
    env = {**_base_env(bootstrap_servers, prefix, "trainer"), "GUARDSTREAM_DATA_DIR": str(work / "trainer"),
           "GUARDSTREAM_DATASET__FLUSH_INTERVAL_S": "1", "GUARDSTREAM_JOBS__SCHEDULED": "[]"}
    run = ServiceRun("trainer", len(labels), rss_bound_mb=rss_bound_mb, offered_per_s=labels_per_s)
    publishing = asyncio.create_task(publish_paced(bootstrap_servers, TopicNames(prefix).audit_labels, labels,
                                                   labels_per_s))
    try:
        await _drive(WorkerProcess(env, log, module="guardstream", args=("trainer",)), run,
                     "guardstream_trainer_examples_written_total", progress, before=lambda: publishing.done())
        await publishing
    finally:
        publishing.cancel()
    unresolvable = {k: v for k, v in run.counters.items() if k.startswith("guardstream_trainer_labels_unresolvable")
                    and k.split("{")[0].endswith("_total") and v}
    run.problems += [f"{k} = {v:.0f}" for k, v in unresolvable.items()]
    return run


def audit_labels(answers: list[Answer], topics: TopicNames, share: float) -> list[AuditLabel]:
    """A reviewer's label on every 1/`share`-th ok verdict (one per event), naming the verdict by its coordinates
    as the console does."""
    every = max(1, round(1 / share))
    chosen: dict[str, Answer] = {}
    for answer in answers:
        if answer.kind == "verdict" and answer.labels[0] == "ok" and answer.event_id:
            chosen.setdefault(answer.event_id, answer)
    picked = list(chosen.values())[::every]
    return [AuditLabel(event_id=a.event_id or "", request_harmful=not a.labels[1], response_harmful=a.labels[2],
                       labeller="soak-reviewer",
                       verdict=SourceRef(topic=topics.verdicts, partition=a.at_record[0], offset=a.at_record[1]))
            for a in picked]


async def publish_paced(bootstrap_servers: str, topic: str, labels: list[AuditLabel], per_s: float) -> None:
    """Each label keyed by its event id, at `per_s` (a tenth of a second's worth at a time)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5)
    await producer.start()
    try:
        step = max(1, int(per_s / 10))
        began = time.monotonic()
        for start in range(0, len(labels), step):
            for label in labels[start:start + step]:
                await producer.send(topic, label.model_dump_json().encode(), key=label.event_id.encode())
            await producer.flush()
            due = began + (start + step) / per_s - time.monotonic()
            if due > 0:
                await asyncio.sleep(due)  # pacing, not waiting for a condition
    finally:
        await producer.stop()


async def _drive(process: WorkerProcess, run: ServiceRun, done_metric: str, progress: Progress | None,
                 before: Callable[[], bool] = lambda: True, timeout_s: float = 600, every_s: float = 0.25) -> None:
    """Start the service, sample its memory and `done_metric` until it reaches `run.items`, stop it (SIGTERM)."""
    process.start()
    task = progress.add_task(f"soak {run.name}", total=run.items) if progress else None
    try:
        await process.wait_health(120)
        run.rss_mb["ready"] = process.rss() / MB
        began = time.monotonic()
        deadline = began + timeout_s
        while True:
            rss = process.rss() / MB
            metrics = await process.metrics()
            done = metrics.get(done_metric, 0.0)
            run.samples.append({"at": time.monotonic() - began, "done": done, "rss_mb": rss})
            if progress is not None:
                progress.update(task, completed=done)
            if done >= run.items and before():
                break
            if not process.alive() or time.monotonic() > deadline:
                run.problems.append(f"{done:.0f} of {run.items} taken in before it "
                                    + ("exited" if not process.alive() else f"timed out ({timeout_s} s)"))
                break
            await asyncio.sleep(every_s)  # sampling period
        run.seconds = time.monotonic() - began
        run.counters = metrics
        run.exit_status = process.stop()
    finally:
        if process.alive():
            process.kill()
    run.items_per_s = run.items / run.seconds if run.seconds else 0.0
    run.counters = {k: v for k, v in run.counters.items()
                    if k.startswith("guardstream_") and not k.split("{")[0].endswith("_created")}
    for name, share in (("start", 0.1), ("middle", 0.5), ("end", 1.0)):
        at = next((s for s in run.samples if s["done"] >= share * run.items), None)
        if at is not None:
            run.rss_mb[name] = at["rss_mb"]
    growth = run.rss_mb.get("end", 0.0) - run.rss_mb.get("middle", 0.0)
    if growth > run.rss_bound_mb:
        run.problems.append(f"resident memory grew {growth:.1f} MB in the second half, over {run.rss_bound_mb} MB")
    if run.exit_status not in (0, None):
        run.problems.append(f"exited with status {run.exit_status} on SIGTERM")
