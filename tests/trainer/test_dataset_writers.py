"""Writers of one data set: each append lands in the commit log whatever other writers do at the same time,
in a local folder and in S3; one that keeps losing the race fails loudly, and so does a format 1 data set."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import obstore
import pytest

from tests.conftest import S3
from tests.trainer.dataset_parts import STORES, Place, commit_first, example, place
from trainer.dataset import ConcurrentWriter, FormatChanged
from trainer.settings import DatasetSettings

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(params=STORES)
def where(request: pytest.FixtureRequest, s3: S3, tmp_path: Path) -> Place:
    return place(request.param, s3, tmp_path)


async def test_two_writers_appending_concurrently_both_land_every_shard(where: Place) -> None:
    trainer, export = where.open(), where.open()

    async def write(data: object, name: str) -> None:
        for batch in range(4):
            await data.append([example(f"{name}-{batch}-{i}", False, T0) for i in range(3)])  # type: ignore[attr-defined]

    await asyncio.gather(write(trainer, "trainer"), write(export, "export"))
    stored = {e.label.event_id for e in await where.open().load()}
    assert stored == {f"{name}-{batch}-{i}" for name in ("trainer", "export") for batch in range(4) for i in range(3)}
    assert len((await where.open().manifest()).shards) == 8


async def test_a_writer_beaten_to_its_commit_commits_after_the_winner_and_loses_nothing(
    where: Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer, export = where.open(), where.open()
    await trainer.append([example("before", False, T0)])
    commit_first(monkeypatch, export, [[example("export-0", True, T0), example("export-1", True, T0)]])
    await trainer.append([example("trainer-0", False, T0)])
    stored = {e.label.event_id: e.label.request_harmful for e in await where.open().load()}
    assert stored == {"before": False, "export-0": True, "export-1": True, "trainer-0": False}
    assert (await where.open().manifest()).counts["request"] == {"harmful": 2, "unharmful": 2}


async def test_a_writer_beaten_to_every_number_it_tries_fails_loudly_and_the_next_append_lands(
    where: Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer, export = where.open(DatasetSettings(commit_attempts=2)), where.open()
    commit_first(monkeypatch, export, [[example(f"export-{n}", True, T0)] for n in range(3)])
    with pytest.raises(ConcurrentWriter, match="2 commit numbers"):
        await trainer.append([example("lost-race", False, T0)])
    assert {e.label.event_id for e in await where.open().load()} == {"export-0", "export-1"}
    await trainer.append([example("trainer", False, T0)])  # beaten once more, then committed
    assert {e.label.event_id for e in await where.open().load()} == {"export-0", "export-1", "export-2", "trainer"}


async def test_a_format_1_data_set_is_refused_not_written_over(where: Place) -> None:
    data = where.open()
    await obstore.put_async(data.store, "manifest.json", b'{"format": 1, "shards": [], "events": {}}')
    with pytest.raises(FormatChanged, match="replay --export"):
        await data.append([example("a", True, T0)])
    with pytest.raises(FormatChanged):
        await data.load()
    assert not await obstore.list(data.store, "commits/").collect_async()
