"""`guardstream demo --loop`: the demo, then the loop from labels to a better model, on embedded defaults.

1. The worker judges the demo's samples and prints them, as the demo does (the "before" column).
2. It judges labelled traffic (`workers/demo_data.loop_traffic`: everyday and sensitive-topic questions,
   insults and threats, none of them a sample's text), and a simulated reviewer labels every verdict with
   the truth, through its event's coordinates, on the audit topic.
3. The trainer service stores the labels as a data set in a local folder, runs the lite refit, evaluates
   candidate and serving model on the held-out labels, and releases the candidate if the gate accepts it.
4. The running worker switches to the release and judges the same sample events again ("after").

What the loop writes (the data set, the refit's scratch, the releases with their reports and decisions) goes
under `DATA_DIR/demo/<run id>/` and stays there, so every path it prints exists after it exits.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from guardstream.demo import DemoStack, demo_stack, print_verdicts, wait_for
from runtime.logs import configure_logging
from runtime.settings import ObservabilitySettings
from schemas.events import AuditLabel, ChatEvent, Verdict
from topics.io import produce_raw
from trainer.pipeline import RunRecord
from trainer.service import TrainerService
from trainer.settings import DatasetSettings, GateSettings, JobSettings, LiteRefitSettings, TrainerSettings
from workers.demo_data import SAMPLES, loop_traffic, make_events

PACKAGE_SAMPLE = 400  # package texts and pairs the demo's refit fine-tunes on (all of them: `guardstream train run`)
REFIT_EPOCHS = 5.0  # a small sample needs more passes to learn the platform's own policy
SWITCH_WAIT_S = 120.0


async def run_loop_demo() -> None:
    configure_logging("console", "warning")
    console = Console(width=max(Console().width, 130))
    async with demo_stack(console) as stack:
        folder = loop_folder(stack)
        console.print(f"[bold]loop data[/] {folder} (data set, the refit's scratch, releases and their reports)")
        pairs = make_events(len(SAMPLES), stack.images, stack.run_id)
        samples = [event for _, event in pairs]
        before = await _judge(stack, samples, "samples, serving model")
        print_verdicts(console, stack.collected, {e.event_id: s for s, e in pairs}, [e.event_id for e in samples])
        # fixed texts: which labels the gate holds out is a function of the content, so every run makes the same split
        traffic = [(ChatEvent(event_id=f"loop-t{i}", conversation_id=f"t{i % 7}", tenant="demo", text=text),
                    harmful) for i, (text, harmful) in enumerate(loop_traffic())]
        judged = await _judge(stack, [e for e, _ in traffic], "labelled traffic")
        wrong = sum(bool(judged[e.event_id].request_harmful) != harmful for e, harmful in traffic)
        console.print(f"the serving model got [bold]{wrong} of {len(traffic)}[/] traffic verdicts wrong; "
                      "a reviewer labels all of them")
        record = await _train(stack, folder, [_label(judged[e.event_id], harmful) for e, harmful in traffic])
        _print_decision(console, record)
        if record.outcome == "released":
            await _wait_for_switch(stack, record.version or "")
        after = await _judge(stack, samples, "samples, after the loop")
    _print_before_after(console, samples, before, after)


def loop_folder(stack: DemoStack) -> Path:
    """This run's folder under the data directory, made at once: unlike the demo's images, it is kept after
    the demo exits, so the paths printed under it stay valid."""
    folder = stack.settings.data_dir / "demo" / stack.run_id
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def _judge(stack: DemoStack, events: list[ChatEvent], label: str) -> dict[str, Verdict]:
    ids = {e.event_id for e in events}
    for event_id in ids:
        stack.collected.verdicts.pop(event_id, None)  # the same events judged again: wait for the new answers
    with Progress(console=stack.console) as progress:
        await produce_raw(stack.settings.kafka.bootstrap_servers, stack.topics.events,
                          [(e.conversation_id.encode(), e.model_dump_json().encode()) for e in events])
        await wait_for(stack.collected, ids, progress, label)
    return {event_id: stack.collected.verdicts[event_id] for event_id in ids}


def _label(verdict: Verdict, harmful: bool) -> AuditLabel:
    return AuditLabel(event_id=verdict.event_id, request_harmful=harmful, labeller="demo-reviewer",
                      event=verdict.source)


async def _train(stack: DemoStack, folder: Path, labels: list[AuditLabel]) -> RunRecord:
    """The trainer service on the labels; its data set, scratch, state and releases under `folder`."""
    settings = TrainerSettings(
        kafka=stack.settings.kafka, group_id=f"demo-trainer-{stack.run_id}", fetch=stack.settings.fetch,
        guard=stack.settings.guard, data_dir=folder,
        dataset=DatasetSettings(flush_interval_s=0.5),
        jobs=JobSettings(interval_s=None, after_new_labels=None),
        lite_refit=LiteRefitSettings(max_package_examples=PACKAGE_SAMPLE, epochs=REFIT_EPOCHS),
        gate=GateSettings(min_held_out=5, held_out_fraction=0.3, regression_max_items=200),
        observability=ObservabilitySettings(health_enabled=False),
    )
    trainer = TrainerService(settings)
    with stack.console.status("trainer: storing the labels as a data set…"):
        await trainer.start()
        try:
            await produce_raw(settings.kafka.bootstrap_servers, trainer.topics.audit_labels,
                              [(label.event_id.encode(), label.model_dump_json().encode()) for label in labels])
            deadline = time.monotonic() + SWITCH_WAIT_S
            while trainer.examples_stored < len(labels):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the trainer stored {trainer.examples_stored} of "
                                       f"{len(labels)} labels in {SWITCH_WAIT_S}s")
                await asyncio.sleep(0.2)
        except BaseException:
            await trainer.shutdown()
            raise
    stack.console.print(f"data set: {len(labels)} examples in {settings.dataset.uri}; running lite-refit "
                        f"({PACKAGE_SAMPLE} package texts + the audit labels)…")
    try:
        [record] = await trainer.run_jobs("demo")
    finally:
        await trainer.shutdown()
    return record


async def _wait_for_switch(stack: DemoStack, version: str) -> None:
    deadline = time.monotonic() + SWITCH_WAIT_S
    with stack.console.status(f"worker: switching to {version}…"):
        while stack.worker.served.ref.version != version:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the worker did not switch to {version} in {SWITCH_WAIT_S}s")
            await asyncio.sleep(0.2)


def _print_decision(console: Console, record: RunRecord) -> None:
    d = record.decision
    if record.outcome == "failed":
        console.print(f"[red]the job failed:[/] {record.error}")
        return
    colour = "green" if record.outcome == "released" else "yellow"
    console.print(f"[{colour}]{record.outcome}[/] {record.version}: F1 {d['candidate_f1']:.3f} against the serving "
                  f"model's {d['serving_f1']:.3f} on {d['held_out']} held-out labels ({d['reason']}); "
                  f"report: {record.report}")


def _print_before_after(console: Console, events: list[ChatEvent], before: dict[str, Verdict],
                        after: dict[str, Verdict]) -> None:
    versions = (next(iter(before.values())).model.version, next(iter(after.values())).model.version)
    table = Table(title=f"the same events, before (model {versions[0]}) and after the loop (model {versions[1]})")
    for column in ("input", "before", "after", "changed"):
        table.add_column(column, overflow="fold")
    for event in events:
        old, new = before[event.event_id], after[event.event_id]
        what = escape(event.text[:80] + (" [image]" if event.images else "") + (" [+response]" if event.response else ""))
        table.add_row(what, _cell(old), _cell(new), "yes" if _changed(old, new) else "no")
    console.print(table)


def _changed(old: Verdict, new: Verdict) -> bool:
    """Whether the after verdict decides otherwise than the before one (scores alone do not count)."""
    return (old.request_harmful, old.response_harmful, old.error is None) != (
        new.request_harmful, new.response_harmful, new.error is None)


def _cell(verdict: Verdict) -> str:
    if verdict.error is not None:
        return f"error {verdict.error.code}"
    request = f"{'harmful' if verdict.request_harmful else 'unharmful'} {verdict.request_score or 0:.2f}"
    if verdict.response_harmful is None:
        return request
    response = "harmful" if verdict.response_harmful else "unharmful"
    return f"{request}, response {response} {verdict.response_score or 0:.2f}"
