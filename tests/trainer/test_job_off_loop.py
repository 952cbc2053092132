"""A job shares the trainer's event loop with faust's heartbeats: its scoring and its report (plots take
seconds) run on worker threads, never on the loop's own thread. Checked by where the work runs, not by how
long the loop waited (a timing would depend on the machine's load). No network."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import trainer.evaluate
import trainer.pipeline
from schemas.events import ChatEvent, ModelRef, Verdict, VerdictStatus
from trainer.evaluate import evaluate
from trainer.labelled import LabelledEvent
from trainer.pipeline import write_run_report

ITEMS = 200


def labelled(count: int) -> tuple[list[LabelledEvent], list[Verdict]]:
    items, verdicts = [], []
    for i in range(count):
        e = ChatEvent(event_id=f"e{i}", conversation_id="c", text=f"text {i}", response="r" if i % 2 else None)
        items.append(LabelledEvent(e, i % 2 == 0, (i % 4 == 1) if i % 2 else None))
        verdicts.append(Verdict(event_id=e.event_id, conversation_id="c", tenant=e.tenant, status=VerdictStatus.OK,
                                request_harmful=i % 3 == 0, response_harmful=(i % 5 == 0) if i % 2 else None,
                                request_score=(i % 100) / 100, response_score=(i * 7 % 100) / 100 if i % 2 else None,
                                model=ModelRef(name="m", version="1"), policy_version="1"))
    return items, verdicts


class Answering:
    """A moderator that already knows its verdicts: the scoring is what is watched."""

    def __init__(self, verdicts: list[Verdict]) -> None:
        self.by_id = {v.event_id: v for v in verdicts}

    async def moderate(self, events: list[ChatEvent]) -> list[Verdict]:
        return [self.by_id[e.event_id] for e in events]


def recording(threads: dict[str, int], name: str, work: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        threads[name] = threading.get_ident()
        return work(*args, **kwargs)
    return run


async def test_scoring_and_the_report_run_off_the_event_loops_thread(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    threads: dict[str, int] = {}
    monkeypatch.setattr(trainer.evaluate, "score", recording(threads, "score", trainer.evaluate.score))
    monkeypatch.setattr(trainer.pipeline, "write_report", recording(threads, "report", trainer.pipeline.write_report))
    items, verdicts = labelled(ITEMS)

    evaluation, _ = await evaluate(Answering(verdicts), items, batch_size=64)  # type: ignore[arg-type]
    report = await write_run_report(evaluation, evaluation, tmp_path / "report", "candidate", "serving")

    assert evaluation.items == ITEMS and report.read_text(encoding="utf-8").startswith("# candidate")
    assert threads.keys() == {"score", "report"}
    assert threading.get_ident() not in threads.values(), "scoring or the report ran on the event loop's thread"
