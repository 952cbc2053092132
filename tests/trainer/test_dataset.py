"""The data set: latest label per event whatever the label times, counts, event bodies stored once per
content and checked against their names, durable local writes, loading off the event loop, and a held-out
split that never moves."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import obstore
import pytest

import trainer.dataset
from schemas.events import ChatEvent
from tests.conftest import S3
from tests.trainer.dataset_parts import STORES, Place, example, place
from trainer.dataset import AuditExample, CorruptEvent, CorruptShard, DataSet, held_out
from trainer.evaluate import Evaluation, score
from trainer.gate import RandomPart, decide
from trainer.labelled import LabelledEvent
from trainer.settings import GateSettings
from workers.settings import FetchSettings

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(params=STORES)
def where(request: pytest.FixtureRequest, s3: S3, tmp_path: Path) -> Place:
    return place(request.param, s3, tmp_path)


async def test_the_latest_label_of_an_event_wins_whatever_order_the_shards_arrive_in(tmp_path: Path) -> None:
    data = DataSet.open(str(tmp_path / "ds"), FetchSettings())
    await data.append([example("a", True, T0), example("b", False, T0, response="ok")])
    await data.append([example("a", False, T0 + timedelta(hours=1)), example("b", True, T0 - timedelta(hours=1))])
    latest = {e.label.event_id: e.label.request_harmful for e in await data.load()}
    assert latest == {"a": False, "b": False}  # b's late-arriving label is older: it does not win
    counts = (await data.manifest()).counts
    assert counts["request"] == {"unharmful": 2} and counts["response"] == {"unharmful": 1}
    assert counts["task"] == {"request": 2, "response": 1}


async def test_a_shard_no_commit_names_is_never_read_and_a_changed_one_is_refused(tmp_path: Path) -> None:
    data = DataSet.open(str(tmp_path / "ds"), FetchSettings())
    shard = await data.append([example("a", True, T0, image=True)])
    await obstore.put_async(data.store, "shards/orphan.jsonl",  # a crash before its commit
                            example("z", True, T0).model_dump_json().encode())
    assert [e.label.event_id for e in await data.load()] == ["a"]
    assert (await data.manifest()).counts["modality"] == {"text+image": 1}
    await obstore.put_async(data.store, shard.name, example("a", False, T0).model_dump_json().encode())
    with pytest.raises(CorruptShard, match=shard.name):
        await data.load()


async def test_an_event_body_that_does_not_match_its_name_is_refused(tmp_path: Path) -> None:
    data = DataSet.open(str(tmp_path / "ds"), FetchSettings())
    await data.append([example("a", True, T0)])
    [stored] = await obstore.list(data.store, "events/").collect_async()
    (tmp_path / "ds" / stored["path"]).write_bytes(example("a", True, T0, text="other").event.model_dump_json().encode())
    with pytest.raises(CorruptEvent, match=stored["path"]):
        await data.load()


async def test_a_label_time_without_a_zone_is_read_as_utc_and_the_later_label_wins(where: Place) -> None:
    data = where.open()
    an_hour_later = (T0 + timedelta(hours=1)).replace(tzinfo=None)
    await data.append([example("a", True, T0), example("b", True, T0 + timedelta(hours=2)),
                       example("c", True, T0), _relabelled(example("c", False, T0), an_hour_later)])
    await data.append([_relabelled(example("a", False, T0), an_hour_later),
                       _relabelled(example("b", False, T0), an_hour_later)])
    latest = {e.label.event_id: e.label.request_harmful for e in await where.open().load()}
    assert latest == {"a": False, "b": True, "c": False}  # b's zoneless label is an hour older than its first
    assert (await where.open().manifest()).counts["request"] == {"harmful": 1, "unharmful": 2}


def _relabelled(stored: AuditExample, at: datetime, **label: object) -> AuditExample:
    """`stored`'s event labelled again at `at` as given, past any validation that would add a zone."""
    return stored.model_copy(update={"label": stored.label.model_copy(update={"labelled_at": at, **label})})


async def test_the_labels_of_one_event_store_its_body_once(where: Place) -> None:
    data = where.open()
    text = "a long message to label " * 8000
    first = example("a", True, T0, text=text)
    for batch in range(2):
        await data.append([_relabelled(first, T0 + timedelta(minutes=50 * batch + i), request_harmful=i % 2 == 0)
                           for i in range(50)])
    stored = [meta for chunk in obstore.list(data.store) for meta in chunk]
    assert len([meta for meta in stored if meta["path"].startswith("events/")]) == 1
    assert sum(meta["size"] for meta in stored) < 2 * len(text)  # 100 labels, one copy of their event
    [latest] = await where.open().load()
    assert latest.event.text == text and latest.label.labelled_at == T0 + timedelta(minutes=99)


async def test_local_writes_are_fsynced_before_the_commit_that_names_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = (tmp_path / "ds").resolve()
    synced: dict[str, bool] = {}  # each path fsynced: whether a commit existed by then
    fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        fsync(fd)
        synced.setdefault(os.readlink(f"/proc/self/fd/{fd}"), any(root.glob("commits/*")))

    monkeypatch.setattr(os, "fsync", recording_fsync)
    shard = await DataSet.open(str(root), FetchSettings()).append([example("a", True, T0)])
    [event], [commit] = root.glob("events/*"), root.glob("commits/*")
    assert synced.keys() >= {str(p) for p in (root / shard.name, event, commit, root / "shards", root / "events",
                                             root / "commits", root)}
    assert not synced[str(root / shard.name)] and not synced[str(event)]  # durable before any commit names them


async def test_loading_a_data_set_parses_off_the_event_loops_thread(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    data = DataSet.open(str(tmp_path / "ds"), FetchSettings())
    await data.append([example(f"e{i}", i % 2 == 0, T0, text=f"message {i} " * 40) for i in range(300)])
    threads: dict[str, int] = {}

    def recorded(name: str) -> Callable[..., Any]:
        work = getattr(trainer.dataset, name)

        def run(*args: Any) -> Any:
            threads[name] = threading.get_ident()
            return work(*args)
        return run

    for name in ("latest_lines", "join"):
        monkeypatch.setattr(trainer.dataset, name, recorded(name))
    assert len(await data.load()) == 300
    # on the loop, parsing the shard held it for most of the load (0.15 s of 0.18 s for 3,000 examples)
    assert threads.keys() == {"latest_lines", "join"} and threading.get_ident() not in threads.values()


def test_the_held_out_split_is_a_fixed_function_of_the_event_id() -> None:
    ids = [f"event-{i}" for i in range(4000)]
    chosen = [i for i in ids if held_out(i, 0.2)]
    assert chosen == [i for i in ids if held_out(i, 0.2)]
    assert 0.17 < len(chosen) / len(ids) < 0.23
    assert set(chosen) <= {i for i in ids if held_out(i, 0.5)}  # a larger fraction keeps what was held out


def _evaluation(correct: int, total: int) -> Evaluation:
    from schemas.events import ModelRef, Verdict, VerdictStatus

    items = [LabelledEvent(ChatEvent(event_id=f"e{i}", conversation_id="c", text="t"), i % 2 == 0)
             for i in range(total)]
    verdicts = [Verdict(event_id=f"e{i}", conversation_id="c", tenant="default", status=VerdictStatus.OK,
                        request_harmful=(i % 2 == 0) == (i < correct), model=ModelRef(name="m", version="1"),
                        policy_version="1") for i in range(total)]
    return score(items, verdicts)


@pytest.mark.parametrize(("candidate", "serving", "held", "release", "reason"), [
    (20, 12, 20, True, "F1 gain"),
    (12, 12, 20, False, "below gate.min_f1_gain"),
    (8, 12, 20, False, "drops by"),
    (20, 12, 4, False, "fewer than gate.min_held_out"),
])
def test_the_gate_releases_only_a_candidate_better_by_the_margin_on_enough_held_out_labels(
    candidate: int, serving: int, held: int, release: bool, reason: str
) -> None:
    decision = decide(_evaluation(candidate, 20), _evaluation(serving, 20), held,
                      GateSettings(min_held_out=5, min_f1_gain=0.01, max_task_regression=0.02))
    assert decision.release is release and reason in decision.reason


def test_a_candidate_that_over_blocks_the_regression_set_is_refused() -> None:
    better, worse = _evaluation(38, 40), _evaluation(30, 40)
    gate = GateSettings(min_held_out=5)
    assert decide(better, worse, 40, gate).release
    refused = decide(better, worse, 40, gate, regression=RandomPart(candidate=worse, serving=better))
    assert not refused.release and "regression set" in refused.reason
    assert refused.regression_candidate_f1 == worse.f1 and refused.regression_serving_f1 == better.f1
    assert decide(better, worse, 40, gate, regression=RandomPart(candidate=better, serving=better)).release
