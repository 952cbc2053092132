"""What the soak and the kill runs share: a stream of events with repeats and bad records mixed in, its
publication (each record's coordinates kept), a ledger of every answer on the verdict and dead-letter
topics, the group's committed offsets, a Redis server of its own, and a worker in a process of its own
(`bench.soak_worker`), configured by the environment alone, whose memory and metrics can be read.

An answer is found by the coordinates of the record it answers: a verdict's and a dead letter's `source`
name the event's partition and offset, so a record that cannot be decoded (it has no event id) is answered
as surely as an event.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import aiohttp
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from schemas.events import ChatEvent
from topics.local_broker import NotListening, free_loopback_port, wait_until_listening
from topics.registry import TopicNames
from topics.settings import LOCAL_BROKER_FETCH_MAX_WAIT_MS
from workers.demo_data import SAMPLES
from workers.settings import WorkerSettings

ROOT = Path(__file__).resolve().parent.parent
Place = tuple[int, int]  # (partition, offset) on the events topic

BAD_KINDS = ("not-json", "bad-utf8", "schema", "over-limit")


# -- the stream --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Record:
    key: bytes
    value: bytes
    kind: str  # "new", "repeat", or one of BAD_KINDS
    event_id: str | None = None  # None: a record with no event id to answer (only a dead letter)
    content: str | None = None  # what a repeat shares with the event it repeats (labels must agree)


def stream_mix(count: int, *, bad_share: float = 0.2, repeat_share: float = 1 / 3, seed: int = 0,
               tag: str = "soak", over_limit_chars: int = 2000, conversations: int = 64) -> list[Record]:
    """`count` records in a seeded random order: `bad_share` of them bad (not JSON, not UTF-8, not a
    ChatEvent, or text over `over_limit_chars`, which gets an error verdict and a dead letter), and of the
    rest, `repeat_share` repeat the text (and response) of an earlier event under an event id of their own."""
    rng = random.Random(seed)
    texts = [s for s in SAMPLES if s.text]
    records: list[Record] = []
    contents: list[tuple[str, str | None]] = []
    for i in range(count):
        key = f"c{rng.randrange(conversations)}".encode()
        if rng.random() < bad_share:
            records.append(_bad(key, BAD_KINDS[i % len(BAD_KINDS)], f"{tag}-{i}", over_limit_chars))
            continue
        if contents and rng.random() < repeat_share:
            text, response, kind = *rng.choice(contents), "repeat"
        else:
            sample = texts[len(contents) % len(texts)]
            text, response, kind = f"{sample.text} (message {len(contents)})", sample.response, "new"
            contents.append((text, response))
        event = ChatEvent(event_id=f"{tag}-{i}", conversation_id=key.decode(), tenant="soak", text=text,
                          response=response)
        records.append(Record(key, event.model_dump_json().encode(), kind, event.event_id, f"{text}\x00{response}"))
    return records


def _bad(key: bytes, kind: str, event_id: str, over_limit_chars: int) -> Record:
    if kind == "not-json":
        return Record(key, b"{this is not json " + event_id.encode(), kind)
    if kind == "bad-utf8":
        return Record(key, b'{"event_id": "\xff\xfe' + event_id.encode() + b'"}', kind)
    if kind == "schema":
        return Record(key, json.dumps({"event_id": event_id, "text": 7}).encode(), kind)
    event = ChatEvent(event_id=event_id, conversation_id=key.decode(), tenant="soak", text="x" * (over_limit_chars + 1))
    return Record(key, event.model_dump_json().encode(), kind, event_id)


async def publish(bootstrap_servers: str, topic: str, records: list[Record], placed: dict[Place, Record],
                  chunk: int = 2000, on_chunk: Callable[[int], None] | None = None) -> None:
    """Publish `records` in order, `chunk` at a time, each acknowledged; `placed` gets each one's coordinates."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5)
    await producer.start()
    try:
        for start in range(0, len(records), chunk):
            part = records[start:start + chunk]
            futures = [await producer.send(topic, r.value, key=r.key) for r in part]
            for record, future in zip(part, futures, strict=True):
                meta = await future
                placed[(meta.partition, meta.offset)] = record
            if on_chunk:
                on_chunk(len(part))
    finally:
        await producer.stop()


# -- the answers -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Answer:
    at: float  # time.monotonic() when the ledger read it
    kind: str  # "verdict" or "dead_letter"
    place: Place
    event_id: str | None
    labels: tuple[object, ...]  # (status, request_harmful, response_harmful) of a verdict; () of a dead letter
    cache_hit: bool = False
    at_record: Place = (0, 0)  # where the answer itself is, on its own topic


class Ledger:
    """Every answer on the verdict and dead-letter topics, read from the beginning as they arrive."""

    def __init__(self, bootstrap_servers: str, topics: TopicNames, partitions: int) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topics = topics
        self.partitions = partitions
        self.answers: list[Answer] = []
        self.first: dict[Place, float] = {}  # each answered place, when its first answer arrived
        self.last_arrival = time.monotonic()
        self.foreign: list[str] = []  # answers naming another topic than the events topic
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def answered(self) -> int:
        return len(self.first)

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap_servers, group_id=None,
                                          enable_auto_commit=False, fetch_max_wait_ms=LOCAL_BROKER_FETCH_MAX_WAIT_MS)
        await self._consumer.start()
        self._consumer.assign([TopicPartition(topic, p) for topic in (self.topics.verdicts, self.topics.dlq)
                               for p in range(self.partitions)])
        for tp in self._consumer.assignment():
            self._consumer.seek(tp, 0)
        self._task = asyncio.create_task(self._read(), name="ledger")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.stop()

    async def _read(self) -> None:
        while True:
            polled = await self._consumer.getmany(timeout_ms=100, max_records=5000)
            now = time.monotonic()
            for tp, batch in polled.items():
                kind = "verdict" if tp.topic == self.topics.verdicts else "dead_letter"
                for record in batch:
                    self._add(now, kind, json.loads(record.value), (record.partition, record.offset))
            if polled:
                self.last_arrival = now
                self._changed.set()

    def _add(self, now: float, kind: str, body: dict[str, object], at_record: Place) -> None:
        source = body.get("source")
        if not isinstance(source, dict) or source.get("topic") != self.topics.events:
            self.foreign.append(f"{kind} {body.get('event_id')}: source {source}")
            return
        place = (int(source["partition"]), int(source["offset"]))
        labels = (body["status"], body["request_harmful"], body["response_harmful"]) if kind == "verdict" else ()
        self.answers.append(Answer(now, kind, place, body.get("event_id"), labels,  # type: ignore[arg-type]
                                   bool(body.get("cache_hit")), at_record))
        self.first.setdefault(place, now)

    async def wait_for(self, condition: Callable[[], bool], timeout_s: float, what: str,
                       alive: Callable[[], bool] = lambda: True) -> None:
        """Return once `condition()` holds (checked on every batch of answers); fail if `alive()` stops
        holding (the worker died) or after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            if not alive():
                raise RuntimeError(f"the worker exited before {what} ({self.answered} places answered)")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"not within {timeout_s}s: {what} ({self.answered} places answered)")
            self._changed.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))

    async def quiet(self, settle_s: float) -> None:
        """Return once no answer has arrived for `settle_s` (all a dead worker got out has been read)."""
        while (left := self.last_arrival + settle_s - time.monotonic()) > 0:
            await asyncio.sleep(left)

    def unanswered(self, places: Iterator[Place] | list[Place]) -> list[Place]:
        return [p for p in places if p not in self.first]

    def duplicates_between(self, start: float, end: float) -> Counter[str]:
        """Answers that arrived in [start, end) for a place that already had an answer of that kind."""
        seen: set[tuple[str, Place]] = set()
        repeated: Counter[str] = Counter()
        for answer in self.answers:
            mark = (answer.kind, answer.place)
            if start <= answer.at < end and mark in seen:
                repeated[answer.kind] += 1
            seen.add(mark)
        return repeated

    def first_answer_after(self, since: float, new_only: bool) -> float | None:
        """When the first answer (or the first answer to a place answered for the first time) after `since` came."""
        if new_only:
            return min((at for at in self.first.values() if at >= since), default=None)
        return next((a.at for a in self.answers if a.at >= since), None)

    def disagreements(self, placed: dict[Place, Record]) -> list[str]:
        """Verdicts that should agree and do not: all of one event's (a re-answer after a crash), and all of
        one content's (a repeat, answered from the cache or judged again); and answers naming the wrong event."""
        by_event: defaultdict[str, set[tuple[object, ...]]] = defaultdict(set)
        by_content: defaultdict[str, set[tuple[object, ...]]] = defaultdict(set)
        found = []
        for answer in self.answers:
            record = placed.get(answer.place)
            named = answer.kind == "verdict" or None not in (answer.event_id, record and record.event_id)
            if record is None or (named and answer.event_id != record.event_id):
                found.append(f"{answer.kind} at {answer.place} names {answer.event_id}, the record there is "
                             f"{record.event_id if record else 'unknown'}")
                continue
            if answer.kind == "verdict" and answer.event_id is not None:
                by_event[answer.event_id].add(answer.labels)
                if record.content is not None and answer.labels[0] == "ok":
                    by_content[record.content].add(answer.labels)
        found += [f"event {e}: {sorted(map(str, labels))}" for e, labels in by_event.items() if len(labels) > 1]
        found += [f"content {c[:40]!r}: {sorted(map(str, labels))}" for c, labels in by_content.items()
                  if len(labels) > 1]
        return found


async def committed_offsets(bootstrap_servers: str, group_id: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offset of each partition (0 where it committed none)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=group_id, enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: (await consumer.committed(TopicPartition(topic, p))) or 0 for p in range(partitions)}
    finally:
        await consumer.stop()


def passed_unanswered(committed: dict[int, int], answered: set[Place] | dict[Place, float]) -> list[Place]:
    """Offsets below a committed offset that have no answer: what a crash would have lost."""
    return [(p, o) for p, upto in committed.items() for o in range(upto) if (p, o) not in answered]


# -- processes --------------------------------------------------------------------------------------------

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
def redis_server() -> Iterator[str]:
    """A Redis server of its own on a free loopback port, without persistence; its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not on PATH: install Redis 7 (apt-get install redis-server)")
    port = free_loopback_port()
    process = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        try:
            wait_until_listening(process, port, timeout_s=10)
        except NotListening as exc:
            raise RuntimeError(f"redis-server on port {port}: {exc}") from exc
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


@dataclass
class Startup:
    """Seconds from a worker's spawn to each step of its start."""

    imported: float | None = None
    dependencies_checked: float | None = None
    backend_loaded: float | None = None
    health_up: float | None = None
    first_answer: float | None = None
    first_new_answer: float | None = None


@dataclass
class WorkerProcess:
    """`python -m bench.soak_worker` (or another service's module and arguments) with `env`; its health port is
    chosen here so its metrics can be read."""

    env: dict[str, str]
    log: IO[bytes] | None = None
    port: int = field(default_factory=free_loopback_port)
    module: str = "bench.soak_worker"
    args: tuple[str, ...] = ()

    def start(self) -> WorkerProcess:
        env = {**os.environ, **self.env, "GUARDSTREAM_OBSERVABILITY__HEALTH_ENABLED": "true",
               "GUARDSTREAM_OBSERVABILITY__HEALTH_PORT": str(self.port),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.spawned_wall = time.time()
        self.spawned = time.monotonic()
        self.process = subprocess.Popen([sys.executable, "-m", self.module, *self.args], cwd=ROOT, env=env,
                                        stdout=self.log or subprocess.DEVNULL, stderr=self.log)
        self.ps = psutil.Process(self.process.pid)
        self.startup = Startup()
        return self

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    async def metrics(self) -> dict[str, float]:
        """Every sample of the worker's /metrics, by name and labels (`name{label="v"}`)."""
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{self.port}/metrics") as reply:
            text = await reply.text()
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return out

    async def wait_health(self, timeout_s: float) -> dict[str, float]:
        """Wait until the health server answers (the worker's start() is done); record the start-up marks."""
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.alive():
                raise RuntimeError(f"{self.module} {' '.join(self.args)} exited with status {self.process.returncode} "
                                   "while starting")
            try:
                metrics = await self.metrics()
                break
            except aiohttp.ClientError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.module}'s health server did not answer within {timeout_s}s") from None
                await asyncio.sleep(0.02)
        self.startup.health_up = time.monotonic() - self.spawned
        for mark in ("imported", "dependencies_checked", "backend_loaded"):
            at = metrics.get(f'soak_startup_mark_seconds{{mark="{mark}"}}')
            if at is not None:
                setattr(self.startup, mark, at - self.spawned_wall)
        return metrics

    def kill(self) -> float:
        """SIGKILL: no drain, no final commit. Returns when it was sent (monotonic)."""
        at = time.monotonic()
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        return at

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM: stop polling, drain, commit, exit; its exit status."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
