"""`guardstream train ...`"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import typer

from workers.logs import configure_logging
from workers.runtime import run_service

if TYPE_CHECKING:
    from trainer.evaluate import Evaluation
    from trainer.settings import TrainerSettings
    from workers.settings import WorkerSettings

S = TypeVar("S", "WorkerSettings", "TrainerSettings")

app = typer.Typer(help="Training jobs.", no_args_is_help=True)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "workers" / "guard" / "artefacts" / "lite_text_head.json"
DEFAULT_REPORT = ROOT / "bench" / "results"


@app.command("lite-head")
def lite_head(
    out: Path = typer.Option(DEFAULT_OUT, help="where to write the model (JSON)"),
    report: Path = typer.Option(DEFAULT_REPORT, help="folder for lite-eval.json, lite-eval.md and lite-eval.png"),
    threads: int = typer.Option(2, help="CPU threads for the embedding model"),
) -> None:
    """Train the lite guard's request and response heads; print the evaluation away from the training data."""
    from trainer.lite_build import build_lite_model

    model = build_lite_model(out, report, threads)
    evaluation = model.metadata["evaluation"]
    typer.echo(json.dumps({"headline": evaluation["headline"], "hard_cases": evaluation["hard_cases"]["passed"],
                           "bands": evaluation["cascade_bands"]["default"]}))
    typer.echo(f"wrote {out} and {report}/lite-eval.md")


@app.command("run")
def run(job: str = typer.Argument(..., help="the job's name, e.g. lite-refit")) -> None:
    """Run a job once by hand: train on the data set, evaluate against the serving model, release if better."""
    from trainer.pipeline import run_job
    from trainer.settings import TrainerSettings

    settings = TrainerSettings()
    configure_logging(settings.observability.log_format, settings.observability.log_level)
    record = asyncio.run(run_job(job, settings, trigger="manual"))
    typer.echo(json.dumps(record.to_dict(), default=str, indent=1))
    raise typer.Exit(0 if record.outcome != "failed" else 1)


def trainer_command() -> None:
    """Run the trainer service: audit labels into the data set, jobs on a schedule and after new labels."""
    from trainer.service import TrainerService
    from trainer.settings import TrainerSettings

    settings = TrainerSettings()
    run_service(TrainerService(settings), settings.observability)


def _quiet(settings: S, backend: str | None) -> S:
    """Settings for a command that prints its result: warnings only in the log, the backend it was given."""
    if backend:
        settings.guard.backend = backend
    configure_logging(settings.observability.log_format, "warning")
    return settings


def eval_command(
    data: Path = typer.Option(None, help="a labelled JSONL in the reference layout (prompt, image, response, labels)"),
    dataset: str = typer.Option(None, help="the trainer's data set (a folder or s3://…); default: dataset.uri"),
    split: str = typer.Option("held-out", help="with the data set: held-out (never trained on) or all"),
    backend: str = typer.Option(None, help="guard backend (default: settings)"),
    out: Path = typer.Option(Path("eval-report"), help="folder for report.md, evaluation.json and the plots"),
    batch_size: int = typer.Option(16, min=1),
) -> None:
    """Score a backend on labelled data: P/R/F1 per task and modality, threshold sweep, confusion, mistakes."""
    from trainer.settings import TrainerSettings

    settings = _quiet(TrainerSettings(), backend)
    evaluation, report = asyncio.run(_evaluate_to(settings, data, dataset, split, out, batch_size))
    typer.echo(json.dumps({"report": str(report), **evaluation.metrics()}))


async def _evaluate_to(settings: TrainerSettings, data: Path | None, dataset: str | None, split: str, out: Path,
                       batch_size: int) -> tuple[Evaluation, Path]:
    from trainer.dataset import DataSet, held_out
    from trainer.eval_report import write_report
    from trainer.evaluate import evaluate
    from trainer.labelled import labelled_from_jsonl
    from workers.guard.registry import load_backend
    from workers.offline import OfflineModerator

    if split not in ("held-out", "all"):
        raise typer.BadParameter("split is held-out or all", param_hint="--split")
    fetch = settings.fetch
    if data is not None:
        items = labelled_from_jsonl(data)
        if fetch.file_root is None:
            fetch = fetch.model_copy(update={"file_root": data.resolve().parent})
    else:
        examples = await DataSet.open(dataset or settings.dataset.uri, fetch).load()
        items = [e.labelled() for e in examples
                 if split == "all" or held_out(e.label.event_id, settings.gate.held_out_fraction)]
    if not items:
        raise typer.BadParameter("no labelled items to evaluate")
    backend = load_backend(settings.guard)
    try:
        async with OfflineModerator(backend, settings.guard, fetch) as moderator:
            evaluation, _ = await evaluate(moderator, items, batch_size)
    finally:
        await backend.close()
    title = f"{settings.guard.backend} {settings.guard.model_version} on {data.name if data else 'audit labels'}"
    return evaluation, write_report(evaluation, out, title)


def audit_command(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSONL: prompt, image(s), response[, labels]"),
    out: Path = typer.Option(None, help="verdicts JSONL (default: FILE's name + .verdicts.jsonl)"),
    report: Path = typer.Option(None, help="report folder when the file has labels (default: beside --out)"),
    backend: str = typer.Option(None, help="guard backend (default: settings)"),
    batch_size: int = typer.Option(16, min=1),
) -> None:
    """Judge a JSONL of VLM inputs and outputs offline (no broker); write verdicts, and a report if labelled."""
    from trainer.audit_file import audit_file
    from workers.settings import WorkerSettings

    settings = _quiet(WorkerSettings(), backend)
    target = out or file.with_name(f"{file.stem}.verdicts.jsonl")
    summary = asyncio.run(audit_file(file, target, settings.guard, settings.fetch, report, batch_size))
    typer.echo(json.dumps(asdict(summary), default=str))
