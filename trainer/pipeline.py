"""One run of a job, the same for every job: data, training, evaluation, gate, release.

1. The data set's latest labels are split by event: held-out events (a fixed hash of the event id,
   `gate.held_out_fraction`) are never given to the job.
2. The job trains a candidate (on a thread; it may take minutes).
3. The candidate and the model serving now (the last release in `moderation.models`, else the
   configured guard) are evaluated on the same held-out labels; the report (Markdown, plots, JSON) is
   written locally and stored under `gate.release_uri/<version>/report/`.
4. The gate decides (`trainer/gate.py`). Only a candidate it accepts is uploaded and published as a
   `ModelRelease`, which running workers switch to. Every decision, released or not, is logged with its
   figures, stored beside the report as `decision.json` and returned for the trainer's status.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import obstore
import structlog
from aiokafka import AIOKafkaProducer

from schemas.events import ModelRelease
from topics.registry import TopicNames
from trainer.dataset import DataSet, dumps, held_out, open_store
from trainer.eval_report import write_report
from trainer.evaluate import Evaluation, evaluate
from trainer.gate import GateDecision, decide
from trainer.jobs import Candidate, TrainingData, make_job
from trainer.labelled import LabelledEvent
from trainer.settings import TrainerSettings
from workers.artefacts import materialise
from workers.guard.registry import load_backend
from workers.kafka_clients import client_options
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class NoLabelledData(RuntimeError):
    """The data set holds no labelled events yet: there is nothing to train or evaluate on."""


async def run_job(name: str, settings: TrainerSettings, trigger: str = "manual") -> RunRecord:
    record = RunRecord(job=name, trigger=trigger, started_at=datetime.now(UTC))
    try:
        await _run(name, settings, record)
    except Exception as exc:
        record.outcome, record.error = "failed", f"{type(exc).__name__}: {exc}"
        log.exception("job_failed", job=name, trigger=trigger)
    record.finished_at = datetime.now(UTC)
    return record


async def _run(name: str, settings: TrainerSettings, record: RunRecord) -> None:
    dataset = DataSet.open(settings.dataset.uri, settings.fetch)
    manifest = await dataset.manifest()
    labelled = [example.labelled() for example in await dataset.load()]
    if not labelled:
        raise NoLabelledData(f"no labelled events in {settings.dataset.uri}")
    fraction = settings.gate.held_out_fraction
    evaluation_set = [e for e in labelled if held_out(e.event.event_id, fraction)]
    training = TrainingData([e for e in labelled if not held_out(e.event.event_id, fraction)], settings.dataset.uri,
                            manifest.updated_at.isoformat(), len(evaluation_set))
    if len(evaluation_set) < settings.gate.min_held_out:  # no gate could pass: do not spend the training
        record.outcome = "refused"
        record.decision = {"reason": f"{len(evaluation_set)} held-out labels, fewer than gate.min_held_out="
                           f"{settings.gate.min_held_out}", "held_out": len(evaluation_set)}
        log.info("release_decision", job=name, trigger=record.trigger, outcome=record.outcome, **record.decision)
        return
    run_dir = settings.jobs.work_dir / f"{name}-{record.started_at:%Y%m%dT%H%M%S%f}"
    candidate = await asyncio.to_thread(make_job(name, settings).train, training, run_dir / "candidate")
    record.version = candidate.version

    serving_guard = await _serving_guard(settings)
    record.serving_version = serving_guard.model_version
    serving = await _evaluate(serving_guard, evaluation_set, settings)
    scored = await _evaluate(_candidate_guard(settings.guard, candidate), evaluation_set, settings)
    decision = decide(scored, serving, len(evaluation_set), settings.gate)
    record.decision = decision.to_dict()
    report = write_report(scored, run_dir / "report", f"{name} candidate {candidate.version}", baseline=serving,
                          baseline_name=f"serving {serving_guard.model_version}")
    record.report = await _store_folder(settings, f"{candidate.version}/report", report.parent)
    if decision.release:
        record.artefact_uri = await _store_artefact(settings, candidate)
        await _publish(settings, _release(settings, candidate, record.artefact_uri, scored, serving))
    record.outcome = "released" if decision.release else "refused"
    await _store_bytes(settings, f"{candidate.version}/decision.json", dumps(record.to_dict()))
    _log_decision(record, decision)


async def _serving_guard(settings: TrainerSettings) -> GuardSettings:
    topics = TopicNames(settings.kafka.topic_prefix)
    release = await current_release(settings.kafka, topics.models, settings.guard.model_name)
    if release is None:
        return settings.guard
    path = await materialise(release.artefact_uri, settings.fetch, settings.guard.artefact_cache_dir)
    return release_settings(settings.guard, release, path)


def _candidate_guard(guard: GuardSettings, candidate: Candidate) -> GuardSettings:
    local = ModelRelease(name=guard.model_name, version=candidate.version, backend=candidate.backend,
                         artefact_uri=str(candidate.artefact), kind=candidate.kind, base_model=candidate.base_model)
    return release_settings(guard, local, candidate.artefact)


async def _evaluate(guard: GuardSettings, items: list[LabelledEvent], settings: TrainerSettings) -> Evaluation:
    backend = await asyncio.to_thread(load_backend, guard)
    try:
        async with OfflineModerator(backend, guard, settings.fetch) as moderator:
            evaluation, _ = await evaluate(moderator, items, settings.gate.eval_batch_size)
    finally:
        await backend.close()
    return evaluation


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


async def _store_folder(settings: TrainerSettings, relative: str, folder: Path) -> str:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        await _store_bytes(settings, f"{relative}/{path.relative_to(folder).as_posix()}", path.read_bytes())
    return _location(settings, relative)


async def _store_artefact(settings: TrainerSettings, candidate: Candidate) -> str:
    if candidate.artefact.is_dir():
        return await _store_folder(settings, f"{candidate.version}/artefact", candidate.artefact)
    return await _store_bytes(settings, f"{candidate.version}/{candidate.artefact.name}", candidate.artefact.read_bytes())


def _log_decision(record: RunRecord, decision: GateDecision) -> None:
    log.info("release_decision", job=record.job, trigger=record.trigger, outcome=record.outcome,
             candidate=record.version, serving=record.serving_version, reason=decision.reason,
             candidate_f1=decision.candidate_f1, serving_f1=decision.serving_f1, held_out=decision.held_out,
             task_change=decision.task_change, report=record.report)
