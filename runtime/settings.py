"""The base every service's settings share: GUARDSTREAM_* variables (nested with `__`) or a TOML file named by
GUARDSTREAM_CONFIG_FILE, the data directory, and the observability section (logs, the health server)."""

from __future__ import annotations

import os
import tempfile
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_FILE_ENV = "GUARDSTREAM_CONFIG_FILE"
ENV_PREFIX = "GUARDSTREAM_"
APP_NAME = "guardstream"


class ConfigFileError(ValueError):
    """GUARDSTREAM_CONFIG_FILE names a file that cannot be read as TOML (exit 3: a setting is invalid)."""

    exit_code = 3


def default_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where guardstream keeps what it writes unless told otherwise: `$XDG_DATA_HOME/guardstream`, else
    `~/.local/share/guardstream`, else (no home folder) the temporary folder's `guardstream`. Never the
    working directory."""
    env = os.environ if environ is None else environ
    if env.get("XDG_DATA_HOME"):
        return Path(env["XDG_DATA_HOME"]) / APP_NAME
    try:
        return Path.home() / ".local" / "share" / APP_NAME
    except RuntimeError:  # no HOME and no passwd entry
        return Path(tempfile.gettempdir()) / APP_NAME


class Section(BaseModel):
    """A group of settings; a misspelt key is an error, not a silently ignored value."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ObservabilitySettings(Section):
    log_format: Literal["console", "json"] = "console"
    log_level: str = "info"
    health_enabled: bool = True
    health_host: str = "127.0.0.1"
    health_port: int = Field(9464, ge=0, le=65535, description="0 picks a free port")


class ServiceSettings(BaseSettings):
    """What every service's settings share: GUARDSTREAM_* variables (nested with `__`), then the TOML file
    named by GUARDSTREAM_CONFIG_FILE."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid")

    data_dir: Path = Field(default_factory=default_data_dir, description="the folder every default location a "
                           "service writes to lies under (data set, releases, reports, scratch); "
                           "default: $XDG_DATA_HOME/guardstream, else ~/.local/share/guardstream")
    startup_timeout_s: float = Field(10.0, gt=0, description="how long each dependency (brokers, Redis, object "
                                     "storage, database) may take to answer the check at start; one that does "
                                     "not answer: the service names it in one line and exits 4")
    startup_wait_s: float = Field(30.0, ge=0, description="how long a service waits at start for a required "
                                  "dependency (brokers, database) that does not answer, trying again with backoff, "
                                  "before it names it in one line and exits 4; 0: exit at the first failed check")

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        """`~` expanded and made absolute, so the folder printed at start is the one written to."""
        return value.expanduser().absolute()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_FILE_ENV)
        if config_file:
            sources.append(_toml_source(settings_cls, Path(config_file)))
        return tuple(sources)


def _toml_source(settings_cls: type[BaseSettings], path: Path) -> TomlConfigSettingsSource:
    """The file's settings; a file that is missing or not TOML is an error, never silently no settings."""
    if not path.is_file():
        raise ConfigFileError(f"{CONFIG_FILE_ENV}={path}: no such file")
    try:
        return TomlConfigSettingsSource(settings_cls, toml_file=path)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        raise ConfigFileError(f"{CONFIG_FILE_ENV}={path}: not a TOML file ({exc})") from None
