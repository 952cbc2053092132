"""Loading the lite guard prints no progress noise ("Loading weights" bars), on a command and on its own,
while an error the model libraries log still shows. Each case runs in a process of its own, as a user's
command does: progress-bar state is global."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from workers.guard import lite_encoder
from workers.guard.lite_encoder import BaseModelIncomplete, load_base

GUARDSTREAM = Path(sys.executable).with_name("guardstream")


def noise(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "Loading" in line or "it/s]" in line]


def test_a_command_that_loads_the_lite_guard_prints_no_loading_progress(tmp_path: Path) -> None:
    (tmp_path / "one.jsonl").write_text('{"prompt": "hello there", "request_label": "unharmful"}\n')
    run = subprocess.run([str(GUARDSTREAM), "audit", "one.jsonl"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "GUARDSTREAM_DATA_DIR": str(tmp_path / "data")})
    assert run.returncode == 0, run.stderr[-3000:]
    assert noise(run.stderr) == [], run.stderr


def test_loading_the_base_model_is_silent_and_a_logged_error_still_shows() -> None:
    script = ("from workers.guard.lite_encoder import load_base; load_base(1)\n"
              "from transformers.utils import logging\n"
              "logging.get_logger('transformers.modeling_utils').error('a real error')\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert noise(run.stderr) == [], run.stderr
    assert "a real error" in run.stderr


def test_a_checkpoint_that_does_not_fill_the_model_is_an_error_not_a_warning(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = Path(lite_encoder.base_model_path()) / "config.json"
    folder = tmp_path / "bigger"
    folder.mkdir()
    for part in Path(lite_encoder.base_model_path()).iterdir():
        if part.is_file():
            (folder / part.name).symlink_to(part)
    (folder / "config.json").unlink()
    (folder / "config.json").write_text(config.read_text().replace('"num_hidden_layers": 6', '"num_hidden_layers": 7'))
    monkeypatch.setattr(lite_encoder, "base_model_path", lambda: str(folder))

    with pytest.raises(BaseModelIncomplete, match="encoder.layer.6"):
        load_base(1)
