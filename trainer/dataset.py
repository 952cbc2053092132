"""The trainer's data set: audit examples in object storage, as an append-only log of commits naming shards.

Layout under the data set's location (`s3://bucket/prefix` or a local folder); each object is created once
and never changed or replaced:
- `events/<sha256>.json`: an event body (a `ChatEvent`'s JSON), named by the digest of its bytes, so the
  labels of one event (a relabelling, a repeated export) store it once;
- `shards/<id>.jsonl`: one example a line: the label, the verdict it judged, the digest of its event;
- `commits/NNNNNNNNNNNN.json`: commit N names one shard (its size and digest) and the index entry of each of
  its lines (event id, label time, labels, modality).
The data set is commits 0, 1, 2… in order: of an event's labels the latest `labelled_at` wins (a time
without a zone is read as UTC; on a tie, the later commit, then the later line), and the counts are taken
over those latest labels. Reading the summary reads the commits only; loading reads the shards that hold a
latest label and the events they name.

Writer rule: any number of writers may append at once (the trainer, and `replay --export` into its data
set). A writer creates the event bodies and the shard, then commit N+1, N being the last commit it has
seen, with a conditional create (S3's `If-None-Match: *`, a hard link in a local folder) that fails if
another writer took the number; it then reads the numbers it had not seen and tries the next one, up to
`dataset.commit_attempts` times, then raises `ConcurrentWriter`. As no object is ever replaced, no writer
can drop another's shard. A crash before the commit leaves objects no commit names: they are never read,
and the labels they held are consumed again (their offsets were not committed). In a local folder, where
obstore does not fsync, each file and then its folders are fsynced before the commit that names them, and
the commit before `append` returns.

Format 1 kept a `manifest.json` rewritten whole by each append; a data set holding one and no commit is
refused (`FormatChanged`): rebuild it from the audit labels topic with `guardstream replay --export`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import obstore
import structlog
from obstore.exceptions import AlreadyExistsError
from obstore.store import LocalStore, ObjectStore
from pydantic import BaseModel, ConfigDict, Field

from schemas.events import AuditLabel, ChatEvent, SourceRef, Verdict, WireTime, utcnow
from trainer.labelled import LabelledEvent, Task, modality_of
from trainer.settings import DatasetSettings
from workers.fetch import s3_store
from workers.settings import FetchSettings

log = structlog.get_logger("guardstream.dataset")

FORMAT = 2
COMMITS, SHARDS, EVENTS = "commits/", "shards/", "events/"
FORMAT_1_MANIFEST = "manifest.json"
COMMIT_KEY = re.compile(r"commits/[0-9]{12}\.json")  # anything else there (a stray file) is not a commit

T = TypeVar("T")
R = TypeVar("R")


class AuditExample(BaseModel):
    """One resolved label: the event, the label, and the verdict it judged (when it named one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event: ChatEvent
    label: AuditLabel
    verdict: Verdict | None = None
    label_source: SourceRef | None = None  # the label record's coordinates

    def labelled(self) -> LabelledEvent:
        response = self.label.response_harmful if self.event.response is not None else None
        return LabelledEvent(self.event, self.label.request_harmful, response, source="audit")


class ShardLine(BaseModel):
    """An example as its shard stores it: the event by the digest that names its body in `events/`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event: str
    label: AuditLabel
    verdict: Verdict | None = None
    label_source: SourceRef | None = None


class CommitEntry(BaseModel):
    """What the index needs of one shard line, so that the summary is read from the commits alone."""

    model_config = ConfigDict(extra="forbid")

    event_id: str
    labelled_at: WireTime  # compared with other labels' times: never without a zone
    request_harmful: bool
    response_harmful: bool | None
    modality: str


class ShardEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    examples: int
    bytes: int
    sha256: str
    written_at: datetime
    label_offsets: dict[str, list[int]] = Field(default_factory=dict, description="partition: [first, last]")


class Commit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: int = FORMAT
    number: int
    committed_at: datetime
    shard: ShardEntry
    entries: list[CommitEntry]  # one per shard line, in order


class IndexEntry(BaseModel):
    """Where an event's latest label is, and what it says."""

    model_config = ConfigDict(extra="forbid")

    shard: str
    line: int
    labelled_at: datetime
    request_harmful: bool
    response_harmful: bool | None
    modality: str


class Manifest(BaseModel):
    """The data set's summary, folded from its commit log."""

    model_config = ConfigDict(extra="forbid")

    format: int = FORMAT
    updated_at: datetime = Field(default_factory=utcnow, description="when the last commit was made")
    commits: int = 0
    shards: list[ShardEntry] = Field(default_factory=list)
    events: dict[str, IndexEntry] = Field(default_factory=dict)
    counts: dict[str, dict[str, int]] = Field(default_factory=dict)

    @classmethod
    def of(cls, commits: Sequence[Commit]) -> Manifest:
        events = latest(commits)
        summary = cls(commits=len(commits), shards=[c.shard for c in commits], events=events,
                      counts=count(events.values()))
        if commits:
            summary.updated_at = commits[-1].committed_at
        return summary


def latest(commits: Iterable[Commit]) -> dict[str, IndexEntry]:
    """Each event's latest label: the latest `labelled_at`; on a tie, the later commit, then the later line."""
    index: dict[str, IndexEntry] = {}
    for commit in commits:
        for line, entry in enumerate(commit.entries):
            current = index.get(entry.event_id)
            if current is None or current.labelled_at <= entry.labelled_at:
                index[entry.event_id] = IndexEntry(
                    shard=commit.shard.name, line=line, labelled_at=entry.labelled_at,
                    request_harmful=entry.request_harmful, response_harmful=entry.response_harmful,
                    modality=entry.modality)
    return index


def count(entries: Iterable[IndexEntry]) -> dict[str, dict[str, int]]:
    """Examples per request label, per response label, per task and per modality."""
    request, response, tasks, modality = Counter[str](), Counter[str](), Counter[str](), Counter[str]()
    total = 0
    for entry in entries:
        total += 1
        request["harmful" if entry.request_harmful else "unharmful"] += 1
        tasks[Task.REQUEST.value] += 1
        if entry.response_harmful is not None:
            response["harmful" if entry.response_harmful else "unharmful"] += 1
            tasks[Task.RESPONSE.value] += 1
        modality[entry.modality] += 1
    return {"examples": {"total": total}, "request": dict(request), "response": dict(response),
            "task": dict(tasks), "modality": dict(modality)}


class BadDataSetLocation(ValueError):
    """A data set location that is neither a local folder nor s3://bucket[/prefix]."""


class DataSetError(RuntimeError):
    """A data set that cannot be read or written as asked; `reason` is the logs' and metrics' code."""

    reason = "dataset_error"


class ConcurrentWriter(DataSetError):
    """Other writers took every commit number this append tried: its shard is left uncommitted, unread."""

    reason = "concurrent_writer"


class CorruptShard(DataSetError):
    """A shard whose bytes differ from what its commit recorded."""

    reason = "corrupt_shard"


class CorruptEvent(DataSetError):
    """An event body whose bytes differ from the digest that names it."""

    reason = "corrupt_event"


class FormatChanged(DataSetError):
    """A format 1 data set (a `manifest.json`, no commit log): rebuild it with `replay --export`."""

    reason = "format_changed"


def open_store(location: str, fetch: FetchSettings) -> ObjectStore:
    """The store under `location`: `s3://bucket/prefix` through the S3 settings, else a local folder."""
    parts = urlsplit(location)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise BadDataSetLocation(f"{location!r}: an s3 location names a bucket (s3://bucket/prefix)")
        return s3_store(parts.netloc, fetch, parts.path.strip("/"))
    if parts.scheme not in ("", "file"):
        raise BadDataSetLocation(f"{location!r}: use a local folder, file:// or s3://bucket/prefix")
    folder = Path(parts.path if parts.scheme == "file" else location).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return LocalStore(prefix=folder)


@dataclass
class DataSet:
    """A data set at `location`. Each `load` and `manifest` reads the commit log afresh; `append` remembers
    only the last commit number it has seen."""

    location: str
    store: ObjectStore
    settings: DatasetSettings = field(default_factory=DatasetSettings)
    _last_seen: int | None = field(default=None, init=False, repr=False)

    @classmethod
    def open(cls, location: str, fetch: FetchSettings, settings: DatasetSettings | None = None) -> DataSet:
        return cls(location, open_store(location, fetch), settings or DatasetSettings())

    async def manifest(self) -> Manifest:
        raw = await self._read_all(await self._commit_keys())
        return await asyncio.to_thread(lambda: Manifest.of([Commit.model_validate_json(r) for r in raw]))

    async def append(self, examples: list[AuditExample]) -> ShardEntry:
        """Store `examples` as one shard and commit it: durable on return. ConcurrentWriter if other writers
        took every commit number it tried."""
        body, events, entries = await asyncio.to_thread(encode, examples)
        shard = ShardEntry(name=f"{SHARDS}{uuid.uuid4().hex}.jsonl", examples=len(examples), bytes=len(body),
                           sha256=hashlib.sha256(body).hexdigest(), written_at=utcnow(),
                           label_offsets=_offsets(examples))
        await self._map(lambda item: self._create(f"{EVENTS}{item[0]}.json", item[1], exists_ok=True),
                        list(events.items()))
        await self._create(shard.name, body)
        await self._make_durable([shard.name, *(f"{EVENTS}{key}.json" for key in events)])
        await self._commit(shard, entries)
        return shard

    async def load(self) -> list[AuditExample]:
        """The latest example of every event, in the order their shards were committed."""
        manifest = await self.manifest()
        holding = {entry.shard for entry in manifest.events.values()}
        shards = [shard for shard in manifest.shards if shard.name in holding]
        raw = await self._read_all([shard.name for shard in shards])
        lines = await asyncio.to_thread(latest_lines, manifest, shards, raw)
        keys = sorted({line.event for line in lines})
        bodies = await self._read_all([f"{EVENTS}{key}.json" for key in keys])
        return await asyncio.to_thread(join, lines, dict(zip(keys, bodies, strict=True)))

    # -- the commit log --------------------------------------------------------------------------

    async def _commit(self, shard: ShardEntry, entries: list[CommitEntry]) -> None:
        number = await self._next_number()
        for attempt in range(1, self.settings.commit_attempts + 1):
            commit = Commit(number=number, committed_at=utcnow(), shard=shard, entries=entries)
            try:
                await self._create(_commit_key(number), commit.model_dump_json().encode())
            except AlreadyExistsError:
                log.info("dataset_commit_taken", location=self.location, number=number, attempt=attempt)
                self._last_seen = number
                number = await self._next_number()
                continue
            await self._make_durable([_commit_key(number)])
            self._last_seen = number
            return
        raise ConcurrentWriter(f"{self.location}: other writers took {self.settings.commit_attempts} commit numbers "
                               f"in a row; {shard.name} is left uncommitted")

    async def _next_number(self) -> int:
        """The number after the last commit, listing only those after the last one this writer has seen."""
        after = None if self._last_seen is None else _commit_key(self._last_seen)
        keys = await self._commit_keys(after)
        if keys:
            return int(Path(keys[-1]).stem) + 1
        return 0 if self._last_seen is None else self._last_seen + 1

    async def _commit_keys(self, after: str | None = None) -> list[str]:
        """The commits' keys in order (those after `after`). An empty log where format 1's manifest is: refused."""
        listed = await obstore.list(self.store, COMMITS, offset=after).collect_async()
        keys = sorted(meta["path"] for meta in listed if COMMIT_KEY.fullmatch(meta["path"]))
        if not keys and after is None and await self._exists(FORMAT_1_MANIFEST):
            raise FormatChanged(f"{self.location} holds a format 1 data set ({FORMAT_1_MANIFEST}); rebuild it "
                                "into a new location with `guardstream replay --export`")
        return keys

    # -- objects ---------------------------------------------------------------------------------

    async def _create(self, key: str, body: bytes, *, exists_ok: bool = False) -> None:
        """Create `key`; AlreadyExistsError if it exists, unless `exists_ok` (an event body: the same bytes)."""
        try:
            await obstore.put_async(self.store, key, body, mode="create")
        except AlreadyExistsError:
            if not exists_ok:
                raise

    async def _make_durable(self, keys: list[str]) -> None:
        """obstore's LocalStore renames files into place without fsync: in a local folder, fsync each file, then
        once each folder up to the data set's own (a new folder is an entry in its parent)."""
        if not isinstance(self.store, LocalStore):
            return  # an S3 put is durable when it returns
        root = Path(self.store.prefix)
        paths = [root / key for key in keys]
        await self._map(lambda path: asyncio.to_thread(fsync, path), paths)
        folders = sorted({folder for path in paths for folder in path.parents if folder.is_relative_to(root)},
                         key=lambda folder: len(folder.parts), reverse=True)
        await asyncio.to_thread(lambda: [fsync(folder) for folder in folders])

    async def _exists(self, key: str) -> bool:
        try:
            await obstore.head_async(self.store, key)
        except FileNotFoundError:
            return False
        return True

    async def _read_all(self, keys: list[str]) -> list[bytes]:
        async def read(key: str) -> bytes:
            return bytes(await (await obstore.get_async(self.store, key)).bytes_async())

        return await self._map(read, keys)

    async def _map(self, call: Callable[[T], Awaitable[R]], items: Sequence[T]) -> list[R]:
        """`call` on each item, `dataset.io_concurrency` at a time; results in the items' order. The first
        failure cancels the rest and is raised as it is."""
        results: list[R] = [None] * len(items)  # type: ignore[list-item]
        queue = iter(enumerate(items))

        async def worker() -> None:
            for index, item in queue:
                results[index] = await call(item)

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(self.settings.io_concurrency, len(items))):
                    group.create_task(worker())
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None
        return results


def encode(examples: list[AuditExample]) -> tuple[bytes, dict[str, bytes], list[CommitEntry]]:
    """A shard's bytes, the event bodies it names (by digest) and its commit entries."""
    lines, events, entries = [], {}, []
    for example in examples:
        body = example.event.model_dump_json().encode()
        key = hashlib.sha256(body).hexdigest()
        events[key] = body
        line = ShardLine(event=key, label=example.label, verdict=example.verdict, label_source=example.label_source)
        lines.append(line.model_dump_json() + "\n")
        label = example.label
        entries.append(CommitEntry(
            event_id=label.event_id, labelled_at=label.labelled_at, request_harmful=label.request_harmful,
            response_harmful=label.response_harmful if example.event.response is not None else None,
            modality=modality_of(example.event).value))
    return "".join(lines).encode(), events, entries


def latest_lines(manifest: Manifest, shards: list[ShardEntry], raw: list[bytes]) -> list[ShardLine]:
    """The lines of `shards` (their bytes in `raw`) that hold an event's latest label, in order."""
    wanted = {(entry.shard, entry.line) for entry in manifest.events.values()}
    lines = []
    for shard, body in zip(shards, raw, strict=True):
        if hashlib.sha256(body).hexdigest() != shard.sha256:
            raise CorruptShard(f"{shard.name}: contents do not match the digest its commit recorded")
        lines += [ShardLine.model_validate_json(text) for number, text in enumerate(body.splitlines())
                  if (shard.name, number) in wanted]
    return lines


def join(lines: list[ShardLine], bodies: dict[str, bytes]) -> list[AuditExample]:
    """Each line with its event, from event bodies checked against the digests that name them."""
    events = {}
    for key, body in bodies.items():
        if hashlib.sha256(body).hexdigest() != key:
            raise CorruptEvent(f"{EVENTS}{key}.json: contents do not match the digest that names it")
        events[key] = ChatEvent.model_validate_json(body)
    return [AuditExample(event=events[line.event], label=line.label, verdict=line.verdict,
                         label_source=line.label_source) for line in lines]


def fsync(path: Path) -> None:
    """fsync a file or a folder (a folder: so that the entries created in it survive a crash)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _commit_key(number: int) -> str:
    return f"{COMMITS}{number:012d}.json"


def _offsets(examples: list[AuditExample]) -> dict[str, list[int]]:
    spans: dict[str, list[int]] = {}
    for example in examples:
        if example.label_source is None:
            continue
        key, offset = str(example.label_source.partition), example.label_source.offset
        first, last = spans.get(key, [offset, offset])
        spans[key] = [min(first, offset), max(last, offset)]
    return spans


def held_out(event_id: str, fraction: float, salt: str = "guardstream-holdout") -> bool:
    """Whether an event belongs to the held-out labels: a fixed function of its id, so an event held out
    once stays held out as the data set grows, and no model is ever trained on it."""
    digest = hashlib.sha256(f"{salt}:{event_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def dumps(data: object) -> bytes:
    return (json.dumps(data, indent=1, default=str) + "\n").encode()
