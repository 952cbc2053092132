"""Kill a worker process with SIGKILL again and again mid-stream, and restart it each time.

The whole stream (events, repeats of earlier content, bad records) is published first. Each kill waits until
the answered places cross a random fraction of the stream (one fraction drawn in each of `kills` equal
slices of 5–90%, so every kill lands after the restarted worker has answered something new and before the
stream is done). At each kill, once everything the dead worker got out has been read:
- some records were still unanswered (the kill landed mid-stream);
- no committed offset has passed a record without an answer (a verdict or a dead letter at its coordinates).
At the end every record has an answer, and verdicts that must agree do (all of one event's, all of one
content's). Measured per kill: the answered records above the commit point (what a restart must answer
again), the duplicates that followed, and the restart's time to its first answer and its first new answer,
split by start-up step.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from bench.soak_stream import (
    Ledger,
    Place,
    Record,
    Startup,
    WorkerProcess,
    committed_offsets,
    passed_unanswered,
    publish,
    settings_env,
    stream_mix,
)
from bench.soak_worker import ZERO_COST
from topics.registry import TopicNames
from workers.settings import WorkerSettings


@dataclass(frozen=True)
class KillOptions:
    events: int = 15_000
    kills: int = 5
    backend: str = ZERO_COST
    bad_share: float = 0.2
    repeat_share: float = 1 / 3
    seed: int = 8
    partitions: int = 4
    quiet_s: float = 1.5  # how long the answer topics stay silent after a kill before they count as read
    timeout_s: float = 120.0  # for each wait: a start, a fraction of the stream, the end


@dataclass
class Kill:
    target: int  # answered places the kill waited for
    answered: int  # places answered when everything the dead worker got out was read
    unanswered: int
    committed: dict[int, int]
    exposed: int  # answered places at or above the commit point: what the restart must answer again
    passed_unanswered: list[Place]  # must stay empty
    killed_at: float = 0.0  # time.monotonic()
    restart: Startup = field(default_factory=Startup)
    kill_to_first_new_answer: float | None = None  # the outage as a reader of the verdicts sees it
    duplicates: dict[str, int] = field(default_factory=dict)  # repeated answers until the next kill (or the end)


@dataclass
class KillReport:
    options: dict[str, Any]
    records: int
    seconds: float = 0.0
    first_start: Startup = field(default_factory=Startup)
    kills: list[Kill] = field(default_factory=list)
    unanswered_at_end: int = 0
    disagreements: list[str] = field(default_factory=list)
    duplicates_before_first_kill: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        restart = [k.restart.first_new_answer for k in self.kills if k.restart.first_new_answer is not None]
        outage = [k.kill_to_first_new_answer for k in self.kills if k.kill_to_first_new_answer is not None]
        return {"kills": len(self.kills), "records": self.records, "seconds": round(self.seconds, 1),
                "duplicates_per_kill": [sum(k.duplicates.values()) for k in self.kills],
                "exposed_per_kill": [k.exposed for k in self.kills],
                "unanswered_at_kill": [k.unanswered for k in self.kills],
                "restart_to_first_new_verdict_s": _spread(restart), "kill_to_first_new_verdict_s": _spread(outage),
                "problems": self.problems}

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "summary": self.summary()}


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {"min": ordered[0], "median": ordered[len(ordered) // 2], "max": ordered[-1]}


def kill_targets(total: int, kills: int, seed: int) -> list[int]:
    """One answered-count per kill, drawn uniformly in each of `kills` equal slices of 5–90% of `total`."""
    rng = random.Random(seed)
    low, high = 0.05, 0.90
    width = (high - low) / kills
    return [int(total * (low + width * (i + rng.random()))) for i in range(kills)]


def worker_env(settings: WorkerSettings, backend: str) -> dict[str, str]:
    return {**settings_env(settings), "GUARDSTREAM_GUARD__BACKEND": backend,
            "GUARDSTREAM_OBSERVABILITY__LOG_LEVEL": "error"}


async def run_kills(settings: WorkerSettings, options: KillOptions, log: IO[bytes] | None = None,
                    on_progress: Any = None) -> KillReport:
    """The kill run against the broker, topics and group of `settings` (the topics must exist, empty)."""
    topics = TopicNames(settings.kafka.topic_prefix)
    servers = settings.kafka.bootstrap_servers
    records = stream_mix(options.events, bad_share=options.bad_share, repeat_share=options.repeat_share,
                         seed=options.seed, tag=f"kill{options.seed}",
                         over_limit_chars=settings.limits.max_text_chars)
    report = KillReport(options=asdict(options), records=len(records))
    placed: dict[Place, Record] = {}
    await publish(servers, topics.events, records, placed)
    ledger = Ledger(servers, topics, options.partitions)
    await ledger.start()
    env = worker_env(settings, options.backend)
    began = time.monotonic()
    try:
        process = await _start(env, log, ledger, options)
        report.first_start = process.startup
        epochs: list[tuple[float, float]] = []  # each worker's (spawned, killed) in ledger time
        for target in kill_targets(len(records), options.kills, options.seed):
            await ledger.wait_for(lambda t=target: ledger.answered >= t, options.timeout_s,
                                  f"{target} places answered", process.alive)
            killed = process.kill()
            epochs.append((process.spawned, killed))
            await ledger.quiet(options.quiet_s)
            report.kills.append(await _inspect(ledger, placed, settings, options, target))
            report.kills[-1].killed_at = killed
            if on_progress:
                on_progress(ledger.answered)
            process = await _start(env, log, ledger, options)
            report.kills[-1].restart = process.startup
        await ledger.wait_for(lambda: not ledger.unanswered(placed), options.timeout_s, "every record answered",
                              process.alive)
        if process.stop() != 0:
            report.problems.append(f"the last worker exited with status {process.process.returncode} on SIGTERM")
        await ledger.quiet(options.quiet_s)
        epochs.append((process.spawned, float("inf")))
        report.seconds = time.monotonic() - began
        _finish(report, ledger, placed, epochs)
    finally:
        if "process" in locals() and process.alive():
            process.kill()
        await ledger.stop()
    return report


async def _start(env: dict[str, str], log: IO[bytes] | None, ledger: Ledger, options: KillOptions) -> WorkerProcess:
    process = WorkerProcess(env, log).start()
    await process.wait_health(options.timeout_s)
    return process


async def _inspect(ledger: Ledger, placed: dict[Place, Record], settings: WorkerSettings, options: KillOptions,
                   target: int) -> Kill:
    committed = await committed_offsets(settings.kafka.bootstrap_servers, settings.kafka.group_id,
                                        TopicNames(settings.kafka.topic_prefix).events, options.partitions)
    answered = dict(ledger.first)
    exposed = sum(1 for p, o in answered if o >= committed.get(p, 0))
    return Kill(target=target, answered=len(answered), unanswered=len(placed) - len(answered), committed=committed,
                exposed=exposed, passed_unanswered=passed_unanswered(committed, answered))


def _finish(report: KillReport, ledger: Ledger, placed: dict[Place, Record],
            epochs: list[tuple[float, float]]) -> None:
    """Duplicates and restart times per kill, from the ledger's arrival times; the checks of the end."""
    report.duplicates_before_first_kill = sum(ledger.duplicates_between(0, epochs[0][1]).values())
    for kill, (spawned, until) in zip(report.kills, epochs[1:], strict=True):
        kill.duplicates = dict(ledger.duplicates_between(spawned, until))
        for name, new_only in (("first_answer", False), ("first_new_answer", True)):
            at = ledger.first_answer_after(spawned, new_only)
            setattr(kill.restart, name, _since(at, spawned))
        kill.kill_to_first_new_answer = _since(ledger.first_answer_after(spawned, True), kill.killed_at)
    spawned = epochs[0][0]
    report.first_start.first_answer = _since(ledger.first_answer_after(spawned, False), spawned)
    report.first_start.first_new_answer = report.first_start.first_answer
    report.unanswered_at_end = len(ledger.unanswered(placed))
    report.disagreements = ledger.disagreements(placed)
    report.problems += [f"kill {i + 1}: nothing left unanswered, it did not land mid-stream"
                        for i, k in enumerate(report.kills) if k.unanswered == 0]
    report.problems += [f"kill {i + 1}: committed offsets passed unanswered records {k.passed_unanswered[:10]}"
                        for i, k in enumerate(report.kills) if k.passed_unanswered]
    if report.kills and not any(sum(k.committed.values()) for k in report.kills):
        report.problems.append("nothing was committed before any kill: the commit invariant was not exercised")
    if report.unanswered_at_end:
        report.problems.append(f"{report.unanswered_at_end} records never answered")
    if report.duplicates_before_first_kill:
        report.problems.append(f"{report.duplicates_before_first_kill} duplicates before any kill")
    report.problems += [f"disagreement: {d}" for d in report.disagreements[:20]]
    report.problems += [f"answer from elsewhere: {f}" for f in ledger.foreign[:10]]


def _since(at: float | None, start: float) -> float | None:
    return None if at is None else at - start
