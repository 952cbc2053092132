"""The lite guard's speed per item, against P5's model, in the same process on the same inputs.

Baseline: P5's lite guard (`artefacts/lite_text_head.json`: frozen all-MiniLM-L6-v2 embeddings, logistic
heads, the refusal detector and the profanity model). Candidate: the shipped fine-tuned guard
(`artefacts/lite_tuned.safetensors`: the request stage on the request, the response stage on the prompt
and response read together). Both run the packed forward. Workloads:
  short requests     chat-length texts, no response
  1,500-char audits  a short request and a 1,500-character response

Each is timed over `--repeats` rounds of `--items` items in batches of `--batch` (the worker's max_batch),
after a warm-up; baseline and candidate rounds alternate, so drift in the machine's speed hits both, and
the median round counts. Writes bench/out/lite_speed.json and bench/out/lite_speed.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.progress import track
from rich.table import Table

from workers.demo_data import SAMPLES
from workers.guard.base import GuardRequest
from workers.guard.lite import LiteGuard
from workers.settings import GuardSettings

OUT = Path("bench/out")
P5 = Path(__file__).resolve().parent.parent / "workers" / "guard" / "artefacts" / "lite_text_head.json"
LONG = ("Here is a detailed answer. " + "The process has several stages, and each one matters for the result. " * 30)


def workloads(items: int) -> dict[str, list[GuardRequest]]:
    texts = [s.text for s in SAMPLES if s.text]
    long = LONG[:1500]
    return {
        "short requests": [GuardRequest(f"{texts[i % len(texts)]} ({i})") for i in range(items)],
        "1,500-char audits": [GuardRequest(f"{texts[i % len(texts)]} ({i})", response=f"{i} {long}"[:1500])
                              for i in range(items)],
    }


def items_per_second(guard: LiteGuard, requests: list[GuardRequest], batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(requests), batch):
        guard.moderate_sync(requests[i:i + batch])
    return len(requests) / (time.perf_counter() - start)


def compare(baseline: LiteGuard, candidate: LiteGuard, requests: list[GuardRequest], batch: int,
            repeats: int) -> tuple[float, float]:
    for guard in (baseline, candidate):
        guard.moderate_sync(requests[:batch])  # warm-up
    rounds: dict[str, list[float]] = {"baseline": [], "candidate": []}
    for _ in track(range(repeats), description="timing", transient=True):
        rounds["baseline"].append(items_per_second(baseline, requests, batch))
        rounds["candidate"].append(items_per_second(candidate, requests, batch))
    return statistics.median(rounds["baseline"]), statistics.median(rounds["candidate"])


def main(items: int, batch: int, repeats: int) -> list[dict[str, object]]:
    candidate = LiteGuard.from_settings(GuardSettings())
    baseline = LiteGuard.from_settings(GuardSettings(lite_artefact=P5))
    rows = []
    for name, requests in workloads(items).items():
        before, after = compare(baseline, candidate, requests, batch, repeats)
        rows.append({"workload": name, "baseline_items_per_s": round(before, 1), "items_per_s": round(after, 1),
                     "ratio": round(after / before, 3)})
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "lite_speed.json").write_text(json.dumps({"items": items, "batch": batch, "repeats": repeats,
                                                      "rows": rows}, indent=2) + "\n")
    plot(rows, OUT / "lite_speed.png")
    table = Table("workload", "P5 heads (items/s)", "fine-tuned (items/s)", "ratio")
    for r in rows:
        table.add_row(str(r["workload"]), str(r["baseline_items_per_s"]), str(r["items_per_s"]), str(r["ratio"]))
    console = Console()
    console.print(table)
    console.print(f"wrote {OUT / 'lite_speed.json'} and {OUT / 'lite_speed.png'}")
    return rows


def plot(rows: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = [str(r["workload"]) for r in rows]
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [float(r["baseline_items_per_s"]) for r in rows], 0.4, label="P5 heads",  # type: ignore[arg-type]
           color="#bbbbbb")
    ax.bar([i + 0.2 for i in x], [float(r["items_per_s"]) for r in rows], 0.4, label="fine-tuned", color="#3b7dd8")  # type: ignore[arg-type]
    ax.set_xticks(list(x), names)
    ax.set_ylabel("items per second (CPU)")
    ax.set_title("lite guard speed per item")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    main(args.items, args.batch, args.repeats)
