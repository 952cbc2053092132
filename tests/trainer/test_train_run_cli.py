"""`guardstream train run JOB`, the real console script: a reasoning job run by hand prints its record and
releases an adapter; a job that cannot run says why in one line, with the exit code its failure's type gives."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.topics.guardstream_process import Finished, guardstream
from tests.trainer.reasoning_fixtures import MODEL, lesson_examples, tiny_reasoning
from trainer.dataset import DataSet
from workers.settings import FetchSettings, WorkerSettings


def env(settings: WorkerSettings, data_dir: Path, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GUARDSTREAM_")}
    return {**base, "HF_HUB_OFFLINE": "1", "GUARDSTREAM_DATA_DIR": str(data_dir),
            "GUARDSTREAM_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
            "GUARDSTREAM_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
            "GUARDSTREAM_GATE__MIN_HELD_OUT": "2", "GUARDSTREAM_GATE__REGRESSION_MAX_ITEMS": "0",
            "GUARDSTREAM_GATE__MIN_F1_GAIN": "0", **extra}


def why(done: Finished) -> str:
    """The failure's one line: the last of stderr, after the job's own log lines, and no traceback."""
    assert "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("guardstream: "), done.stderr
    return last


async def labelled_data_set(data_dir: Path) -> None:
    await DataSet.open(str(data_dir / "audit"), FetchSettings()).append(lesson_examples(8))


async def test_train_run_reasoning_sft_prints_its_record_and_releases_an_adapter(
        settings: WorkerSettings, tiny_qwen: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    await labelled_data_set(data_dir)
    reasoning = tiny_reasoning().model_dump_json()

    done = await guardstream(["train", "run", "reasoning-sft"], env(
        settings, data_dir, GUARDSTREAM_GUARD__BACKEND="transformers", GUARDSTREAM_GUARD__MODEL_PATH=str(tiny_qwen),
        GUARDSTREAM_GUARD__MODEL_NAME=MODEL, GUARDSTREAM_GUARD__MAX_NEW_TOKENS="80", GUARDSTREAM_REASONING=reasoning))

    assert done.code == 0, done.stderr[-2000:]
    record = json.loads(done.stdout)
    assert record["outcome"] == "released", record
    artefact = Path(record["artefact_uri"])
    assert (artefact / "adapter_config.json").is_file() and (artefact / "job.json").is_file()
    assert artefact.is_relative_to(data_dir / "releases")


async def test_train_run_says_in_one_line_why_a_job_cannot_run(settings: WorkerSettings, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    empty = await guardstream(["train", "run", "reasoning-sft"], env(settings, data_dir))
    assert empty.code == 3 and "no labelled events in" in why(empty)

    await labelled_data_set(data_dir)
    no_base = await guardstream(["train", "run", "reasoning-grpo"], env(settings, data_dir))  # the lite guard
    assert no_base.code == 3
    assert "set GUARDSTREAM_GUARD__MODEL_PATH" in why(no_base)

    unknown = await guardstream(["train", "run", "reasoning-dpo"], env(settings, data_dir))
    assert unknown.code == 2 and "unknown job 'reasoning-dpo'" in why(unknown)
