"""Running the real `guardstream` console script in tests, pointed at the test fixtures' broker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from workers.settings import WorkerSettings

SCRIPT = Path(sys.executable).parent / "guardstream"


def cli_env(settings: WorkerSettings, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment a command gets: the test's broker and topic prefix, a data folder of the test's own."""
    return {**os.environ, "GUARDSTREAM_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
            "GUARDSTREAM_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix, "GUARDSTREAM_DATA_DIR": str(data_dir),
            "HF_HUB_OFFLINE": "1", **extra}


@dataclass(frozen=True)
class Finished:
    code: int
    stdout: str
    stderr: str

    @property
    def one_line_error(self) -> str:
        """stderr, asserted to be exactly one line."""
        assert self.stderr.count("\n") == 1 and self.stderr.endswith("\n"), self.stderr
        return self.stderr.strip()


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([str(SCRIPT), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str], timeout_s: float = 300) -> Finished:
    stdout, stderr = process.communicate(timeout=timeout_s)
    return Finished(process.returncode, stdout, stderr)


async def guardstream(args: list[str], env: dict[str, str], timeout_s: float = 300) -> Finished:
    """Run `guardstream ARGS` to the end, off the test's event loop."""
    return await asyncio.to_thread(lambda: finish(start(args, env), timeout_s))
