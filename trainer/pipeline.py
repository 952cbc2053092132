"""One run of a job, the same for every job: data, training, evaluation, gate, release.

1. The data set's latest labels are split by content: held-out events (a fixed hash of the event's
   content key, `gate.held_out_fraction`, `trainer/held_out.py`) are never given to the job.
2. The job trains a candidate (on a thread; it may take minutes), given the serving model and the verdict
   each label judged; its own figures (loss, reward…) go into the report beside the evaluation.
3. The candidate and the model serving now (the last release in `moderation.models`, else the
   configured guard) are evaluated on the same held-out labels, and again on the part of them chosen by
   uniform random sampling, and both on the gate's regression set (`trainer/regression.py`: hard cases and
   over-blocking contrasts no job trains on); the report (Markdown, plots, JSON) is written locally and stored under
   `gate.release_uri/<version>/report/`.
4. The gate decides (`trainer/gate.py`). Only a candidate it accepts is uploaded and published as a
   `ModelRelease`, which running workers switch to. Every decision, released or not, is logged with its
   figures and the held-out set's make-up, stored beside the report as `decision.json` and returned for
   the trainer's status.

A job runs on the trainer's event loop, beside faust's heartbeats: whatever costs CPU (splitting,
scoring, the report and its plots, reading artefacts) runs on a thread.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import obstore
import structlog
from aiokafka import AIOKafkaProducer

from runtime.cli_errors import Exit
from schemas.events import ModelRelease, Verdict
from topics.clients import client_options
from topics.registry import TopicNames
from trainer.dataset import DataSet, dumps, open_store
from trainer.eval_report import write_report
from trainer.evaluate import Evaluation, evaluate
from trainer.gate import Composition, GateDecision, RandomPart, decide
from trainer.held_out import split
from trainer.job_interface import Candidate, TrainingData
from trainer.jobs import make_job
from trainer.labelled import LabelledEvent
from trainer.regression import regression_set
from trainer.settings import TrainerSettings
from workers.artefacts import materialise
from workers.guard.registry import load_backend
from workers.model_watch import current_release
from workers.offline import OfflineModerator
from workers.served_model import release_settings
from workers.settings import GuardSettings

log = structlog.get_logger("guardstream.trainer")


@dataclass
class RunRecord:
    job: str
    trigger: str
    started_at: datetime
    finished_at: datetime | None = None
    outcome: str = "running"  # released, refused, failed
    version: str | None = None
    serving_version: str | None = None
    decision: dict[str, Any] = field(default_factory=dict)
    report: str | None = None
    artefact_uri: str | None = None
    error: str | None = None
    exception: BaseException | None = field(default=None, repr=False, compare=False)  # what `error` says

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "exception"}


class NoLabelledData(RuntimeError):
    """The data set holds no labelled events yet: there is nothing to train or evaluate on."""

    exit_code = Exit.INPUT


async def run_job(name: str, settings: TrainerSettings, trigger: str = "manual") -> RunRecord:
    record = RunRecord(job=name, trigger=trigger, started_at=datetime.now(UTC))
    log.info("job_started", job=name, trigger=trigger, data_dir=str(settings.data_dir), dataset=settings.dataset.uri,
             work_dir=str(settings.jobs.work_dir), releases=settings.gate.release_uri)
    try:
        await _run(name, settings, record)
    except Exception as exc:
        record.outcome, record.error, record.exception = "failed", f"{type(exc).__name__}: {exc}", exc
        record.finished_at = datetime.now(UTC)
        if isinstance(getattr(exc, "exit_code", None), int):  # a failure its type names and explains
            log.error("job_failed", job=name, trigger=trigger, error=record.error)
        else:
            log.exception("job_failed", job=name, trigger=trigger)
    record.finished_at = record.finished_at or datetime.now(UTC)
    return record


async def _run(name: str, settings: TrainerSettings, record: RunRecord) -> None:
    dataset = DataSet.open(settings.dataset.uri, settings.fetch, settings.dataset)
    manifest = await dataset.manifest()
    examples = await dataset.load()
    if not examples:
        raise NoLabelledData(f"no labelled events in {settings.dataset.uri}")
    held = await asyncio.to_thread(split, examples, settings.gate.held_out_fraction)
    composition = Composition.of(held.random_sample)
    if composition.total < settings.gate.min_held_out:  # no gate could pass: do not spend the training
        record.outcome = "refused"
        record.decision = {"reason": f"{composition.total} held-out labels, fewer than gate.min_held_out="
                           f"{settings.gate.min_held_out}", "held_out": composition.total,
                           "composition": asdict(composition)}
        log.info("release_decision", job=name, trigger=record.trigger, outcome=record.outcome, **record.decision)
        return
    serving_guard = await _serving_guard(settings)
    record.serving_version = serving_guard.model_version
    verdicts = {example.event.event_id: example.verdict for example in examples if example.verdict is not None}
    training = TrainingData(held.training, settings.dataset.uri, manifest.updated_at.isoformat(), composition.total,
                            verdicts=verdicts, serving=serving_guard)
    run_dir = settings.jobs.work_dir / f"{name}-{record.started_at:%Y%m%dT%H%M%S%f}"
    candidate = await asyncio.to_thread(make_job(name, settings).train, training, run_dir / "candidate")
    record.version = candidate.version

    candidate_guard = _candidate_guard(settings.guard, candidate)
    serving, serving_verdicts = await _evaluate(serving_guard, held.evaluation, settings)
    scored, verdicts = await _evaluate(candidate_guard, held.evaluation, settings)
    random_part = await asyncio.to_thread(held.random_part, verdicts, serving_verdicts)
    regression = await _regression(serving_guard, candidate_guard, settings)
    decision = decide(scored, serving, composition.total, settings.gate, composition, random_part, regression)
    record.decision = decision.to_dict()
    report = await write_run_report(scored, serving, run_dir / "report", f"{name} candidate {candidate.version}",
                                    f"serving {serving_guard.model_version}")
    await asyncio.to_thread(_add_training_figures, report, candidate)
    record.report = await _store_folder(settings, f"{candidate.version}/report", report.parent)
    if decision.release:
        record.artefact_uri = await _store_artefact(settings, candidate)
        await _publish(settings, _release(settings, candidate, record.artefact_uri, scored, serving))
    record.outcome = "released" if decision.release else "refused"
    record.finished_at = datetime.now(UTC)  # decision.json is the run's record: it says when the run ended
    await _store_bytes(settings, f"{candidate.version}/decision.json", dumps(record.to_dict()))
    _log_decision(record, decision)


async def write_run_report(scored: Evaluation, serving: Evaluation, out: Path, title: str,
                           serving_name: str) -> Path:
    """The candidate's report against the serving model, written on a thread: its plots take seconds."""
    return await asyncio.to_thread(write_report, scored, out, title, baseline=serving, baseline_name=serving_name)


async def _serving_guard(settings: TrainerSettings) -> GuardSettings:
    topics = TopicNames(settings.kafka.topic_prefix)
    release = await current_release(settings.kafka, topics.models, settings.guard.model_name)
    if release is None:
        return settings.guard
    path = await materialise(release.artefact_uri, settings.fetch, settings.guard.artefact_cache_dir)
    return release_settings(settings.guard, release, path)


def _add_training_figures(report: Path, candidate: Candidate) -> None:
    """The job's own figures (loss, reward, clip range, tokens/s) copied beside the evaluation, and named in it."""
    if not candidate.report_files:
        return
    lines = ["", "## Training", "", f"Figures of the job that made {candidate.version}:", ""]
    for path in candidate.report_files:
        shutil.copy2(path, report.parent / f"training-{path.name}")
        lines.append(f"![training](training-{path.name})" if path.suffix == ".png" else
                     f"- [training-{path.name}](training-{path.name})")
    summary = candidate.metadata.get("figures")
    if summary:
        lines += ["", "| figure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in summary.items())]
    with report.open("a") as out:
        out.write("\n".join(lines) + "\n")


def _candidate_guard(guard: GuardSettings, candidate: Candidate) -> GuardSettings:
    local = ModelRelease(name=guard.model_name, version=candidate.version, backend=candidate.backend,
                         artefact_uri=str(candidate.artefact), kind=candidate.kind, base_model=candidate.base_model)
    return release_settings(guard, local, candidate.artefact)


async def _regression(serving: GuardSettings, candidate: GuardSettings,
                      settings: TrainerSettings) -> RandomPart | None:
    """Both models scored on the regression set, or None where the gate is told to score none."""
    if settings.gate.regression_max_items == 0:
        return None
    items = await asyncio.to_thread(regression_set, settings.gate.regression_max_items)
    (serving_figures, _), (candidate_figures, _) = (await _evaluate(serving, items, settings),
                                                    await _evaluate(candidate, items, settings))
    return RandomPart(candidate=candidate_figures, serving=serving_figures)


async def _evaluate(guard: GuardSettings, items: list[LabelledEvent],
                    settings: TrainerSettings) -> tuple[Evaluation, list[Verdict]]:
    backend = await asyncio.to_thread(load_backend, guard)
    try:
        async with OfflineModerator(backend, guard, settings.fetch) as moderator:
            return await evaluate(moderator, items, settings.gate.eval_batch_size)
    finally:
        await backend.close()


def _release(settings: TrainerSettings, candidate: Candidate, artefact_uri: str, scored: Evaluation,
             serving: Evaluation) -> ModelRelease:
    metrics = {**scored.metrics(), **{f"serving_{k}": v for k, v in serving.metrics().items()}}
    return ModelRelease(name=settings.guard.model_name, version=candidate.version, backend=candidate.backend,
                        artefact_uri=artefact_uri, kind=candidate.kind, base_model=candidate.base_model, metrics=metrics)


async def _publish(settings: TrainerSettings, release: ModelRelease) -> None:
    producer = AIOKafkaProducer(**client_options(settings.kafka), acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(TopicNames(settings.kafka.topic_prefix).models,
                                     release.model_dump_json().encode(), key=release.name.encode())
    finally:
        await producer.stop()


def _location(settings: TrainerSettings, relative: str) -> str:
    """Where `relative` lands under the release location, as a URI workers can load (s3://…, or a path)."""
    base = settings.gate.release_uri
    if urlsplit(base).scheme == "s3":
        return f"{base.rstrip('/')}/{relative}"
    return str((Path(urlsplit(base).path if base.startswith("file:") else base) / relative).resolve())


async def _store_bytes(settings: TrainerSettings, relative: str, body: bytes) -> str:
    await obstore.put_async(open_store(settings.gate.release_uri, settings.fetch), relative, body)
    return _location(settings, relative)


async def _store_file(settings: TrainerSettings, relative: str, path: Path) -> str:
    return await _store_bytes(settings, relative, await asyncio.to_thread(path.read_bytes))


async def _store_folder(settings: TrainerSettings, relative: str, folder: Path) -> str:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        await _store_file(settings, f"{relative}/{path.relative_to(folder).as_posix()}", path)
    return _location(settings, relative)


async def _store_artefact(settings: TrainerSettings, candidate: Candidate) -> str:
    if candidate.artefact.is_dir():
        return await _store_folder(settings, f"{candidate.version}/artefact", candidate.artefact)
    return await _store_file(settings, f"{candidate.version}/{candidate.artefact.name}", candidate.artefact)


def _log_decision(record: RunRecord, decision: GateDecision) -> None:
    log.info("release_decision", job=record.job, trigger=record.trigger, outcome=record.outcome,
             candidate=record.version, serving=record.serving_version, reason=decision.reason,
             candidate_f1=decision.candidate_f1, serving_f1=decision.serving_f1, held_out=decision.held_out,
             composition=decision.composition, random_candidate_f1=decision.random_candidate_f1,
             random_serving_f1=decision.random_serving_f1, candidate_error_rate=decision.candidate_error_rate,
             task_change=decision.task_change, report=record.report)
