"""The data set: shards then manifest, latest label per event, counts, and a held-out split that never moves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import obstore
import pytest

from schemas.events import AuditLabel, ChatEvent, ImageRef
from trainer.dataset import AuditExample, CorruptShard, DataSet, held_out
from trainer.evaluate import Evaluation, score
from trainer.gate import decide
from trainer.labelled import LabelledEvent
from trainer.settings import GateSettings
from workers.settings import FetchSettings

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def example(event_id: str, harmful: bool, at: datetime, *, response: str | None = None,
            image: bool = False) -> AuditExample:
    event = ChatEvent(event_id=event_id, conversation_id="c", text="some text", response=response,
                      images=[ImageRef(uri="file:///x.png")] if image else [])
    label = AuditLabel(event_id=event_id, request_harmful=harmful, response_harmful=False if response else None,
                       labeller="r", labelled_at=at)
    return AuditExample(event=event, label=label)


async def test_the_latest_label_of_an_event_wins_whatever_order_the_shards_arrive_in(tmp_path: Path) -> None:
    data = DataSet.open(str(tmp_path / "ds"), FetchSettings())
    await data.append([example("a", True, T0), example("b", False, T0, response="ok")])
    await data.append([example("a", False, T0 + timedelta(hours=1)), example("b", True, T0 - timedelta(hours=1))])
    latest = {e.label.event_id: e.label.request_harmful for e in await data.load()}
    assert latest == {"a": False, "b": False}  # b's late-arriving label is older: it does not win
    counts = (await data.manifest()).counts
    assert counts["request"] == {"unharmful": 2} and counts["response"] == {"unharmful": 1}
    assert counts["task"] == {"request": 2, "response": 1}


async def test_a_shard_no_manifest_names_is_never_read_and_a_changed_one_is_refused(tmp_path: Path) -> None:
    data = DataSet.open(str(tmp_path / "ds"), FetchSettings())
    shard = await data.append([example("a", True, T0, image=True)])
    await obstore.put_async(data.store, "shards/000001-orphan.jsonl",  # a crash before its manifest
                            example("z", True, T0).model_dump_json().encode())
    assert [e.label.event_id for e in await data.load()] == ["a"]
    assert (await data.manifest()).counts["modality"] == {"text+image": 1}
    await obstore.put_async(data.store, shard.name, example("a", False, T0).model_dump_json().encode())
    with pytest.raises(CorruptShard, match=shard.name):
        await data.load()


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
