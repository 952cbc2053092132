"""The dependencies a service checks once at start (see `runtime/service.py`): each named by address (never a
password) with the setting that points at it, tried all at once with a bounded time each, tried again with
backoff while a required one does not answer; the brokers' check lives here, the worker's Redis and S3 checks
in `workers/dependencies.py`."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from runtime.backoff import backoff_s
from runtime.cli_errors import Unreachable
from runtime.settings import ENV_PREFIX
from topics.settings import KafkaSettings


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
    from runtime.logs import drop_bootstrap_failures

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

        from topics.clients import client_options

        timeout_ms = max(1, int(timeout_s * 1000))
        client = AIOKafkaClient(**client_options(kafka), request_timeout_ms=timeout_ms)
        try:
            await client.bootstrap()
        finally:
            await client.close()

    return Dependency(f"the Kafka brokers at {kafka.bootstrap_servers}",
                      f"start them, or set {ENV_PREFIX}KAFKA__BOOTSTRAP_SERVERS (`guardstream broker` runs a local one)",
                      probe)


