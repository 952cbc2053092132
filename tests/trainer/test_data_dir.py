"""One data directory (GUARDSTREAM_DATA_DIR): every location the trainer writes to by default lies under it,
never in the working directory; and a job's stored decision says when the job ended."""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import obstore
import pytest

from runtime.settings import default_data_dir
from schemas.events import AuditLabel, ChatEvent
from tests.trainer.conftest import running_trainer
from trainer import jobs
from trainer.dataset import AuditExample, DataSet, open_store
from trainer.job_interface import Candidate, TrainingData
from trainer.pipeline import run_job
from trainer.settings import DatasetSettings, GateSettings, TrainerSettings
from workers.demo_data import loop_traffic
from workers.guard.lite_tuned import DEFAULT_ARTEFACT
from workers.settings import WorkerSettings

SHIPPED = Path(__file__).resolve().parents[2] / "workers" / "guard" / "artefacts" / DEFAULT_ARTEFACT


def test_the_default_data_directory_is_the_users_data_folder_never_the_working_directory(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert default_data_dir({"XDG_DATA_HOME": "/srv/data"}) == Path("/srv/data/guardstream")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_data_dir({}) == tmp_path / ".local" / "share" / "guardstream"
    monkeypatch.delenv("GUARDSTREAM_DATA_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert WorkerSettings().data_dir == TrainerSettings().data_dir == tmp_path / "xdg" / "guardstream"


def test_the_trainers_locations_lie_under_the_data_directory_unless_given(
        data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = TrainerSettings()
    assert settings.data_dir == data_dir and WorkerSettings().data_dir == data_dir
    assert settings.dataset.uri == str(data_dir / "audit")
    assert settings.gate.release_uri == str(data_dir / "releases")
    assert settings.jobs.work_dir == data_dir / "trainer" / "runs"
    assert settings.state_dir == data_dir / "trainer" / "state" / "guardstream-trainer"

    monkeypatch.setenv("GUARDSTREAM_DATASET__URI", "s3://bucket/audit")
    given = TrainerSettings(gate=GateSettings(release_uri="/srv/releases"), data_dir=data_dir / "other")
    assert given.dataset.uri == "s3://bucket/audit" and given.gate.release_uri == "/srv/releases"
    assert given.jobs.work_dir == data_dir / "other" / "trainer" / "runs"


def test_a_shared_section_is_not_changed_by_placing_it_under_a_data_directory(tmp_path: Path) -> None:
    shared = DatasetSettings(flush_interval_s=0.5)
    first = TrainerSettings(data_dir=tmp_path / "a", dataset=shared)
    second = TrainerSettings(data_dir=tmp_path / "b", dataset=shared)
    assert (first.dataset.uri, second.dataset.uri) == (str(tmp_path / "a" / "audit"), str(tmp_path / "b" / "audit"))
    assert "uri" not in shared.model_fields_set


async def test_the_trainer_service_writes_nothing_in_the_working_directory(
        trainer_settings: TrainerSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    async with running_trainer(trainer_settings) as trainer:
        assert trainer.status()["data_dir"] == str(trainer_settings.data_dir)
    assert list(cwd.iterdir()) == []
    assert trainer_settings.state_dir.is_dir()  # faust's folder, where the data directory says


class ShippedModel:
    """A job whose candidate is the shipped lite model, copied: the pipeline around the training is tested."""

    name = "shipped-copy"

    def train(self, data: TrainingData, out_dir: Path) -> Candidate:
        out_dir.mkdir(parents=True, exist_ok=True)
        return Candidate(version="lite-shipped-copy", backend="lite",
                         artefact=Path(shutil.copy(SHIPPED, out_dir / DEFAULT_ARTEFACT)))


async def test_the_stored_decision_says_when_the_run_finished(
        trainer_settings: TrainerSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(jobs.JOBS, ShippedModel.name, lambda _settings: ShippedModel())
    settings = trainer_settings.model_copy(update={"gate": trainer_settings.gate.model_copy(
        update={"regression_max_items": 0, "held_out_fraction": 0.3})})
    examples = [AuditExample(event=ChatEvent(event_id=f"d{i}", conversation_id="c", text=text),
                             label=AuditLabel(event_id=f"d{i}", request_harmful=harmful, labeller="r"))
                for i, (text, harmful) in enumerate(loop_traffic())]
    await DataSet.open(settings.dataset.uri, settings.fetch, settings.dataset).append(examples)

    record = await run_job(ShippedModel.name, settings)

    assert record.outcome == "refused", record  # the same model: no gain
    stored = await obstore.get_async(open_store(settings.gate.release_uri, settings.fetch),
                                     f"{record.version}/decision.json")
    decision = json.loads(bytes(await stored.bytes_async()))
    assert decision["finished_at"] is not None
    assert datetime.fromisoformat(decision["finished_at"]) >= datetime.fromisoformat(decision["started_at"])
