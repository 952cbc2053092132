"""`guardstream audit FILE`: judge a JSONL of VLM inputs and outputs offline, without a broker.

The file is in the reference benchmarks' layout (`trainer/labelled.py`): prompt, images, response and,
optionally, labels. Every line gets a verdict, in input order, written as JSONL (a line that cannot be
judged gets an error verdict saying why). Where lines carry labels, the evaluation report (Markdown and
plots) is written too. Relative image paths are read from the file's folder; unless `fetch.file_root`
says otherwise, that folder is the only one images may come from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainer.eval_report import write_report
from trainer.evaluate import judge, score
from trainer.labelled import LabelledEvent, read_reference_jsonl
from workers.guard.registry import load_backend
from workers.offline import OfflineModerator
from workers.settings import FetchSettings, GuardSettings


@dataclass(frozen=True)
class AuditSummary:
    items: int
    errors: int
    request_harmful: int
    response_harmful: int
    labelled: int
    f1: float | None
    verdicts: Path
    report: Path | None


async def audit_file(path: Path, out: Path, guard: GuardSettings, fetch: FetchSettings, report_dir: Path | None,
                     batch_size: int = 16) -> AuditSummary:
    pairs = list(read_reference_jsonl(path))
    if fetch.file_root is None:
        fetch = fetch.model_copy(update={"file_root": path.resolve().parent})
    backend = load_backend(guard)
    try:
        async with OfflineModerator(backend, guard, fetch) as moderator:
            verdicts = await judge(moderator, [event for _, event in pairs], batch_size, description=f"auditing {path.name}")
    finally:
        await backend.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(v.model_dump_json() + "\n" for v in verdicts), encoding="utf-8")
    labelled = [(LabelledEvent(event, item.request_label, item.response_label, source=path.name), verdict)
                for (item, event), verdict in zip(pairs, verdicts, strict=True)
                if item.request_label is not None or item.response_label is not None]
    report, f1 = None, None
    if labelled:
        evaluation = score([item for item, _ in labelled], [verdict for _, verdict in labelled])
        report = write_report(evaluation, report_dir or out.parent / f"{out.stem}-report", f"audit of {path.name}")
        f1 = evaluation.f1
    return AuditSummary(
        items=len(verdicts), errors=sum(v.error is not None for v in verdicts),
        request_harmful=sum(bool(v.request_harmful) for v in verdicts),
        response_harmful=sum(bool(v.response_harmful) for v in verdicts),
        labelled=len(labelled), f1=f1, verdicts=out, report=report)
