"""Commands that cannot reach their broker, or are called wrongly, end in one line on stderr with the
documented exit code (runtime/cli_errors.py); `--debug` shows the traceback instead."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.cli_errors import Exit
from topics.local_broker import free_loopback_port

REPO = Path(__file__).resolve().parent.parent


def run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GUARDSTREAM_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_loopback_port()}",
           "GUARDSTREAM_DATA_DIR": str(tmp_path), "GUARDSTREAM_CACHE__ENABLED": "false",
           "GUARDSTREAM_STARTUP_WAIT_S": "0"}
    return subprocess.run([sys.executable, "-m", "guardstream", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=180)


@pytest.mark.parametrize("args", [["worker"], ["produce", "examples/events.jsonl"], ["tail", "verdicts"],
                                  ["replay", "--offsets", "0:0-", "--to-topic", "bf"],
                                  ["replay", "--offsets", "0:0-", "--export"]])
def test_a_command_without_its_broker_says_so_in_one_line(args: list[str], tmp_path: Path) -> None:
    done = run(args, tmp_path)
    assert done.returncode == Exit.UNREACHABLE, done.stderr
    assert done.stderr.splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith("guardstream: cannot reach the Kafka brokers") and "Traceback" not in done.stderr


def test_a_wrong_command_line_is_one_usage_line(tmp_path: Path) -> None:
    done = run(["no-such-command"], tmp_path)
    assert done.returncode == Exit.USAGE and len(done.stderr.splitlines()) == 1, done.stderr


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    done = run(["eval", "--data", str(tmp_path / "missing.jsonl")], tmp_path)
    assert done.returncode == Exit.INPUT and done.stderr.strip().endswith("missing.jsonl: no such file or folder")
    assert len(done.stderr.splitlines()) == 1
    debug = run(["eval", "--data", str(tmp_path / "missing.jsonl"), "--debug"], tmp_path)
    assert "Traceback" in debug.stderr and "FileNotFoundError" in debug.stderr
