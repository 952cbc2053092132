"""The pipeline's throughput and latency on the local broker, as ratios measured in one run.

Runs, each on fresh topics of one local broker, the same events, in this process:
  raw loop          aiokafka alone: consume, produce the same record (acks=all), commit; the ceiling, with
                    the producer's usual settings (as the issue measured it) and with the worker's own
  zero-cost         the worker with a backend that answers at once, no cache: the pipeline's own cost
  simulated         the worker with a simulated accelerator (a + b·n ms per batch, one batch at a time),
                    no cache, against the ideal max_batch / (a + b·max_batch)
  simulated+cache   the same with half the events repeating earlier content and the Redis cache on
  low load          the simulated device at `--low-load` of the simulated run's rate: publish→verdict
                    p50/p99, and what the pipeline adds to the device's own time
  lite guard        the worker with the lite guard on short texts (for sizing; no target)

The raw loop and the zero-cost worker are short, so they take `--burst-events` and run `--rounds` times,
alternating, and the median round of each is reported.

Fairness: every backlog run reports, per partition, the p50 and p99 of the time from the start of the
backlog to each verdict (all events are published before the worker starts); the worst partition's p99
over the best's is the fairness ratio.

Prints a table, writes bench/out/throughput.json and bench/out/throughput.png (ratios, the device's
timeline against the batches, per-partition latency), and with --profile a cProfile of the zero-cost run.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.partitioner import murmur2
from rich.console import Console
from rich.progress import Progress, TaskID
from rich.table import Table

from bench.simulated import SimulatedAccelerator, Span
from runtime.logs import configure_logging
from runtime.settings import ObservabilitySettings
from schemas.events import ChatEvent, Verdict
from topics.admin import create_topics
from topics.io import produce_events
from topics.local_broker import LocalBroker
from topics.registry import TopicNames, topic_specs
from topics.settings import LOCAL_BROKER_FETCH_MAX_WAIT_MS, KafkaSettings
from workers.cache import NoCache, RedisCache, ResultCache
from workers.demo_data import SAMPLES
from workers.guard.base import GuardBackend
from workers.metrics import WorkerMetrics
from workers.settings import BatchSettings, CacheSettings, GuardSettings, WorkerSettings
from workers.worker import Worker

OUT = Path(__file__).resolve().parent / "out"


@dataclass(frozen=True)
class Options:
    events: int
    burst_events: int
    partitions: int
    fixed_ms: float
    per_item_ms: float
    device_on_loop: bool
    max_batch: int
    max_wait_ms: int
    batches_in_flight: int
    low_load: float
    low_load_events: int
    lite_events: int
    rounds: int
    profile: bool

    def batch(self) -> BatchSettings:
        return BatchSettings(max_batch=self.max_batch, max_wait_ms=self.max_wait_ms,
                             max_batches_in_flight=self.batches_in_flight)


@dataclass
class Run:
    name: str
    events: int
    seconds: float
    device_items: int | None = None
    device_busy: float | None = None  # share of the run's wall time the device worked
    batches: int = 0
    cache_hits: int = 0
    peak_in_flight: int = 0
    rss_growth_mb: float = 0.0
    partitions: dict[int, dict[str, float]] = field(default_factory=dict)  # p50/p99 seconds since backlog start
    latency_ms: dict[str, float] = field(default_factory=dict)  # low load only

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def fairness(self) -> float | None:
        """The worst partition's p99 over the best's (1.0: every partition drains at the same pace)."""
        p99 = [p["p99_s"] for p in self.partitions.values()]
        return max(p99) / min(p99) if len(p99) > 1 and min(p99) > 0 else None


def make_events(count: int, repeat_share: float, tag: str, partitions: int = 4) -> list[ChatEvent]:
    """Short chat texts over 16 conversations per partition, the same number of events on each partition
    (keys are chosen by the producer's own partitioner); with `repeat_share`, that share of the events
    repeats the content of an earlier one (after the first half, each event repeats one of the first half)."""
    texts = [s.text for s in SAMPLES if s.text]
    unique = max(1, int(count * (1 - repeat_share)))
    conversations = balanced_keys(partitions, 16)
    out = []
    for i in range(count):
        n = i if i < unique else i % unique
        on = conversations[i % partitions]
        out.append(ChatEvent(event_id=f"{tag}-{i}", conversation_id=on[(i // partitions) % len(on)],
                             text=f"{texts[n % len(texts)]} (message {n})"))
    return out


def balanced_keys(partitions: int, per_partition: int) -> list[list[str]]:
    """Conversation ids that aiokafka's default partitioner puts on each partition, `per_partition` each."""
    found: list[list[str]] = [[] for _ in range(partitions)]
    n = 0
    while min(len(keys) for keys in found) < per_partition:
        key = f"c{n}"
        keys = found[(murmur2(key.encode()) & 0x7FFFFFFF) % partitions]
        if len(keys) < per_partition:
            keys.append(key)
        n += 1
    return found


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Answers:
    """Verdicts as the worker hands them over: when, and from which partition."""

    def __init__(self, expected: int, progress: Progress, task: TaskID) -> None:
        self.expected = expected
        self.at: dict[str, tuple[float, int]] = {}
        self.first: float | None = None
        self.done = asyncio.Event()
        self.progress = progress
        self.task = task

    def add(self, verdict: Verdict) -> None:
        now = time.monotonic()
        self.first = self.first or now
        partition = verdict.source.partition if verdict.source else -1
        self.at.setdefault(verdict.event_id, (now, partition))
        answered = len(self.at)
        if answered % 100 == 0 or answered >= self.expected:  # the hook runs on the worker's loop: keep it cheap
            self.progress.update(self.task, completed=answered)
        if answered >= self.expected:
            self.done.set()

    def by_partition(self, since: float) -> dict[int, dict[str, float]]:
        seen: dict[int, list[float]] = {}
        for at, partition in self.at.values():
            seen.setdefault(partition, []).append(at - since)
        return {p: {"events": len(v), "p50_s": quantile(v, 0.5), "p99_s": quantile(v, 0.99)}
                for p, v in sorted(seen.items())}


class Sampler:
    """Peak events in flight and the process's resident memory while a worker runs."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.process = psutil.Process()
        self.rss_start = self.process.memory_info().rss
        self.rss_peak = self.rss_start
        self.peak_in_flight = 0

    async def run(self) -> None:
        while True:
            self.peak_in_flight = max(self.peak_in_flight, self.worker.tracker.unanswered_count())
            self.rss_peak = max(self.rss_peak, self.process.memory_info().rss)
            await asyncio.sleep(0.01)


class Bench:
    def __init__(self, broker: LocalBroker, options: Options, progress: Progress) -> None:
        self.broker = broker
        self.options = options
        self.progress = progress

    def settings(self, prefix: str) -> WorkerSettings:
        return WorkerSettings(
            kafka=KafkaSettings(bootstrap_servers=self.broker.bootstrap_servers, topic_prefix=prefix, group_id=prefix,
                                session_timeout_ms=6000, fetch_max_wait_ms=LOCAL_BROKER_FETCH_MAX_WAIT_MS),
            batch=self.options.batch(),
            cache=CacheSettings(key_prefix=prefix),
            observability=ObservabilitySettings(health_enabled=False),
        )

    async def topics(self) -> tuple[str, TopicNames]:
        prefix = f"bench-{uuid.uuid4().hex[:8]}."
        names = TopicNames(prefix)
        await create_topics(self.broker.bootstrap_servers, topic_specs(names, partitions=self.options.partitions))
        return prefix, names

    async def raw_loop(self, events: list[ChatEvent], tuned: bool = False) -> Run:
        """What aiokafka alone forwards with the worker's poll size, acks and commits: with the producer's
        usual settings (linger 5 ms, 16 KB batches: the loop the issue measured), or `tuned` with the
        worker's own producer settings (linger 0, 256 KB batches), the like-for-like ceiling."""
        prefix, names = await self.topics()
        await produce_events(self.broker.bootstrap_servers, names.events, events)
        servers = self.broker.bootstrap_servers
        consumer = AIOKafkaConsumer(names.events, bootstrap_servers=servers, group_id=prefix, enable_auto_commit=False,
                                    auto_offset_reset="earliest", session_timeout_ms=6000)
        kafka = KafkaSettings()
        producer = (AIOKafkaProducer(bootstrap_servers=servers, acks="all", linger_ms=kafka.linger_ms,
                                     max_batch_size=kafka.produce_batch_bytes) if tuned
                    else AIOKafkaProducer(bootstrap_servers=servers, acks="all", linger_ms=5))
        await consumer.start()
        await producer.start()
        task = self.progress.add_task("raw loop" + (", tuned" if tuned else ""), total=len(events))
        forwarded, first = 0, None
        try:
            while forwarded < len(events):
                polled = await consumer.getmany(timeout_ms=200, max_records=KafkaSettings().max_poll_records)
                records = [r for batch in polled.values() for r in batch]
                if not records:
                    continue
                first = first or time.monotonic()
                sent = [await producer.send(names.verdicts, r.value, key=r.key) for r in records]
                await asyncio.gather(*sent)
                await consumer.commit()
                forwarded += len(records)
                self.progress.update(task, completed=forwarded)
            assert first is not None
            return Run("raw aiokafka loop" + (", worker's producer settings" if tuned else ""), forwarded,
                       time.monotonic() - first)
        finally:
            await producer.stop()
            await consumer.stop()

    async def worker_run(self, name: str, backend: GuardBackend, cache: ResultCache, events: list[ChatEvent],
                         wrap: Callable[[Awaitable[None]], Awaitable[None]] | None = None) -> Run:
        """A backlog of `events`, published before the worker starts, answered by one worker."""
        prefix, names = await self.topics()
        await produce_events(self.broker.bootstrap_servers, names.events, events)
        metrics = WorkerMetrics()
        answers = Answers(len(events), self.progress, self.progress.add_task(name, total=len(events)))
        worker = Worker(self.settings(prefix), backend=backend, cache=cache, metrics=metrics, on_verdict=answers.add)
        sampler = Sampler(worker)
        sampling = asyncio.create_task(sampler.run())
        runner = asyncio.create_task(worker.run())
        finished = answers.done.wait()
        await (wrap(finished) if wrap else finished)
        ended = time.monotonic()
        worker.stop()
        await runner
        sampling.cancel()
        assert answers.first is not None
        value = metrics.registry.get_sample_value
        run = Run(name, len(events), ended - answers.first, batches=int(value("guardstream_batch_size_count") or 0),
                  cache_hits=int(value("guardstream_cache_hits_total") or 0), peak_in_flight=sampler.peak_in_flight,
                  rss_growth_mb=(sampler.rss_peak - sampler.rss_start) / 2**20,
                  partitions=answers.by_partition(answers.first))
        if isinstance(backend, SimulatedAccelerator):
            run.device_items = backend.items
            run.device_busy = backend.busy_seconds(answers.first, ended) / run.seconds
        return run

    async def low_load(self, backend: SimulatedAccelerator, rate: float) -> Run:
        """Events published one by one at `rate`/s to a worker that is already answering."""
        prefix, names = await self.topics()
        count = self.options.low_load_events
        events = make_events(count + 1, 0.0, f"low-{prefix}", self.options.partitions)
        answers = Answers(count + 1, self.progress, self.progress.add_task(f"low load ({rate:.0f}/s)", total=count + 1))
        worker = Worker(self.settings(prefix), backend=backend, cache=NoCache(), on_verdict=answers.add)
        runner = asyncio.create_task(worker.run())
        producer = AIOKafkaProducer(bootstrap_servers=self.broker.bootstrap_servers, acks="all", linger_ms=0)
        await producer.start()
        published: dict[str, float] = {}
        try:
            await producer.send_and_wait(names.events, events[0].model_dump_json().encode())  # the group joins
            while events[0].event_id not in answers.at:
                await asyncio.sleep(0.01)
            start = time.monotonic()
            for i, event in enumerate(events[1:]):
                await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
                value, key = event.model_dump_json().encode(), event.conversation_id.encode()
                published[event.event_id] = time.monotonic()
                await producer.send(names.events, value, key=key)
            await answers.done.wait()
        finally:
            await producer.stop()
            worker.stop()
            await runner
        latencies = [(answers.at[e][0] - t) * 1000 for e, t in published.items()]
        alone_ms = backend.batch_seconds(1) * 1000
        p50, p99 = quantile(latencies, 0.5), quantile(latencies, 0.99)
        return Run(f"low load, {rate:.0f} events/s", count, count / rate, latency_ms={
            "p50": p50, "p99": p99, "device_alone": alone_ms, "added_p50": p50 - alone_ms, "added_p99": p99 - alone_ms})


def median_run(runs: list[Run]) -> Run:
    """The round with the median rate (its own figures kept together)."""
    return sorted(runs, key=lambda r: r.rate)[len(runs) // 2]


async def profiled(awaitable: Awaitable[None], path: Path) -> None:
    """Run `awaitable` under cProfile (the event loop's thread: everything the worker does on it)."""
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        await awaitable
    finally:
        profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text).strip_dirs()  # file names only: no machine's paths
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(30)
    path.write_text(text.getvalue())


async def main(options: Options) -> dict[str, Any]:
    configure_logging("console", "warning")
    console = Console(width=max(Console().width, 140))
    OUT.mkdir(exist_ok=True)
    burst = make_events(options.burst_events, 0.0, "burst", options.partitions)
    plain = make_events(options.events, 0.0, "plain", options.partitions)
    repeating = make_events(options.events, 0.5, "repeat", options.partitions)
    device = SimulatedAccelerator(options.fixed_ms, options.per_item_ms, options.device_on_loop)
    ideal = device.ideal_rate(options.max_batch)
    cache = RedisCache(CacheSettings(), WorkerMetrics())
    if not await cache.ping():
        raise SystemExit("the benchmark's cache runs need Redis at 127.0.0.1:6379")
    profile_path = OUT / "profile-zero-cost.txt"
    with LocalBroker() as broker, Progress(console=console, transient=True) as progress:
        bench = Bench(broker, options, progress)
        raws, tuned_raws, zeros = [], [], []
        for _ in range(options.rounds):  # alternating, so drift in the machine's speed hits all three
            raws.append(await bench.raw_loop(burst))
            tuned_raws.append(await bench.raw_loop(burst, tuned=True))
            zeros.append(await bench.worker_run("zero-cost backend", SimulatedAccelerator(), NoCache(), burst))
        raw, tuned_raw, zero = median_run(raws), median_run(tuned_raws), median_run(zeros)
        simulated = await bench.worker_run("simulated device", device, NoCache(), plain)
        timeline = device.spans[:]
        cached_device = SimulatedAccelerator(options.fixed_ms, options.per_item_ms, options.device_on_loop)
        cached = await bench.worker_run("simulated device + cache, 50% repeats", cached_device, cache, repeating)
        low = await bench.low_load(SimulatedAccelerator(options.fixed_ms, options.per_item_ms, options.device_on_loop),
                                   simulated.rate * options.low_load)
        lite = None
        if options.lite_events:
            from workers.guard.lite import LiteGuard

            guard = LiteGuard.from_settings(GuardSettings())
            guard.moderate_sync([])
            lite = await bench.worker_run("lite guard, short texts", guard, NoCache(),
                                          make_events(options.lite_events, 0.0, "lite", options.partitions))
            await guard.close()
        if options.profile:  # a run of its own: the profiler slows what it watches
            await bench.worker_run("zero-cost backend, profiled", SimulatedAccelerator(), NoCache(), burst,
                                   lambda done: profiled(done, profile_path))
    await cache.close()
    result = summarise(options, raw, tuned_raw, zero, simulated, cached, low, lite, ideal)
    report(console, result)
    (OUT / "throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, timeline, OUT / "throughput.png")
    console.print(f"wrote {OUT / 'throughput.json'} and {OUT / 'throughput.png'}"
                  + (f", and the zero-cost run's profile to {profile_path}" if options.profile else ""))
    return result


def summarise(options: Options, raw: Run, tuned_raw: Run, zero: Run, simulated: Run, cached: Run, low: Run,
              lite: Run | None, ideal: float) -> dict[str, Any]:
    ratios = {
        "zero_cost_vs_raw_loop": {"value": zero.rate / raw.rate, "target": 0.5, "higher_is_better": True},
        "zero_cost_vs_tuned_raw_loop": {"value": zero.rate / tuned_raw.rate, "target": 0.5, "higher_is_better": True},
        "simulated_vs_ideal": {"value": simulated.rate / ideal, "target": 0.95, "higher_is_better": True},
        "cache_50pct_vs_no_cache": {"value": cached.rate / simulated.rate, "target": 1.9, "higher_is_better": True},
        "device_items_with_cache": {"value": (cached.device_items or 0) / cached.events, "target": 0.5,
                                    "higher_is_better": False},
        "low_load_added_p50_ms": {"value": low.latency_ms["added_p50"], "target": options.max_wait_ms + 5,
                                  "higher_is_better": False},
        "partition_fairness_p99": {"value": max(r.fairness or 1.0 for r in (zero, simulated, cached, lite) if r),
                                   "target": 1.5,
                                   "higher_is_better": False},
    }
    for ratio in ratios.values():
        ratio["met"] = (ratio["value"] >= ratio["target"]) == ratio["higher_is_better"] or ratio["value"] == ratio["target"]
    runs = [raw, tuned_raw, zero, simulated, cached, low, *([lite] if lite else [])]
    return {"options": asdict(options), "ideal_events_per_s": ideal, "ratios": ratios,
            "runs": [{**asdict(r), "events_per_s": r.rate, "fairness": r.fairness} for r in runs]}


def report(console: Console, result: dict[str, Any]) -> None:
    o = result["options"]
    table = Table(title=f"pipeline throughput, local broker, {o['partitions']} partitions; simulated device "
                        f"{o['fixed_ms']:g} ms + {o['per_item_ms']:g} ms/item, max_batch {o['max_batch']}, "
                        f"max_wait {o['max_wait_ms']} ms, {o['batches_in_flight']} batches in flight")
    for column in ("run", "events", "seconds", "events/s", "device busy", "device items", "batches",
                   "peak in flight", "worst/best partition p99"):
        table.add_column(column, justify="right" if column != "run" else "left")
    for r in result["runs"]:
        if r["latency_ms"]:
            lat = r["latency_ms"]
            table.add_row(r["name"], str(r["events"]), f"{r['seconds']:.2f}",
                          f"p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms", f"alone {lat['device_alone']:.0f} ms",
                          "", "", "", "")
            continue
        table.add_row(r["name"], str(r["events"]), f"{r['seconds']:.2f}", f"{r['events_per_s']:.0f}",
                      "" if r["device_busy"] is None else f"{r['device_busy']:.0%}",
                      "" if r["device_items"] is None else str(r["device_items"]), str(r["batches"] or ""),
                      str(r["peak_in_flight"] or ""), "" if r["fairness"] is None else f"{r['fairness']:.2f}")
    console.print(table)
    ratios = Table(title=f"ratios (ideal for the simulated device: {result['ideal_events_per_s']:.0f} events/s)")
    for column in ("measure", "value", "target", "met"):
        ratios.add_column(column)
    for name, r in result["ratios"].items():
        sign = "≥" if r["higher_is_better"] else "≤"
        ratios.add_row(name, f"{r['value']:.3f}", f"{sign} {r['target']:g}", "yes" if r["met"] else "NO")
    console.print(ratios)


def plot(result: dict[str, Any], timeline: list[Span], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, lanes, parts) = plt.subplots(3, 1, figsize=(9, 9), gridspec_kw={"height_ratios": [1.2, 0.6, 1]})
    names = list(result["ratios"])
    scores = [_score(r) for r in result["ratios"].values()]
    colours = ["#3a7" if r["met"] else "#c44" for r in result["ratios"].values()]
    bars.barh(names, scores, color=colours)
    bars.axvline(1.0, color="#333", linestyle="--", linewidth=1)
    for i, r in enumerate(result["ratios"].values()):
        bars.text(scores[i], i, f" {r['value']:.2f} ({'≥' if r['higher_is_better'] else '≤'} {r['target']:g})",
                  va="center")
    bars.set_xlabel("share of target (≥ 1 meets it)")
    bars.invert_yaxis()
    bars.set_xlim(0, max(scores + [1.0]) * 1.4)
    if timeline:
        start = timeline[len(timeline) // 2].start
        window = [s for s in timeline if start <= s.start < start + 1.0]
        lanes.broken_barh([((s.start - start) * 1000, (s.end - s.start) * 1000) for s in window], (0, 1),
                          color="#37a")
        lanes.set_title(f"simulated device busy, 1 s from the middle of the backlog ({len(window)} batches)")
        lanes.set_xlabel("ms")
        lanes.set_yticks([])
        lanes.set_xlim(0, 1000)
    runs = [r for r in result["runs"] if r["partitions"]]
    width = 0.8 / max(1, len(runs))
    for i, r in enumerate(runs):
        ps = sorted(r["partitions"], key=int)
        parts.bar([int(p) + i * width for p in ps], [r["partitions"][p]["p99_s"] for p in ps], width, label=r["name"])
    if runs:
        ps = sorted(runs[0]["partitions"], key=int)
        parts.set_xticks([int(p) + width * (len(runs) - 1) / 2 for p in ps], ps)
    parts.set_xlabel("partition")
    parts.set_ylabel("p99 s since backlog start")
    parts.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _score(ratio: dict[str, Any]) -> float:
    value, target = ratio["value"], ratio["target"]
    if ratio["higher_is_better"]:
        return float(value / target)
    return float(target / value) if value > 0 else 2.0


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5000, help="events per backlog run of the simulated device")
    parser.add_argument("--burst-events", type=int, default=20000, help="events per raw-loop and zero-cost run")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--fixed-ms", type=float, default=30.0, help="simulated device: cost of a batch (a)")
    parser.add_argument("--per-item-ms", type=float, default=2.0, help="simulated device: cost per item (b)")
    parser.add_argument("--device-on-loop", action="store_true",
                        help="simulated device: sleep on the event loop under a lock, not on a thread of its own")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=int, default=20)
    parser.add_argument("--batches-in-flight", type=int, default=2)
    parser.add_argument("--low-load", type=float, default=0.1, help="share of the simulated rate for the latency run")
    parser.add_argument("--low-load-events", type=int, default=300)
    parser.add_argument("--lite-events", type=int, default=1000, help="0 skips the lite guard run")
    parser.add_argument("--rounds", type=int, default=3, help="raw loop and zero-cost runs, alternating; medians")
    parser.add_argument("--profile", action="store_true", help="cProfile one more zero-cost run (not measured)")
    args = parser.parse_args(argv)
    return Options(**{k: v for k, v in vars(args).items()})


if __name__ == "__main__":
    asyncio.run(main(parse_options()))
