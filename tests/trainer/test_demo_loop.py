"""`guardstream demo --loop`, as the README gives it: the demo's table of verdicts, labels in, a released refit,
the same events judged again; off a terminal (as here), every column labelled; what it writes under the data
directory, kept, and nothing in the working directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


def header_cells(stdout: str, first: str) -> list[str]:
    """The header cells of the table whose header starts with `first`."""
    [line] = [line for line in stdout.splitlines() if re.match(rf"┃ {first}\s+┃", line)]
    return [cell.strip() for cell in line.strip("┃").split("┃")]


def test_the_loop_demo_gates_a_refit_and_the_worker_answers_the_samples_with_the_model_the_gate_chose(
        tmp_path: Path, data_dir: Path) -> None:
    """The gate decides on content-held-out labels; the demo shows its decision either way, and a release is
    served (a refusal keeps the shipped model: the gate, not the demo, says whether the refit is better)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    run = subprocess.run([sys.executable, "-m", "guardstream", "demo", "--loop"], capture_output=True, text=True,
                         timeout=600, cwd=cwd, env={**os.environ, "COLUMNS": "200"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    decided = re.search(r"(released|refused) (lite-\S+): F1 ([0-9.]+) against the serving model's ([0-9.]+) "
                        r"on (\d+) held-out labels \((.+?)\)", run.stdout)
    assert decided, run.stdout[-3000:]
    outcome, version, candidate_f1, serving_f1, held_out, reason = decided.groups()
    assert int(held_out) >= 5 and reason
    if outcome == "released":
        assert float(candidate_f1) > float(serving_f1)
        assert f"after the loop (model {version})" in run.stdout
    else:
        assert f"after the loop (model {version})" not in run.stdout
    wrong = re.search(r"the serving model got (\d+) of (\d+) traffic verdicts wrong", run.stdout)
    assert wrong and 0 < int(wrong[1]) < int(wrong[2])  # something to learn from, and a model worth refitting

    # the first phase's table, as `demo` prints it, before the loop goes on
    first = re.search(r"verdicts \((\d+) of (\d+)\)", run.stdout)
    assert first and run.stdout.index(first[0]) < run.stdout.index("traffic verdicts wrong"), run.stdout[:3000]
    assert header_cells(run.stdout, "event") == ["event", "input", "request", "response", "cache", "reasoning"]
    assert header_cells(run.stdout, "input") == ["input", "before", "after", "changed"]

    # every path it printed is there after it exits, under the data directory; the working directory is untouched
    folder = Path(re.search(r"loop data (\S+)", run.stdout)[1])  # type: ignore[index]
    report = Path(re.search(r"report:\s+(\S+)", run.stdout)[1])  # type: ignore[index]
    dataset = Path(re.search(r"examples in (\S+);", run.stdout)[1])  # type: ignore[index]
    assert folder.parent.parent == data_dir and folder.is_dir()
    assert report.is_relative_to(folder) and (report / "report.md").is_file()
    assert dataset.is_relative_to(folder) and dataset.is_dir()
    assert list(cwd.iterdir()) == []
