"""Data set test parts: examples, a data set in a local folder or in the moto S3 server, and a second writer
that commits between another writer's reading of the log and its commit."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import obstore
import pytest

from schemas.events import AuditLabel, ChatEvent, ImageRef
from tests.conftest import S3
from trainer.dataset import AuditExample, DataSet
from trainer.settings import DatasetSettings
from workers.settings import FetchSettings

STORES = ["local", "s3"]


def example(event_id: str, harmful: bool, at: datetime, *, response: str | None = None, image: bool = False,
            text: str = "some text") -> AuditExample:
    event = ChatEvent(event_id=event_id, conversation_id="c", text=text, response=response,
                      images=[ImageRef(uri="file:///x.png")] if image else [])
    label = AuditLabel(event_id=event_id, request_harmful=harmful, response_harmful=False if response else None,
                       labeller="r", labelled_at=at)
    return AuditExample(event=event, label=label)


@dataclass(frozen=True)
class Place:
    """Where a test's data set lives; each `open` is a store of its own, as a second process would have."""

    location: str
    fetch: FetchSettings

    def open(self, settings: DatasetSettings | None = None) -> DataSet:
        return DataSet.open(self.location, self.fetch, settings)


def place(kind: str, s3: S3, tmp_path: Path) -> Place:
    """A fresh data set in a local folder, or under a prefix of its own in the moto S3 server."""
    if kind == "local":
        return Place(str(tmp_path / "ds"), FetchSettings())
    fetch = FetchSettings(s3_endpoint=s3.endpoint, s3_access_key_id="test", s3_secret_access_key="test",
                          s3_allow_http=True, timeout_s=5.0)
    return Place(f"s3://{s3.bucket}/{uuid.uuid4().hex}/ds", fetch)


def commit_first(monkeypatch: pytest.MonkeyPatch, winner: DataSet, batches: list[list[AuditExample]]) -> None:
    """Before each write of the index by any writer but `winner` (while batches are left), `winner` appends the
    next batch: the race of two writers, forced. The index is the commit log (format 1: the manifest)."""
    put = obstore.put_async

    async def racing_put(store: Any, path: str, *args: Any, **kwargs: Any) -> Any:
        if store is not winner.store and batches and (path.startswith("commits/") or path == "manifest.json"):
            await winner.append(batches.pop(0))
        return await put(store, path, *args, **kwargs)

    monkeypatch.setattr(obstore, "put_async", racing_put)
