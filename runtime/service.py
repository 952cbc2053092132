"""What every service (worker, trainer, console) shares to run as a process: its settings loaded (or only
checked, `--check-config`), its dependencies checked once at start, its logging set up from its observability
settings, its health server, and a stop on SIGTERM/SIGINT. A service is an object with `run()` (returns once
stopped, after its own bounded shutdown) and `stop()`.

Start-up, for an orchestrator: settings that do not validate end the process with one line per error, each
naming its GUARDSTREAM_* variable (exit 3). Then every dependency the settings name is tried once, all at once,
each for at most `startup_timeout_s`, and tried again with backoff for up to `startup_wait_s` while a required one
does not answer: the brokers (a metadata request, with the TLS and SASL settings), Redis
when the cache is on (PING), the S3 endpoint when one is set (a TCP connection), the console's database when it
is not a SQLite file (a connection). A broker or database that does not answer by then ends the process before the
service is built, with one line naming it by address (never a password) and exit 4; the orchestrator restarts
it with its backoff. Redis and S3 are not required: one that does not answer is named in a warning line, and
the service starts and rides out the outage as it would after start (the worker answers without the cache, an
image fetch retries and then answers with an error verdict, the trainer keeps its labels and retries)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

import typer
from pydantic import BaseModel, ValidationError

from runtime.cli_errors import CommandFailed, Exit, mask_url_passwords
from runtime.dependencies import Dependency, check_dependencies
from runtime.logs import configure_logging
from runtime.settings import CONFIG_FILE_ENV, ENV_PREFIX, ObservabilitySettings, ServiceSettings
from topics.settings import KafkaSettings

S = TypeVar("S", bound=ServiceSettings)


class Service(Protocol):
    async def run(self) -> None: ...

    def stop(self) -> None: ...


def run_service(service: Service, observability: ObservabilitySettings) -> None:
    """Run `service` in this process until it stops or a signal asks it to."""
    configure_logging(observability.log_format, observability.log_level)
    asyncio.run(_until_signalled(service))


async def _until_signalled(service: Service) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop)
    await service.run()


# -- settings --------------------------------------------------------------------------------------------


class InvalidSettings(CommandFailed):
    """Settings that do not validate: `errors` holds one line per problem, each naming its variable."""

    exit_code = Exit.INPUT

    def __init__(self, errors: list[str]) -> None:
        super().__init__("invalid settings: " + "; ".join(errors))
        self.errors = errors


def env_name(model: type[BaseModel], loc: Iterable[int | str]) -> str:
    """`kafka.fetch_max_wait_ms` → `GUARDSTREAM_KAFKA__FETCH_MAX_WAIT_MS`; the path stops at the first field
    that is not a section (a dict's key or a list's index is not part of the variable's name)."""
    names: list[str] = []
    current: type[BaseModel] | None = model
    for part in loc:
        if not isinstance(part, str):
            break
        names.append(part)
        field = current.model_fields.get(part) if current is not None else None
        if field is None:
            break  # a misspelt key: its would-be variable
        annotation = field.annotation
        current = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        if current is None:
            break
    return ENV_PREFIX + "__".join(names).upper() if names else "settings"


def settings_errors(model: type[BaseModel], exc: ValidationError) -> list[str]:
    """One line per error: where it is (the dotted path and its variable) and what is wrong, never the value."""
    lines = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        name = env_name(model, error["loc"])
        lines.append(f"{where} ({name}): {error['msg']}" if where else f"{name}: {error['msg']}")
    return lines


def load_settings(cls: type[S]) -> S:
    """The service's settings from GUARDSTREAM_* and the file named by GUARDSTREAM_CONFIG_FILE; InvalidSettings
    (exit 3) names each variable that is wrong. The Kafka security settings are checked too (no connection)."""
    from topics.clients import KafkaSecurityError, client_options

    try:
        settings = cls()
    except ValidationError as exc:
        raise InvalidSettings(settings_errors(cls, exc)) from None
    kafka = getattr(settings, "kafka", None)
    if isinstance(kafka, KafkaSettings):
        try:
            client_options(kafka)
        except KafkaSecurityError as exc:
            raise InvalidSettings([f"kafka ({ENV_PREFIX}KAFKA__*): {exc}"]) from None
    return settings


def print_checked_config(service: str, settings: ServiceSettings) -> None:
    """`--check-config`'s answer: one JSON line on stdout with the effective settings, secrets masked."""
    dumped = settings.model_dump(mode="json")  # SecretStr values dump as **********
    line = json.dumps({"service": service, "settings_ok": True, "config_file": os.environ.get(CONFIG_FILE_ENV),
                       "settings": dumped}, sort_keys=False, default=str)
    sys.stdout.write(mask_url_passwords(line) + "\n")


def check_config_only(service: str, cls: type[S], more: Callable[[S], list[str]] | None = None) -> None:
    """Load and validate `cls` (and `more`'s checks: a line per problem), print the outcome and make no
    connection: exit 0, or 3 with one line per error."""
    try:
        settings = load_settings(cls)
        problems = more(settings) if more is not None else []
        if problems:
            raise InvalidSettings(problems)
    except InvalidSettings as exc:
        for line in exc.errors:
            sys.stderr.write(f"guardstream: {mask_url_passwords(line)}\n")
        raise typer.Exit(Exit.INPUT) from None
    print_checked_config(service, settings)


def start_service(make: Callable[[], Service], settings: Any, dependencies: Iterable[Dependency]) -> None:
    """Check the dependencies (exit 4 on the first try that fails), then build and run the service."""
    check_dependencies(dependencies, settings.startup_timeout_s, settings.startup_wait_s)
    run_service(make(), settings.observability)
