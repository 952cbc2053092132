"""The README's walk "A pipeline on your machine", step by step as a user pastes it: every step is the
`guardstream` console script in a process of its own, started from the repository's root with the example
files it ships.

The README's commands are `WALK` below, word for word. The test adds to the environment only what keeps it
apart from other runs on the machine: its own Redis key prefix, free health ports, its own data directory,
and a shorter flush interval for the trainer (30 s by default).
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from schemas.events import ChatEvent, Verdict
from tests.waiting import POLL_S
from trainer.dataset import AuditExample, DataSet
from workers.settings import FetchSettings

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # .venv/bin: where `guardstream` is installed
STEP_TIMEOUT_S = 120
WALK = {  # the README's section "A pipeline on your machine", in its order
    "broker": "guardstream broker --port 0",
    "worker": "guardstream worker",
    "produce": "guardstream produce examples/events.jsonl",
    "tail": "guardstream tail verdicts",
    "label_file": "guardstream label examples/labels.jsonl",
    "label_one": "guardstream label --event-id example-6 --request unharmful --response unharmful --reviewer bob",
    "trainer": "guardstream trainer",
}
EXPORT = "export GUARDSTREAM_KAFKA__BOOTSTRAP_SERVERS="
EVENTS = [ChatEvent.model_validate_json(line) for line in (REPO / "examples/events.jsonl").read_text().splitlines()]
LABELLED = {"example-1": False, "example-3": True, "example-7": True, "example-8": True, "example-6": False}


class Walk:
    """The environment the steps share (the user's shell), and the processes still running."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.running: list[asyncio.subprocess.Process] = []

    async def start(self, step: str, **streams: int) -> asyncio.subprocess.Process:
        """A long-running step, as typed in a terminal of its own; what it logs goes to `log(step)`."""
        [command, *args] = shlex.split(WALK[step])
        with self.log(step).open("wb") as log:
            process = await asyncio.create_subprocess_exec(BIN / command, *args, cwd=REPO, env=self.env,
                                                           stdin=asyncio.subprocess.DEVNULL,
                                                           **{"stdout": log, "stderr": log, **streams})
        self.running.append(process)
        return process

    def log(self, step: str) -> Path:
        return self.logs / f"{step}.log"

    def exited(self, step: str, process: asyncio.subprocess.Process) -> str:
        return f"{WALK[step]!r} exited {process.returncode}: {self.log(step).read_text()[-2000:]}"

    async def run(self, step: str) -> str:
        """A step that ends: its standard output, once it exited 0."""
        process = await self.start(step, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), STEP_TIMEOUT_S)
        assert process.returncode == 0, f"{WALK[step]!r} exited {process.returncode}: {err.decode()}"
        return out.decode()

    async def ctrl_c(self, process: asyncio.subprocess.Process) -> int:
        """Ctrl-C, then the exit status once the process has stopped on its own."""
        process.send_signal(signal.SIGINT)
        return await asyncio.wait_for(process.wait(), STEP_TIMEOUT_S)

    async def close(self) -> None:
        for process in self.running:
            if process.returncode is None:
                process.kill()
                await process.wait()


@asynccontextmanager
async def user_shell(redis_url: str, data: Path, logs: Path) -> AsyncIterator[Walk]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDSTREAM_")}
    env.update(GUARDSTREAM_CACHE__REDIS_URL=redis_url, GUARDSTREAM_CACHE__KEY_PREFIX=f"walk-{uuid.uuid4().hex[:8]}",
               GUARDSTREAM_OBSERVABILITY__HEALTH_PORT="0", GUARDSTREAM_DATA_DIR=str(data),
               GUARDSTREAM_DATASET__URI=str(data / "audit"),
               GUARDSTREAM_DATASET__FLUSH_INTERVAL_S="0.5")
    walk = Walk(env, logs)
    try:
        yield walk
    finally:
        await walk.close()


async def line_with(stream: asyncio.StreamReader, text: str) -> str:
    """The first line of `stream` that holds `text` (the process's output so far is consumed)."""
    while text not in (line := (await asyncio.wait_for(stream.readline(), STEP_TIMEOUT_S)).decode()):
        assert line, f"the output ended before a line with {text!r}"
    return line.strip()


async def verdict_lines(stream: asyncio.StreamReader, event_ids: set[str]) -> dict[str, Verdict]:
    """Lines of `guardstream tail verdicts` until each of `event_ids` has its verdict."""
    verdicts: dict[str, Verdict] = {}
    while not event_ids <= verdicts.keys():
        line = await asyncio.wait_for(stream.readline(), STEP_TIMEOUT_S)
        assert line, f"tail ended with verdicts for {sorted(verdicts)} only"
        verdict = Verdict.model_validate(json.loads(line)["value"])
        verdicts[verdict.event_id] = verdict
    return verdicts


async def stored_examples(uri: Path, count: int, walk: Walk, trainer: asyncio.subprocess.Process) -> list[AuditExample]:
    """The trainer's data set once it holds `count` examples."""
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while len(examples := await DataSet.open(str(uri), FetchSettings()).load()) < count:
        assert trainer.returncode is None, walk.exited("trainer", trainer)
        assert time.monotonic() < deadline, f"{len(examples)} of {count} labels stored after {STEP_TIMEOUT_S}s"
        await asyncio.sleep(POLL_S * 40)
    return examples


@pytest.mark.slow
async def test_the_readmes_local_walk_runs_from_broker_to_stored_labels(redis_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with user_shell(redis_url, data, tmp_path) as walk:
        broker = await walk.start("broker", stdout=asyncio.subprocess.PIPE)
        assert broker.stdout is not None
        export = await line_with(broker.stdout, EXPORT)
        walk.env["GUARDSTREAM_KAFKA__BOOTSTRAP_SERVERS"] = export.removeprefix(EXPORT)  # pasted in each terminal

        worker = await walk.start("worker")
        assert "published 8 events" in await walk.run("produce")
        assert worker.returncode is None, walk.exited("worker", worker)
        tail = await walk.start("tail", stdout=asyncio.subprocess.PIPE)
        assert tail.stdout is not None
        verdicts = await verdict_lines(tail.stdout, {e.event_id for e in EVENTS})
        assert await walk.ctrl_c(tail) == 0
        assert verdicts["example-3"].request_harmful and not verdicts["example-1"].request_harmful

        by_file = await walk.run("label_file")
        assert "published 4 labels" in by_file and "(4 found by event id)" in by_file
        assert "published 1 label " in await walk.run("label_one")

        trainer = await walk.start("trainer")
        examples = await stored_examples(data / "audit", len(LABELLED), walk, trainer)
        assert {e.event.event_id: e.label.request_harmful for e in examples} == LABELLED
        assert all(e.verdict is not None and e.verdict.event_id == e.event.event_id for e in examples)
        assert [e.label.labeller for e in examples if e.event.event_id == "example-6"] == ["bob"]

        for service in (trainer, worker):
            assert await walk.ctrl_c(service) == 0
        assert await walk.ctrl_c(broker) == 0
        assert broker.stdout is not None
        assert "stopped" in (await broker.stdout.read()).decode()
