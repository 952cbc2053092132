"""`guardstream demo`: the whole path on embedded defaults, with nothing to set up.

A local Tansu broker, Redis if one answers on the default URL (an in-process cache otherwise), images
drawn into a temporary folder and served through file://, the lite guard. Two waves of events: the
first is judged by the guard, the second repeats it and is answered from the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from runtime.logs import configure_logging
from runtime.settings import ObservabilitySettings
from schemas.events import ChatEvent, Verdict
from topics.admin import create_topics
from topics.io import produce_events, produce_raw
from topics.local_broker import LocalBroker
from topics.registry import TopicNames, topic_specs
from topics.settings import LOCAL_BROKER_FETCH_MAX_WAIT_MS, KafkaSettings
from workers.cache import MemoryCache, RedisCache, ResultCache
from workers.demo_data import BAD_RECORDS, Sample, make_events, outside_root_event, write_demo_images
from workers.metrics import WorkerMetrics
from workers.settings import CacheSettings, FetchSettings, WorkerSettings
from workers.worker import Worker

WAIT_S = 300.0


@dataclass
class Wave:
    name: str
    events: list[ChatEvent]
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.events) / self.seconds if self.seconds else 0.0


@dataclass
class Collected:
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, verdict: Verdict) -> None:
        self.verdicts[verdict.event_id] = verdict
        self.changed.set()


async def choose_cache(settings: CacheSettings, metrics: WorkerMetrics) -> ResultCache:
    redis = RedisCache(settings, metrics)
    if await redis.ping():
        return redis
    await redis.close()
    return MemoryCache(settings.ttl_s)


async def wait_for(collected: Collected, ids: set[str], progress: Progress, label: str) -> None:
    task = progress.add_task(label, total=len(ids))
    deadline = time.monotonic() + WAIT_S
    while not ids <= collected.verdicts.keys():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(ids - collected.verdicts.keys())} events still unanswered after {WAIT_S}s")
        collected.changed.clear()
        progress.update(task, completed=len(ids & collected.verdicts.keys()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(collected.changed.wait(), 1.0)
    progress.update(task, completed=len(ids))


@dataclass
class DemoStack:
    """What the demo runs on: a local broker, the topics, drawn images, and a worker collecting verdicts."""

    console: Console
    settings: WorkerSettings
    topics: TopicNames
    folder: Path
    images: dict[str, Path]
    run_id: str
    worker: Worker
    collected: Collected
    metrics: WorkerMetrics


@contextlib.asynccontextmanager
async def demo_stack(console: Console) -> AsyncIterator[DemoStack]:
    """Start everything the demo needs; stop the worker (drained) and the broker on exit."""
    run_id = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="guardstream-demo-") as tmp, LocalBroker() as broker:
        images = write_demo_images(Path(tmp))
        settings = WorkerSettings(
            kafka=KafkaSettings(bootstrap_servers=broker.bootstrap_servers, topic_prefix=f"demo-{run_id}.",
                                group_id=f"demo-{run_id}", session_timeout_ms=6000,
                                fetch_max_wait_ms=LOCAL_BROKER_FETCH_MAX_WAIT_MS),
            fetch=FetchSettings(file_root=Path(tmp)),
            cache=CacheSettings(key_prefix=f"guardstream-demo-{run_id}", ttl_s=3600),
            observability=ObservabilitySettings(health_port=0),
        )
        metrics = WorkerMetrics()
        cache = await choose_cache(settings.cache, metrics)
        console.print(f"[bold]broker[/] Tansu on {broker.bootstrap_servers}   [bold]cache[/] {cache.description}   "
                      f"[bold]images[/] {tmp}")
        topics = TopicNames(settings.kafka.topic_prefix)
        await create_topics(broker.bootstrap_servers, topic_specs(topics, partitions=4))
        collected = Collected()
        worker = Worker(settings, cache=cache, metrics=metrics, on_verdict=collected.add)
        with console.status("loading the lite guard (MiniLM + open_nsfw)…"):
            started = time.monotonic()
            runner = asyncio.create_task(worker.run())
            while not (worker.ready and worker.consumer.assignment()) and not runner.done():
                await asyncio.sleep(0.1)  # the group join is start-up, not throughput
            if runner.done():
                runner.result()
        console.print(f"worker ready in {time.monotonic() - started:.1f}s "
                      f"(health and metrics on http://127.0.0.1:{worker.health.port if worker.health else '-'}/metrics)")
        try:
            yield DemoStack(console, settings, topics, Path(tmp), images, run_id, worker, collected, metrics)
        finally:
            worker.stop()
            await runner


async def run_demo(count: int, show: int, console_port: int | None = None) -> None:
    """The demo; with `console_port`, then the audit console on that port until interrupted."""
    configure_logging("console", "warning")
    console = Console(width=max(Console().width, 130))
    async with demo_stack(console) as stack:
        run_id, collected = stack.run_id, stack.collected
        first = make_events(count // 2, stack.images, run_id)
        second = make_events(count - count // 2, stack.images, run_id, start=len(first))
        samples = {e.event_id: s for s, e in first + second}
        odd = outside_root_event(run_id)
        samples[odd.event_id] = Sample("bad image", odd.text, "file:///etc/hostname")
        waves = [Wave("first (guard)", [e for _, e in first] + [odd]), Wave("second (repeats)", [e for _, e in second])]
        servers = stack.settings.kafka.bootstrap_servers
        with Progress(console=console) as progress:
            await produce_raw(servers, stack.topics.events, [(b"bad", raw) for _, raw in BAD_RECORDS])
            for wave in waves:
                started = time.monotonic()
                await produce_events(servers, stack.topics.events, wave.events)
                await wait_for(collected, {e.event_id for e in wave.events}, progress, f"wave {wave.name}")
                wave.seconds = time.monotonic() - started
        print_verdicts(console, collected, samples, pick_rows(waves, show))
        print_summary(console, collected, waves, stack.metrics)
        if console_port is not None:
            from console.demo import serve_console

            await serve_console(console, stack.settings.kafka, stack.folder, stack.settings.fetch, console_port,
                                len(collected.verdicts))


def pick_rows(waves: list[Wave], show: int) -> list[str]:
    """Most rows from the first wave (judged by the guard), the rest from the second (cache hits)."""
    first, second = ([e.event_id for e in w.events] for w in waves)
    from_second = min(len(second), max(1, show // 5))
    return first[: show - from_second] + first[-1:] * (len(first) > show - from_second) + second[:from_second]


def print_verdicts(console: Console, collected: Collected, samples: dict[str, Sample], rows: list[str]) -> None:
    table = Table(title=f"verdicts ({len(rows)} of {len(collected.verdicts)})", show_lines=True)
    for column in ("event", "input", "request", "response", "cache", "reasoning"):
        table.add_column(column, overflow="fold")
    for event_id in rows:
        v = collected.verdicts[event_id]
        s = samples[event_id]
        what = f"[dim]{s.kind}[/]\n{s.text[:90]}" + (f"\n[image {s.image}]" if s.image else "")
        if v.error:
            request, response = f"[yellow]error[/]\n{v.error.code}", "-"
        else:
            request = "[red]harmful[/]" if v.request_harmful else "[green]unharmful[/]"
            response = "-" if v.response_harmful is None else ("[red]harmful[/]" if v.response_harmful else "[green]unharmful[/]")
        table.add_row(event_id.split("-", 1)[1], what, request, response, "hit" if v.cache_hit else "", v.reasoning)
    console.print(table)


def print_summary(console: Console, collected: Collected, waves: list[Wave], metrics: WorkerMetrics) -> None:
    registry = metrics.registry

    def total(name: str) -> float:
        return sum(s.value for m in registry.collect() for s in m.samples if s.name == name)

    verdicts = list(collected.verdicts.values())
    table = Table(title="summary", show_header=False)
    table.add_row("events published", str(sum(len(w.events) for w in waves) + len(BAD_RECORDS)))
    table.add_row("verdicts", f"{len(verdicts)} ({sum(v.error is None for v in verdicts)} ok, "
                  f"{sum(v.error is not None for v in verdicts)} error)")
    table.add_row("harmful requests", str(sum(bool(v.request_harmful) for v in verdicts)))
    table.add_row("dead letters", str(int(total("guardstream_dead_letters_total"))))
    table.add_row("cache hits", str(sum(v.cache_hit for v in verdicts)))
    table.add_row("shared in flight", str(int(total("guardstream_singleflight_joins_total"))))
    batches = total("guardstream_batch_size_count")
    table.add_row("guard batches", f"{int(batches)} (mean size {total('guardstream_batch_size_sum') / max(batches, 1):.1f})")
    for wave in waves:
        table.add_row(f"wave {wave.name}", f"{len(wave.events)} events in {wave.seconds:.2f}s = {wave.rate:.1f} events/s")
    console.print(table)
