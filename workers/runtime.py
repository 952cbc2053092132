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
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import typer
from pydantic import BaseModel, ValidationError

from workers.backoff import backoff_s
from workers.cli_errors import CommandFailed, Exit, Unreachable, mask_url_passwords
from workers.logs import configure_logging
from workers.settings import (
    CONFIG_FILE_ENV,
    ENV_PREFIX,
    CacheSettings,
    FetchSettings,
    KafkaSettings,
    ObservabilitySettings,
    ServiceSettings,
)

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
    from workers.kafka_clients import KafkaSecurityError, client_options

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


# -- dependencies at start -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dependency:
    """Something a service talks to: `what` names it by address (no password), `hint` says which setting points
    at it, `probe` raises if it does not answer. A service cannot start without a required one; without one
    that is not (`degraded` says how the service does without it), it starts and says so in one line."""

    what: str
    hint: str
    probe: Callable[[float], Awaitable[None]]
    degraded: str | None = None  # None: required


def _os_error(exc: BaseException) -> OSError | None:
    """The socket error behind `exc` (a client library's own error often wraps one), if any."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, OSError) and seen.errno:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _reason(exc: BaseException, timeout_s: float) -> str:
    from aiokafka.errors import KafkaConnectionError

    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    socket_error = _os_error(exc)
    if socket_error is not None and socket_error.errno is not None:
        return os.strerror(socket_error.errno).lower()
    if isinstance(exc, KafkaConnectionError):
        return "no connection"
    exc = getattr(exc, "orig", None) or exc  # a database driver's own error, without SQLAlchemy's wrapping
    name = type(exc).__name__
    text = " ".join(str(exc).split())
    return f"{name}: {text[:300]}" if text else name


async def _probe(dependency: Dependency, timeout_s: float) -> str | None:
    try:
        await asyncio.wait_for(dependency.probe(timeout_s), timeout_s)
    except Exception as exc:
        return f"cannot reach {dependency.what} ({_reason(exc, timeout_s)})"
    return None


STARTUP_RETRY_BASE_S, STARTUP_RETRY_MAX_S = 0.5, 5.0


def check_dependencies(dependencies: Iterable[Dependency], timeout_s: float, wait_s: float = 0.0) -> None:
    """Try each dependency, all at once; while a required one does not answer, try again with backoff for up to
    `wait_s` (saying so once on stderr). Unreachable (exit 4) names every required one that still did not
    answer; one that is not required is named in a warning line on stderr, and the service starts without it."""
    from workers.logs import drop_bootstrap_failures

    drop_bootstrap_failures()
    listed = list(dependencies)

    async def probe_all() -> list[str | None]:
        return await asyncio.gather(*(_probe(d, timeout_s) for d in listed))

    deadline, tries = time.monotonic() + wait_s, 1
    while True:
        failed = [(d, found) for d, found in zip(listed, asyncio.run(probe_all()), strict=True) if found is not None]
        required = [f"{found}; {d.hint}" for d, found in failed if d.degraded is None]
        left = deadline - time.monotonic()
        if not required or left <= 0:
            break
        if tries == 1:
            sys.stderr.write(f"guardstream: waiting up to {wait_s:g} s: {'; '.join(required)}\n")
        time.sleep(min(left, backoff_s(tries, STARTUP_RETRY_BASE_S, STARTUP_RETRY_MAX_S)))
        tries += 1
    if required:
        raise Unreachable("; ".join(required))
    for d, found in failed:
        sys.stderr.write(f"guardstream: warning: {found}; starting anyway: {d.degraded} ({d.hint})\n")


def kafka_dependency(kafka: KafkaSettings) -> Dependency:
    async def probe(timeout_s: float) -> None:
        from aiokafka.client import AIOKafkaClient

        from workers.kafka_clients import client_options

        timeout_ms = max(1, int(timeout_s * 1000))
        client = AIOKafkaClient(**client_options(kafka), request_timeout_ms=timeout_ms)
        try:
            await client.bootstrap()
        finally:
            await client.close()

    return Dependency(f"the Kafka brokers at {kafka.bootstrap_servers}",
                      f"start them, or set {ENV_PREFIX}KAFKA__BOOTSTRAP_SERVERS (`guardstream broker` runs a local one)",
                      probe)


def redis_dependency(cache: CacheSettings) -> Dependency:
    from workers.cache import redact_url

    url = cache.redis_url.get_secret_value()

    async def probe(timeout_s: float) -> None:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        try:
            await client.ping()
        finally:
            await client.aclose()

    return Dependency(f"Redis at {redact_url(url)}", f"start it, set {ENV_PREFIX}CACHE__REDIS_URL, or run without "
                      f"the cache ({ENV_PREFIX}CACHE__ENABLED=false)", probe,
                      degraded="events are answered without the cache until Redis answers")


def s3_dependency(fetch: FetchSettings) -> Dependency | None:
    """The configured S3 endpoint (a TCP connection: the endpoint answers; buckets and keys are the jobs' own
    checks), or None when none is set."""
    if not fetch.s3_endpoint:
        return None
    parts = urlsplit(fetch.s3_endpoint if "://" in fetch.s3_endpoint else f"https://{fetch.s3_endpoint}")
    host = parts.hostname or ""
    try:
        port = parts.port or (80 if parts.scheme == "http" else 443)
    except ValueError:
        port = 443

    async def probe(_: float) -> None:
        _, writer = await asyncio.open_connection(host, port)
        writer.close()
        await writer.wait_closed()

    return Dependency(f"the S3 endpoint at {host}:{port}", f"start it, or set {ENV_PREFIX}FETCH__S3_ENDPOINT", probe,
                      degraded="it rides out the outage as it would after start")


def service_dependencies(kafka: KafkaSettings | None = None, cache: CacheSettings | None = None,
                         fetch: FetchSettings | None = None, *more: Dependency | None) -> list[Dependency]:
    """The dependencies a service's settings name: brokers, Redis when the cache is on, an S3 endpoint when set."""
    found: list[Dependency | None] = [
        kafka_dependency(kafka) if kafka is not None else None,
        redis_dependency(cache) if cache is not None and cache.enabled else None,
        s3_dependency(fetch) if fetch is not None else None,
        *more,
    ]
    return [d for d in found if d is not None]


def start_service(make: Callable[[], Service], settings: Any, dependencies: Iterable[Dependency]) -> None:
    """Check the dependencies (exit 4 on the first try that fails), then build and run the service."""
    check_dependencies(dependencies, settings.startup_timeout_s, settings.startup_wait_s)
    run_service(make(), settings.observability)
