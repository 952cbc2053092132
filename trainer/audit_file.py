"""`guardstream audit FILE`: judge a JSONL of VLM inputs and outputs offline, without a broker.

The file is in the reference benchmarks' layout (`trainer/labelled.py`): prompt, images, response and,
optionally, labels. Every line gets a verdict, in input order, written as JSONL. A line that cannot be read
gets an error verdict naming its line and field; a line that cannot be judged (an image missing, or
outside the allowed folder) gets an error verdict whose message says which image and why (offline there is
no dead-letter topic to hold that detail). With `strict`, the first bad line ends the audit before anything
is judged. Where lines carry labels, the evaluation report (Markdown and plots) is written too, listing
the lines not read. Relative image paths are read from the file's folder; unless `fetch.file_root` says
otherwise, that folder is the only one images may come from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.input_lines import BadLine, PartialInput
from schemas.events import Verdict
from trainer.eval_report import write_report
from trainer.evaluate import judge, score
from trainer.labelled import BadLabelledFile, ReferenceLine, reference_lines
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
    unread_lines: list[dict[str, Any]] = field(default_factory=list)


async def audit_file(path: Path, out: Path, guard: GuardSettings, fetch: FetchSettings, report_dir: Path | None,
                     batch_size: int = 16, strict: bool = False) -> AuditSummary:
    lines = _read(path, strict)
    if fetch.file_root is None:
        fetch = fetch.model_copy(update={"file_root": path.resolve().parent})
    good = [line for line in lines if isinstance(line, ReferenceLine)]
    unread = [line for line in lines if isinstance(line, BadLine)]
    backend = load_backend(guard)
    try:
        async with OfflineModerator(backend, guard, fetch, details=True) as moderator:
            judged = await judge(moderator, [line.event for line in good], batch_size,
                                 description=f"auditing {path.name}")
            verdicts = _in_line_order(lines, judged, moderator)
    finally:
        await backend.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(v.model_dump_json() + "\n" for v in verdicts), encoding="utf-8")
    labelled = [(line.labelled_event(path.name), verdict) for line, verdict in zip(good, judged, strict=True)
                if line.labelled]
    report, f1 = None, None
    if labelled:
        evaluation = score([item for item, _ in labelled], [verdict for _, verdict in labelled])
        report = write_report(evaluation, report_dir or out.parent / f"{out.stem}-report", f"audit of {path.name}",
                              unread=unread)
        f1 = evaluation.overall.f1
    return AuditSummary(
        items=len(verdicts), errors=sum(v.error is not None for v in verdicts),
        request_harmful=sum(bool(v.request_harmful) for v in verdicts),
        response_harmful=sum(bool(v.response_harmful) for v in verdicts),
        labelled=len(labelled), f1=f1, verdicts=out, report=report,
        unread_lines=[bad.to_dict() for bad in unread])


def _read(path: Path, strict: bool) -> list[ReferenceLine | BadLine]:
    lines = list(reference_lines(path))
    first_bad = next((line for line in lines if isinstance(line, BadLine)), None)
    if strict and first_bad is not None:
        raise BadLabelledFile(first_bad)
    return lines


def _in_line_order(lines: list[ReferenceLine | BadLine], judged: list[Verdict],
                   moderator: OfflineModerator) -> list[Verdict]:
    """The verdicts of the good lines with an error verdict in the place of each bad one."""
    answers = iter(judged)
    return [moderator.unread(line.item_id or f"line-{line.number}", str(line)) if isinstance(line, BadLine)
            else next(answers) for line in lines]


def incomplete(summary: AuditSummary, path: Path) -> PartialInput | None:
    """What ends an audit some of whose lines got no answer (not read, or an error verdict); None if none."""
    if not summary.errors:
        return None
    unread = summary.unread_lines
    first = (f" ({len(unread)} could not be read, first {path}:{unread[0]['line']}: "
             f"{unread[0]['field'] or 'the line'}: {unread[0]['problem']})" if unread else "")
    return PartialInput(f"{summary.errors} of {summary.items} lines of {path} got an error verdict{first}; each "
                        f"error verdict in {summary.verdicts} says why")
