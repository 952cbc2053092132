"""A bounded soak of the worker, and the kill run at full scale (`make soak`).

Phases, each on fresh topics of one local broker, with a Redis server of its own:
  worker        100,000 records through one worker process (`bench.soak_worker`, configured by the environment
                alone) with the zero-cost backend: the pipeline alone. A fifth of the records are bad (not JSON,
                not UTF-8, not a ChatEvent, text over the limit) and a third of the rest repeat an earlier
                event's content. The records are published while the worker runs, as fast as the producer goes,
                so a backlog builds and backpressure holds the worker at its bound.
  lite          the same mix, shorter, with the lite guard.
  kill          bench/kill_at_scale.py: SIGKILL mid-stream again and again, restart each time.

For the worker phases: every record answered (a verdict, or a dead letter at its coordinates), verdicts that
must agree agree (one event's, one content's), the worker's resident memory when ready, at 10%, 50% and 100%
of the records answered, flat from 10% to the end within `--rss-bound-mb`, and the events in flight never
above MAX_IN_FLIGHT_EVENTS plus one poll (MAX_POLL_RECORDS), read from the worker's own high-water gauge.

Writes soak.json, soak.md and soak.png (memory and events in flight over records answered) to `--out`
(bench/results by default) and the workers' logs to bench/out/. Exits 1 if a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from bench.kill_at_scale import KillOptions, run_kills
from bench.soak_services import ServiceRun, soak_console, soak_trainer
from bench.soak_stream import (
    Answer,
    Ledger,
    Place,
    Record,
    WorkerProcess,
    publish,
    redis_server,
    settings_env,
    stream_mix,
)
from bench.soak_worker import IN_FLIGHT_PEAK, ZERO_COST
from topics.admin import create_topics
from topics.local_broker import LocalBroker
from topics.registry import TopicNames, topic_specs
from topics.settings import LOCAL_BROKER_FETCH_MAX_WAIT_MS, KafkaSettings
from workers.settings import BatchSettings, CacheSettings, LimitSettings, WorkerSettings

RESULTS = Path(__file__).resolve().parent / "results"
LOGS = Path(__file__).resolve().parent / "out"
MB = 1024 * 1024
IN_FLIGHT = "guardstream_in_flight_events"


@dataclass(frozen=True)
class SoakOptions:
    events: int = 100_000
    backend: str = ZERO_COST
    bad_share: float = 0.2
    repeat_share: float = 1 / 3
    seed: int = 5
    partitions: int = 4
    rss_bound_mb: float = 32.0  # resident memory may grow this much from 50% of the records answered to the end
    sample_s: float = 0.25
    timeout_s: float = 600.0


@dataclass
class Sample:
    at: float  # seconds since the worker was ready
    published: int
    answered: int
    rss_mb: float
    in_flight: float
    in_flight_peak: float


@dataclass
class SoakRun:
    name: str
    options: dict[str, Any]
    records: int = 0
    seconds: float = 0.0  # from the first record published to the last answered
    records_per_s: float = 0.0
    rss_mb: dict[str, float] = field(default_factory=dict)  # ready, start (10%), middle (50%), end (100%)
    in_flight_peak: float = 0.0
    in_flight_bound: int = 0
    verdicts: int = 0
    dead_letters: int = 0
    cache_hits: int = 0
    duplicates: int = 0
    exit_status: int | None = None
    samples: list[Sample] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("samples", "options")}


def soak_settings(bootstrap_servers: str, redis_url: str, prefix: str) -> WorkerSettings:
    """The worker's settings for a soak: defaults, except the local broker's fetch wait and a short session."""
    return WorkerSettings(
        kafka=KafkaSettings(bootstrap_servers=bootstrap_servers, topic_prefix=prefix, group_id=f"g-{prefix}",
                            session_timeout_ms=6000, heartbeat_interval_ms=500,
                            fetch_max_wait_ms=LOCAL_BROKER_FETCH_MAX_WAIT_MS),
        cache=CacheSettings(redis_url=redis_url, key_prefix=f"soak-{prefix}"),
        limits=LimitSettings(max_text_chars=2000),  # the over-limit records stay small
        batch=BatchSettings(),
    )


async def soak_worker(settings: WorkerSettings, options: SoakOptions, log: IO[bytes] | None = None,
                      progress: Progress | None = None, answers: list[Answer] | None = None) -> SoakRun:
    """One worker process through `options.events` records published while it runs (the topics of `settings`
    must exist, empty); `answers` gets every answer read."""
    topics = TopicNames(settings.kafka.topic_prefix)
    servers = settings.kafka.bootstrap_servers
    records = stream_mix(options.events, bad_share=options.bad_share, repeat_share=options.repeat_share,
                         seed=options.seed, tag=f"soak{options.seed}", over_limit_chars=settings.limits.max_text_chars)
    run = SoakRun(name=options.backend, options=asdict(options), records=len(records),
                  in_flight_bound=settings.batch.max_in_flight_events + settings.kafka.max_poll_records)
    ledger = Ledger(servers, topics, options.partitions)
    await ledger.start()
    env = {**settings_env(settings), "GUARDSTREAM_GUARD__BACKEND": options.backend,
           "GUARDSTREAM_OBSERVABILITY__LOG_LEVEL": "error"}
    process = WorkerProcess(env, log).start()
    placed: dict[Place, Record] = {}
    task = progress.add_task(f"soak {options.backend}", total=len(records)) if progress else None
    try:
        await process.wait_health(options.timeout_s)
        ready = time.monotonic()
        run.rss_mb["ready"] = process.rss() / MB
        sampler = asyncio.create_task(_sample(process, ledger, placed, run, ready, options.sample_s, progress, task))
        began = time.monotonic()
        await publish(servers, topics.events, records, placed)
        await ledger.wait_for(lambda: not ledger.unanswered(placed), options.timeout_s, "every record answered",
                              process.alive)
        run.seconds = max(ledger.first.values()) - began
        await _take_sample(process, ledger, placed, run, ready)
        if progress is not None:
            progress.update(task, completed=ledger.answered)
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
        run.exit_status = process.stop()
        await ledger.quiet(1.5)
    finally:
        if process.alive():
            process.kill()
        await ledger.stop()
    _judge(run, ledger, placed, options)
    if answers is not None:
        answers.extend(ledger.answers)
    return run


async def _sample(process: WorkerProcess, ledger: Ledger, placed: dict[Place, Record], run: SoakRun, ready: float,
                  every_s: float, progress: Progress | None, task: Any) -> None:
    while True:
        await _take_sample(process, ledger, placed, run, ready)
        if progress is not None:
            progress.update(task, completed=ledger.answered)
        await asyncio.sleep(every_s)


async def _take_sample(process: WorkerProcess, ledger: Ledger, placed: dict[Place, Record], run: SoakRun,
                       ready: float) -> None:
    answered, rss = ledger.answered, process.rss() / MB  # read before the scrape, which yields
    metrics = await process.metrics()
    run.samples.append(Sample(time.monotonic() - ready, len(placed), answered, rss, metrics.get(IN_FLIGHT, 0.0),
                              metrics.get(IN_FLIGHT_PEAK, 0.0)))


def _judge(run: SoakRun, ledger: Ledger, placed: dict[Place, Record], options: SoakOptions) -> None:
    run.records_per_s = run.records / run.seconds if run.seconds else 0.0
    run.verdicts = sum(1 for a in ledger.answers if a.kind == "verdict")
    run.dead_letters = len(ledger.answers) - run.verdicts
    run.cache_hits = sum(1 for a in ledger.answers if a.cache_hit)
    run.duplicates = sum(ledger.duplicates_between(0, float("inf")).values())
    run.in_flight_peak = max((s.in_flight_peak for s in run.samples), default=0.0)
    for name, share in (("start", 0.1), ("middle", 0.5), ("end", 1.0)):
        at = next((s for s in run.samples if s.answered >= share * run.records), None)
        if at is not None:
            run.rss_mb[name] = at.rss_mb
    unanswered = ledger.unanswered(placed)
    if unanswered:
        run.problems.append(f"{len(unanswered)} records never answered, e.g. {unanswered[:5]}")
    run.problems += [f"disagreement: {d}" for d in ledger.disagreements(placed)[:20]]
    if run.duplicates:
        run.problems.append(f"{run.duplicates} answers repeated without a crash")
    if run.in_flight_peak > run.in_flight_bound:
        run.problems.append(f"{run.in_flight_peak:.0f} events in flight, over the bound {run.in_flight_bound}")
    growth = run.rss_mb.get("end", 0.0) - run.rss_mb.get("middle", 0.0)
    if growth > options.rss_bound_mb:
        run.problems.append(f"resident memory grew {growth:.1f} MB in the second half, over {options.rss_bound_mb} MB")
    if run.exit_status != 0:
        run.problems.append(f"the worker exited with status {run.exit_status} on SIGTERM")


# -- the command ------------------------------------------------------------------------------------------

async def fresh_topics(broker: LocalBroker, partitions: int) -> str:
    prefix = f"soak-{uuid.uuid4().hex[:8]}."
    await create_topics(broker.bootstrap_servers, topic_specs(TopicNames(prefix), partitions=partitions))
    return prefix


async def main(args: argparse.Namespace) -> dict[str, Any]:
    console = Console(stderr=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": [], "services": [],
                              "kill": None, "machine": {"cpus": os.cpu_count(), "load_at_start": os.getloadavg()}}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
               TimeElapsedColumn())
    with (LocalBroker() as broker, redis_server() as redis_url, Progress(*columns, console=console) as progress,
          tempfile.TemporaryDirectory(prefix="guardstream-soak-") as scratch):
        for backend, events in ((ZERO_COST, args.events), ("lite", args.lite_events)):
            if events <= 0:
                continue
            prefix = await fresh_topics(broker, args.partitions)
            options = SoakOptions(events=events, backend=backend, rss_bound_mb=args.rss_bound_mb)
            answers: list[Answer] = []
            with (LOGS / f"soak-{backend}.log").open("wb") as log:
                run = await soak_worker(soak_settings(broker.bootstrap_servers, redis_url, prefix), options, log,
                                        progress, answers)
            result["runs"].append(asdict(run))
            console.print(json.dumps(run.summary()))
            if backend == ZERO_COST and args.services:
                for service in await soak_services(broker, prefix, run, answers, Path(scratch), args, progress):
                    result["services"].append(asdict(service))
                    console.print(json.dumps(service.summary()))
        if args.kill_events > 0:
            result["kill"] = await soak_kills(broker, redis_url, args, progress)
            console.print(json.dumps(result["kill"]["summary"]))
    return result


async def soak_services(broker: LocalBroker, prefix: str, run: SoakRun, answers: list[Answer], scratch: Path,
                        args: argparse.Namespace, progress: Progress) -> list[ServiceRun]:
    """The console on the worker phase's verdicts, then the trainer on labels for a share of them, published at
    that share of the worker's rate."""
    with (LOGS / "soak-console.log").open("wb") as log:
        console_run = await soak_console(broker.bootstrap_servers, prefix, run.verdicts, scratch, args.rss_bound_mb,
                                         log, progress)
    console_run.counters["worker_verdicts_per_s"] = run.verdicts / run.seconds if run.seconds else 0.0
    with (LOGS / "soak-trainer.log").open("wb") as log:
        trainer_run = await soak_trainer(broker.bootstrap_servers, prefix, answers, args.label_share,
                                         args.label_share * run.records_per_s, scratch, args.rss_bound_mb, log,
                                         progress)
    return [console_run, trainer_run]


async def soak_kills(broker: LocalBroker, redis_url: str, args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    settings = soak_settings(broker.bootstrap_servers, redis_url, await fresh_topics(broker, args.partitions))
    settings.kafka.session_timeout_ms = args.kill_session_timeout_ms
    settings.kafka.commit_interval_ms = args.kill_commit_interval_ms
    task = progress.add_task(f"kill x{args.kills}", total=args.kill_events)
    with (LOGS / "soak-kill.log").open("wb") as log:
        report = await run_kills(settings, KillOptions(events=args.kill_events, kills=args.kills), log,
                                 lambda answered: progress.update(task, completed=answered))
    progress.update(task, completed=args.kill_events)
    return report.as_json()


def write_results(result: dict[str, Any], out: Path) -> list[str]:
    """soak.json, soak.md, soak.png; the problems found."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result, indent=1, default=str))
    problems = [f"{r['name']}: {p}" for r in result["runs"] + result["services"] for p in r["problems"]]
    if result["kill"]:
        problems += [f"kill: {p}" for p in result["kill"]["problems"]]
    (out / "soak.md").write_text(markdown(result, problems))
    plot(result, out / "soak.png")
    return problems


def markdown(result: dict[str, Any], problems: list[str]) -> str:
    machine = result.get("machine", {})
    lines = ["# Soak", "", "Written by `python -m bench.soak` (`make soak`); see bench/soak.py for what each phase does. "
             f"{machine.get('cpus')} CPUs, load average at start {machine.get('load_at_start', ['?'])[0]:.2f}; the "
             "broker, Redis, the harness and the service share them.", ""]
    if result["runs"]:
        lines += ["## Worker", "", "| backend | records | records/s | verdicts | dead letters | cache hits | "
                  "RSS MB ready / 10% / 50% / end | growth 50%→end (bound) | in flight peak (bound) |",
                  "|---|---:|---:|---:|---:|---:|---|---:|---:|"]
        for r in result["runs"]:
            rss = r["rss_mb"]
            growth = rss.get("end", 0) - rss.get("middle", 0)
            lines.append(f"| {r['name']} | {r['records']:,} | {r['records_per_s']:,.0f} | {r['verdicts']:,} | "
                         f"{r['dead_letters']:,} | {r['cache_hits']:,} | "
                         + " / ".join(f"{rss.get(k, 0):.1f}" for k in ("ready", "start", "middle", "end"))
                         + f" | {growth:+.1f} ({r['options']['rss_bound_mb']:g}) | "
                         f"{r['in_flight_peak']:.0f} ({r['in_flight_bound']}) |")
        lines.append("")
    if result["services"]:
        lines += ["## Console intake and trainer label path", "",
                  "| service | items | items/s | RSS MB ready / 10% / 50% / end | growth 50%→end (bound) |",
                  "|---|---:|---:|---|---:|"]
        for r in result["services"]:
            rss = r["rss_mb"]
            lines.append(f"| {r['name']} | {r['items']:,} | {r['items_per_s']:,.0f} | "
                         + " / ".join(f"{rss.get(k, 0):.1f}" for k in ("ready", "start", "middle", "end"))
                         + f" | {rss.get('end', 0) - rss.get('middle', 0):+.1f} ({r['rss_bound_mb']:g}) |")
        lines.append("")
    kill = result["kill"]
    if kill:
        s = kill["summary"]
        lines += ["## Kills", "", f"{s['records']:,} records, {s['kills']} SIGKILLs, {s['seconds']} s in all. "
                  f"Restart to first new verdict: {_fmt(s['restart_to_first_new_verdict_s'])}; kill to first new "
                  f"verdict: {_fmt(s['kill_to_first_new_verdict_s'])}.", "",
                  "| kill | answered at kill | unanswered | committed | answered above the commit point | "
                  "duplicates after (verdicts + dead letters) | imports s | health up s | first new verdict s |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for i, k in enumerate(kill["kills"], 1):
            st = k["restart"]
            lines.append(f"| {i} | {k['answered']:,} | {k['unanswered']:,} | {sum(k['committed'].values()):,} | "
                         f"{k['exposed']:,} | {sum(k['duplicates'].values()):,} | {_num(st['imported'])} | "
                         f"{_num(st['health_up'])} | {_num(st['first_new_answer'])} |")
        lines.append("")
    lines += ["## Checks", "", *([f"- {p}" for p in problems] or ["- all passed"]), ""]
    return "\n".join(lines)


def _fmt(spread: dict[str, float] | None) -> str:
    return "n/a" if not spread else f"min {spread['min']:.2f} s, median {spread['median']:.2f} s, max {spread['max']:.2f} s"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, services = result["runs"], result["services"]
    rows = len(runs) + len(services)
    fig, axes = plt.subplots(max(1, rows), 1, figsize=(9, 3.4 * max(1, rows)), squeeze=False)
    for ax, r in zip(axes[:, 0], runs, strict=False):
        answered = [s["answered"] for s in r["samples"]]
        _rss(ax, answered, [s["rss_mb"] for s in r["samples"]], "records answered")
        right = ax.twinx()
        right.plot(answered, [s["in_flight"] for s in r["samples"]], color="#c73", linewidth=0.8)
        right.plot(answered, [s["in_flight_peak"] for s in r["samples"]], color="#c73", linestyle=":", linewidth=1)
        right.axhline(r["in_flight_bound"], color="#c44", linestyle="--", linewidth=1)
        right.text(0, r["in_flight_bound"], " bound: max_in_flight_events + max_poll_records", va="bottom", fontsize=7)
        right.set_ylabel("events in flight (sampled; dotted: peak)", color="#c73")
        right.set_ylim(0, r["in_flight_bound"] * 1.25)
        ax.set_title(f"worker, {r['name']}: {r['records']:,} records, {r['records_per_s']:,.0f}/s")
    for ax, r in zip(axes[len(runs):, 0], services, strict=False):
        _rss(ax, [s["done"] for s in r["samples"]], [s["rss_mb"] for s in r["samples"]],
             "verdicts read" if r["name"] == "console" else "labels stored")
        ax.set_title(f"{r['name']}: {r['items']:,} items, {r['items_per_s']:,.0f}/s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _rss(ax: Any, done: list[float], rss: list[float], what: str) -> None:
    ax.plot(done, rss, color="#37a")
    ax.set_xlabel(what)
    ax.set_ylabel("RSS MB", color="#37a")
    ax.set_ylim(0, max(rss, default=1) * 1.2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="records through the zero-cost worker (0 skips)")
    parser.add_argument("--lite-events", type=int, default=40_000, help="records through the lite worker (0 skips)")
    parser.add_argument("--kill-events", type=int, default=40_000, help="records of the kill run (0 skips)")
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--kill-session-timeout-ms", type=int, default=KafkaSettings().session_timeout_ms)
    parser.add_argument("--kill-commit-interval-ms", type=int, default=KafkaSettings().commit_interval_ms)
    parser.add_argument("--services", action=argparse.BooleanOptionalAction, default=True,
                        help="the console's intake and the trainer's label path after the zero-cost phase")
    parser.add_argument("--label-share", type=float, default=0.02, help="share of verdicts reviewers label")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rss-bound-mb", type=float, default=SoakOptions.rss_bound_mb)
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    outcome = asyncio.run(main(arguments))
    found = write_results(outcome, arguments.out)
    for problem in found:
        print(f"soak: {problem}", file=sys.stderr)
    sys.exit(1 if found else 0)
