"""Settings come from GUARDSTREAM_* variables or a TOML file, and the README documents every one."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from console.settings import ConsoleSettings
from runtime.settings import CONFIG_FILE_ENV
from trainer.settings import TrainerSettings
from workers.settings import WorkerSettings

README = Path(__file__).resolve().parents[2] / "README.md"


def variables(model: type[BaseModel], prefix: str = "GUARDSTREAM_") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out += variables(field.annotation, f"{prefix}{name.upper()}__")
        else:
            out.append(f"{prefix}{name.upper()}")
    return out


def test_environment_variables_set_nested_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUARDSTREAM_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    monkeypatch.setenv("GUARDSTREAM_BATCH__MAX_BATCH", "7")
    monkeypatch.setenv("GUARDSTREAM_FETCH__HTTPS_ALLOWED_HOSTS", '["img.example.com"]')
    settings = WorkerSettings()
    assert settings.kafka.bootstrap_servers == "127.0.0.1:19092"
    assert settings.batch.max_batch == 7 and settings.fetch.https_allowed_hosts == ["img.example.com"]


def test_a_toml_file_is_read_and_the_environment_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "worker.toml"
    config.write_text('[kafka]\ngroup_id = "from-file"\ntopic_prefix = "p."\n[limits]\nmax_images = 2\n')
    monkeypatch.setenv(CONFIG_FILE_ENV, str(config))
    monkeypatch.setenv("GUARDSTREAM_KAFKA__TOPIC_PREFIX", "env.")
    settings = WorkerSettings()
    assert (settings.kafka.group_id, settings.kafka.topic_prefix, settings.limits.max_images) == ("from-file", "env.", 2)


def test_invalid_values_and_unknown_keys_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUARDSTREAM_BATCH__MAX_BATCH", "0")
    with pytest.raises(ValidationError, match="max_batch"):
        WorkerSettings()
    with pytest.raises(ValidationError):
        WorkerSettings(kafka={"bootstrap": "x"})


def test_the_readme_documents_every_setting() -> None:
    text = README.read_text()
    names = variables(WorkerSettings) + variables(TrainerSettings) + variables(ConsoleSettings)
    missing = [name for name in names if f"`{name}`" not in text]
    assert missing == []
