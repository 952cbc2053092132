"""`guardstream demo --loop`, as the README gives it: labels in, a released refit, the same events judged again."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def test_the_loop_demo_releases_a_refit_and_the_worker_answers_the_samples_with_it() -> None:
    run = subprocess.run([sys.executable, "-m", "workers", "demo", "--loop"], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "COLUMNS": "200"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    released = re.search(r"released (lite-\S+): F1 ([0-9.]+) against the serving model's ([0-9.]+)", run.stdout)
    assert released, run.stdout[-3000:]
    assert float(released[2]) > float(released[3])
    assert f"after the loop (model {released[1]})" in run.stdout
    wrong = re.search(r"the serving model got (\d+) of (\d+) traffic verdicts wrong", run.stdout)
    assert wrong and 0 < int(wrong[1]) < int(wrong[2])  # something to learn from, and a model worth refitting
