"""Worker throughput on the local stack, as ratios against a baseline run in the same process.

Runs (each on fresh topics, the same events, the same lite guard instance):
  baseline      max_batch=1, no cache: one guard call per event
  batched       max_batch=16: micro-batching
  batched+cache max_batch=16, Redis (or in-process) cache, half the events repeat earlier content

Writes bench/out/throughput.json and bench/out/throughput.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from schemas.events import ChatEvent
from topics.admin import create_topics
from topics.io import produce_events
from topics.local_broker import LocalBroker
from topics.registry import TopicNames, topic_specs
from workers.cache import NoCache, ResultCache
from workers.demo import choose_cache
from workers.demo_data import SAMPLES
from workers.guard.lite import LiteGuard
from workers.logs import configure_logging
from workers.metrics import WorkerMetrics
from workers.settings import (
    BatchSettings,
    CacheSettings,
    GuardSettings,
    KafkaSettings,
    ObservabilitySettings,
    WorkerSettings,
)
from workers.worker import Worker

OUT = Path(__file__).resolve().parent / "out"


@dataclass(frozen=True)
class Result:
    name: str
    events: int
    seconds: float
    cache_hits: int
    shared: int
    batches: int

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def make_events(count: int, repeat_share: float) -> list[ChatEvent]:
    texts = [s.text for s in SAMPLES if s.text]
    unique = int(count * (1 - repeat_share))
    out = []
    for i in range(count):
        n = i if i < unique else i % max(unique, 1)
        out.append(ChatEvent(event_id=uuid.uuid4().hex, conversation_id=f"c{i % 31}",
                             text=f"{texts[n % len(texts)]} (message {n})"))
    return out


async def run_once(name: str, broker: LocalBroker, guard: LiteGuard, events: list[ChatEvent], max_batch: int,
                   cache: ResultCache, progress: Progress) -> Result:
    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    settings = WorkerSettings(
        kafka=KafkaSettings(bootstrap_servers=broker.bootstrap_servers, topic_prefix=prefix, group_id=prefix,
                            session_timeout_ms=6000),
        batch=BatchSettings(max_batch=max_batch, max_wait_ms=20, max_batches_in_flight=2),
        cache=CacheSettings(key_prefix=prefix),
        observability=ObservabilitySettings(health_enabled=False),
    )
    await create_topics(broker.bootstrap_servers, topic_specs(TopicNames(prefix), partitions=4))
    await produce_events(broker.bootstrap_servers, f"{prefix}chat.events", events)
    done = asyncio.Event()
    answered: set[str] = set()
    task_id = progress.add_task(name, total=len(events))
    metrics = WorkerMetrics()

    def on_verdict(verdict: object) -> None:
        answered.add(verdict.event_id)  # type: ignore[attr-defined]
        progress.update(task_id, completed=len(answered))
        if len(answered) == len(events):
            done.set()

    worker = Worker(settings, backend=guard, cache=cache, metrics=metrics, on_verdict=on_verdict)
    runner = asyncio.create_task(worker.run())
    while not worker.ready:
        await asyncio.sleep(0.01)
    started = time.monotonic()  # the clock starts once the worker is up: group join is not throughput
    await done.wait()
    seconds = time.monotonic() - started
    worker.stop()
    await runner
    value = metrics.registry.get_sample_value
    return Result(name, len(events), seconds, int(value("guardstream_cache_hits_total") or 0),
                  int(value("guardstream_singleflight_joins_total") or 0), int(value("guardstream_batch_size_count") or 0))


async def main(count: int) -> list[Result]:
    configure_logging("console", "warning")
    console = Console(width=max(Console().width, 130))
    guard = LiteGuard.from_settings(GuardSettings())
    await guard.moderate([])  # load everything before the clock runs
    plain = make_events(count, 0.0)
    repeating = make_events(count, 0.5)
    with LocalBroker() as broker, Progress(console=console) as progress:
        cache = await choose_cache(CacheSettings(), WorkerMetrics())
        results = [
            await run_once("baseline (max_batch=1)", broker, guard, plain, 1, NoCache(), progress),
            await run_once("batched (max_batch=16)", broker, guard, plain, 16, NoCache(), progress),
            await run_once("batched + cache, 50% repeats", broker, guard, repeating, 16, cache, progress),
        ]
        await cache.close()
    report(console, results, cache.description)
    return results


def report(console: Console, results: list[Result], cache: str) -> None:
    base = results[0].rate
    table = Table(title=f"worker throughput, lite guard, local Tansu broker (cache: {cache})")
    for column in ("run", "events", "seconds", "events/s", "× baseline", "guard batches", "cache hits", "shared"):
        table.add_column(column)
    for r in results:
        table.add_row(r.name, str(r.events), f"{r.seconds:.2f}", f"{r.rate:.1f}", f"{r.rate / base:.2f}",
                      str(r.batches), str(r.cache_hits), str(r.shared))
    console.print(table)
    OUT.mkdir(exist_ok=True)
    rows = [{**asdict(r), "events_per_s": r.rate, "ratio": r.rate / base} for r in results]
    (OUT / "throughput.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot(results, base, OUT / "throughput.png")
    console.print(f"wrote {OUT / 'throughput.json'} and {OUT / 'throughput.png'}")


def plot(results: list[Result], base: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    bars = ax.barh([r.name for r in results], [r.rate for r in results], color=["#999", "#3a7", "#37a"])
    for bar, r in zip(bars, results, strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {r.rate:.0f}/s ({r.rate / base:.1f}×)",
                va="center")
    ax.set_xlabel("events per second (higher is better)")
    ax.invert_yaxis()
    ax.set_xlim(0, max(r.rate for r in results) * 1.35)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=800)
    asyncio.run(main(parser.parse_args().events))
