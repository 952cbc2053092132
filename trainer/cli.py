"""`guardstream train ...`"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import typer

from runtime.cli_errors import CommandFailed, Exit
from runtime.input_lines import BadLine, PartialInput
from runtime.logs import configure_logging
from runtime.service import check_config_only, load_settings, start_service
from trainer.labelled import LABEL_WORDS
from workers.dependencies import service_dependencies

if TYPE_CHECKING:
    from trainer.evaluate import Evaluation
    from trainer.labelled import LabelledEvent
    from trainer.settings import TrainerSettings
    from workers.settings import GuardSettings, WorkerSettings

S = TypeVar("S", "WorkerSettings", "TrainerSettings")

app = typer.Typer(help="Training jobs.", no_args_is_help=True)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "workers" / "guard" / "artefacts" / "lite_tuned.safetensors"
DEFAULT_REPORT = ROOT / "bench" / "results"


@app.command("lite-head")
def lite_head(
    out: Path = typer.Option(DEFAULT_OUT, help="where to write the model (safetensors)"),
    report: Path = typer.Option(DEFAULT_REPORT, help="folder for lite-eval.json, lite-eval.md and lite-eval.png"),
    threads: int = typer.Option(2, help="CPU threads for training"),
    epochs: float = typer.Option(2.0, help="passes over the training data, per stage"),
    keep_stages: bool = typer.Option(False, help="keep the stages already in OUT: choose the operating points "
                                     "and measure again, without training"),
) -> None:
    """Fine-tune the lite guard's request and response stages; print the figures on its test data."""
    from trainer.lite_build import SEED, build_lite_model
    from trainer.lite_tune import TuneConfig

    model = build_lite_model(out, report, TuneConfig(epochs=epochs, threads=threads, seed=SEED), keep_stages)
    balanced = model.metadata["evaluation"]["after"]["balanced"]["contrast"]
    typer.echo(json.dumps({"balanced": {"requests": balanced["requests"], "responses": balanced["responses"]},
                           "points": {k: [v["request"], v["response"]] for k, v in model.operating_points.items()}}))
    typer.echo(f"wrote {out} and {report}/lite-eval.md")


@app.command("run")
def run(job: str = typer.Argument(..., help="the job's name, e.g. lite-refit")) -> None:
    """Run a job once by hand: train on the data set, evaluate against the serving model, release if better."""
    from trainer.pipeline import run_job
    from trainer.settings import TrainerSettings

    settings = TrainerSettings()
    configure_logging(settings.observability.log_format, settings.observability.log_level)
    record = asyncio.run(run_job(job, settings, trigger="manual"))
    if record.exception is not None:  # one line and the code its type gives (the record is in the log)
        raise record.exception
    typer.echo(json.dumps(record.to_dict(), default=str, indent=1))


def trainer_command(
    check_config: bool = typer.Option(False, "--check-config", help="validate the settings, print them (secrets "
                                      "masked) as one JSON line and exit: no connection"),
) -> None:
    """Run the trainer service: audit labels into the data set, jobs on a schedule and after new labels.
    At start the brokers and the S3 endpoint (when set) must answer, else exit 4."""
    from trainer.settings import TrainerSettings

    if check_config:
        check_config_only("trainer", TrainerSettings)
        return
    from trainer.service import TrainerService

    settings = load_settings(TrainerSettings)
    start_service(lambda: TrainerService(settings), settings, service_dependencies(settings.kafka, None, settings.fetch))


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
    release: str = typer.Option(None, help="'latest': score the model the trainer released last (read from the "
                                "models topic, as workers do) instead of the configured guard"),
    out: Path = typer.Option(Path("eval-report"), help="folder for report.md, evaluation.json and the plots"),
    batch_size: int = typer.Option(16, min=1),
    strict: bool = typer.Option(False, "--strict", help="stop at the first line of --data that cannot be read "
                                "(exit 3) instead of scoring the others and exiting 6"),
) -> None:
    """Score a backend on labelled data: P/R/F1 per task and modality, threshold sweep, confusion, mistakes.
    Undefined figures (F1 of a group without harmful items) are "n/a" in the report and null here."""
    from trainer.settings import TrainerSettings

    if release not in (None, "latest"):
        raise CommandFailed(f"--release {release!r}: the only release eval can score is 'latest'", Exit.USAGE)
    settings = _quiet(TrainerSettings(), backend)
    run = asyncio.run(_evaluate_to(settings, data, dataset, split, out, batch_size, strict, release == "latest"))
    typer.echo(json.dumps({"report": str(run.report), "model": run.model, "unread_lines": len(run.unread),
                           **run.evaluation.figures()}))
    if run.unread or run.evaluation.error_count:
        raise _eval_partial(run, data)


@dataclass(frozen=True)
class _EvalRun:
    evaluation: Evaluation
    report: Path
    model: dict[str, str]
    unread: list[BadLine]


def _eval_partial(run: _EvalRun, data: Path | None) -> PartialInput:
    parts = [f"{len(run.unread)} lines of {data} could not be read, first {run.unread[0]}"] if run.unread else []
    if run.evaluation.error_count:
        parts.append(f"{run.evaluation.error_count} decisions got an error verdict (scored as wrong answers)")
    return PartialInput(f"{'; '.join(parts)}; the report lists each: {run.report}")


async def _evaluate_to(settings: TrainerSettings, data: Path | None, dataset: str | None, split: str, out: Path,
                       batch_size: int, strict: bool = False, latest: bool = False) -> _EvalRun:
    from trainer.eval_report import write_report
    from trainer.evaluate import evaluate
    from workers.guard.registry import load_backend
    from workers.offline import OfflineModerator

    if split not in ("held-out", "all"):
        raise CommandFailed(f"--split {split!r}: use held-out or all", Exit.USAGE)
    fetch = settings.fetch
    if data is not None:
        items, unread = _labelled_lines(data, strict)
        if fetch.file_root is None:
            fetch = fetch.model_copy(update={"file_root": data.resolve().parent})
    else:
        items, unread = await _dataset_items(settings, dataset, split), []
    if not items:
        raise _nothing_to_score(data, dataset or settings.dataset.uri, split, unread)
    guard = await _released_guard(settings) if latest else settings.guard
    backend = load_backend(guard)
    # error details (an image's path) for a file of the user's own; the data set's events came from producers
    try:
        async with OfflineModerator(backend, guard, fetch, details=data is not None) as moderator:
            evaluation, _ = await evaluate(moderator, items, batch_size)
    finally:
        await backend.close()
    title = f"{guard.backend} {guard.model_version} on {data.name if data else 'audit labels'}"
    report = write_report(evaluation, out, title, unread=unread)
    return _EvalRun(evaluation, report, {"backend": guard.backend, "version": guard.model_version}, unread)


def _nothing_to_score(data: Path | None, dataset: str, split: str, unread: list[BadLine]) -> CommandFailed:
    if data is None:
        return CommandFailed(f"no labelled items in {dataset} (split {split}): label verdicts in the console "
                             "first, or try --split all")
    unreadable = f" (unreadable lines: {len(unread)}, first {unread[0]})" if unread else ""
    return CommandFailed(f"no labelled items in {data}{unreadable}: label lines with request_label or "
                         f"response_label ({LABEL_WORDS})")


def _labelled_lines(data: Path, strict: bool) -> tuple[list[LabelledEvent], list[BadLine]]:
    """The labelled items of a reference-layout file and the lines that could not be read (strict: raise
    at the first)."""
    from trainer.labelled import BadLabelledFile, ReferenceLine, reference_lines

    items, unread = [], []
    for line in reference_lines(data):
        if isinstance(line, BadLine):
            if strict:
                raise BadLabelledFile(line)
            unread.append(line)
        elif isinstance(line, ReferenceLine) and line.labelled:
            items.append(line.labelled_event(data.name))
    return items, unread


async def _dataset_items(settings: TrainerSettings, dataset: str | None, split: str) -> list[LabelledEvent]:
    from trainer.dataset import DataSet
    from trainer.held_out import is_held_out

    examples = await DataSet.open(dataset or settings.dataset.uri, settings.fetch, settings.dataset).load()
    return [e.labelled() for e in examples if split == "all" or is_held_out(e.event, settings.gate.held_out_fraction)]


async def _released_guard(settings: TrainerSettings) -> GuardSettings:
    """The guard settings of the model the trainer released last, as a worker would load it."""
    from topics.registry import TopicNames
    from workers.artefacts import materialise
    from workers.model_watch import ModelTopicMissing, current_release
    from workers.served_model import release_settings

    topic = TopicNames(settings.kafka.topic_prefix).models
    try:
        release = await current_release(settings.kafka, topic, settings.guard.model_name)
    except ModelTopicMissing as exc:
        raise CommandFailed(f"--release latest: {exc}; create the topics (`guardstream topics create`) and "
                            "let the trainer release a model, or leave out --release") from exc
    if release is None:
        raise CommandFailed(f"--release latest: no release of {settings.guard.model_name} on {topic} yet; the "
                            "trainer publishes one when a candidate passes the gate (leave out --release to score "
                            "the configured guard)")
    path = await materialise(release.artefact_uri, settings.fetch, settings.guard.artefact_cache_dir)
    return release_settings(settings.guard, release, path)


def audit_command(
    file: Path = typer.Argument(..., help="JSONL: prompt, image(s), response[, labels]"),
    out: Path = typer.Option(None, help="verdicts JSONL (default: FILE's name + .verdicts.jsonl)"),
    report: Path = typer.Option(None, help="report folder when the file has labels (default: beside --out)"),
    backend: str = typer.Option(None, help="guard backend (default: settings)"),
    batch_size: int = typer.Option(16, min=1),
    strict: bool = typer.Option(False, "--strict", help="stop at the first line that cannot be read (exit 3) "
                                "instead of giving it an error verdict and exiting 6"),
) -> None:
    """Judge a JSONL of VLM inputs and outputs offline (no broker); write verdicts, and a report if labelled.
    A line that cannot be read or judged gets an error verdict saying why, and the exit code is 6."""
    from trainer.audit_file import audit_file, incomplete
    from workers.settings import WorkerSettings

    settings = _quiet(WorkerSettings(), backend)
    target = out or file.with_name(f"{file.stem}.verdicts.jsonl")
    summary = asyncio.run(audit_file(file, target, settings.guard, settings.fetch, report, batch_size, strict))
    typer.echo(json.dumps(asdict(summary), default=str))
    failed = incomplete(summary, file)
    if failed is not None:
        raise failed
