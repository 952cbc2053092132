"""The trainer's data set: audit examples in object storage, in shards with a manifest.

Layout under the data set's location (`s3://bucket/prefix` or a local folder):
- `shards/NNNNNN-<id>.jsonl`: one `AuditExample` a line, written once, never changed;
- `manifest.json`: the shards in order, and for each event id the shard and label time of its latest
  label (the latest `labelled_at` wins; on a tie, the later shard), with counts per label, task and
  modality over those latest labels.

A shard is written first and the manifest after it, each with one put (atomic in S3 and, through a
rename, in a local folder). A crash between the two leaves a shard that no manifest names: it is never
read, and the labels it held are consumed again (their offsets were not committed) and land in a new
shard. One trainer writes a data set at a time (the trainer runs as a single replica).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import obstore
from obstore.store import LocalStore, ObjectStore
from pydantic import BaseModel, ConfigDict, Field

from schemas.events import AuditLabel, ChatEvent, SourceRef, Verdict, utcnow
from trainer.labelled import LabelledEvent, Task, modality_of
from workers.fetch import s3_store
from workers.settings import FetchSettings

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


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


class IndexEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shard: str
    labelled_at: datetime
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


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: int = MANIFEST_FORMAT
    updated_at: datetime = Field(default_factory=utcnow)
    shards: list[ShardEntry] = Field(default_factory=list)
    events: dict[str, IndexEntry] = Field(default_factory=dict)
    counts: dict[str, dict[str, int]] = Field(default_factory=dict)

    def record(self, shard: str, examples: list[AuditExample]) -> None:
        """Index `examples` (written to `shard`, later than every shard before it): latest label wins."""
        for example in examples:
            label = example.label
            current = self.events.get(label.event_id)
            if current is not None and current.labelled_at > label.labelled_at:
                continue
            self.events[label.event_id] = IndexEntry(
                shard=shard, labelled_at=label.labelled_at, request_harmful=label.request_harmful,
                response_harmful=label.response_harmful if example.event.response is not None else None,
                modality=modality_of(example.event).value)
        self.counts = count(self.events.values())
        self.updated_at = utcnow()


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
    """A data set at `location`; `append` and `load` read the manifest afresh each time."""

    location: str
    store: ObjectStore

    @classmethod
    def open(cls, location: str, fetch: FetchSettings) -> DataSet:
        return cls(location, open_store(location, fetch))

    async def manifest(self) -> Manifest:
        try:
            raw = await (await obstore.get_async(self.store, MANIFEST)).bytes_async()
        except FileNotFoundError:
            return Manifest()
        return Manifest.model_validate_json(bytes(raw))

    async def append(self, examples: list[AuditExample]) -> ShardEntry:
        """Write `examples` as a new shard, then the manifest that names it. Both are durable on return."""
        manifest = await self.manifest()
        body = "".join(e.model_dump_json() + "\n" for e in examples).encode()
        name = f"shards/{len(manifest.shards):06d}-{uuid.uuid4().hex[:8]}.jsonl"
        await obstore.put_async(self.store, name, body)
        entry = ShardEntry(name=name, examples=len(examples), bytes=len(body), sha256=hashlib.sha256(body).hexdigest(),
                           written_at=utcnow(), label_offsets=_offsets(examples))
        manifest.shards.append(entry)
        manifest.record(name, examples)
        await obstore.put_async(self.store, MANIFEST, manifest.model_dump_json(indent=1).encode())
        return entry

    async def load(self) -> list[AuditExample]:
        """The latest example of every event, in the order the manifest's shards were written."""
        manifest = await self.manifest()
        latest: dict[str, AuditExample] = {}
        for shard in manifest.shards:
            raw = bytes(await (await obstore.get_async(self.store, shard.name)).bytes_async())
            if hashlib.sha256(raw).hexdigest() != shard.sha256:
                raise CorruptShard(f"{self.location}/{shard.name}: contents do not match the manifest's digest")
            for line in raw.splitlines():
                example = AuditExample.model_validate_json(line)
                entry = manifest.events.get(example.label.event_id)
                if entry is not None and entry.shard == shard.name and entry.labelled_at == example.label.labelled_at:
                    latest[example.label.event_id] = example
        return list(latest.values())


class CorruptShard(RuntimeError):
    """A shard whose bytes differ from what the manifest recorded."""


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
