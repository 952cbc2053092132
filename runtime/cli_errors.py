"""How every `guardstream` command ends: a documented exit code, and when it fails, one line on stderr that
says what is wrong and what to do. The traceback is shown only with `--debug` (anywhere on the command
line) or `GUARDSTREAM_DEBUG=1`.

| code | name        | when |
|-----:|-------------|------|
|    0 | OK          | done |
|    1 | FAILED      | an error no rule below names (a bug: rerun with --debug and report it) |
|    2 | USAGE       | the command line is wrong (an option, a missing argument, an unknown command) |
|    3 | INPUT       | an input file or its content, or a setting, is missing or invalid |
|    4 | UNREACHABLE | a dependency (broker, Redis, object storage, database, model) cannot be reached or loaded |
|    5 | REFUSED     | what was asked is not allowed (a backfill into the live verdict topic, a project topic) |
|    6 | PARTIAL     | done, but some items failed (bad lines, partitions left unfinished); each is reported |
|  130 | INTERRUPTED | stopped by Ctrl-C |

A module says how its own failures end by giving the exception class an `exit_code` (and a message that
names what is wrong), or a `command_failure()` method returning the code and the line; `describe` maps the
usual third-party errors. Messages pass through the log redaction,
so a URL's password never reaches the terminal.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import Any

import click
import typer
from pydantic import ValidationError

from runtime.logs import drop_bootstrap_failures

DEBUG_FLAG = "--debug"
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:@/\s]*):[^@/\s]+@", re.IGNORECASE)


class Exit(IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    INPUT = 3
    UNREACHABLE = 4
    REFUSED = 5
    PARTIAL = 6
    INTERRUPTED = 130


class CommandFailed(Exception):
    """A command's own failure: its message is the line printed, `exit_code` the code."""

    exit_code: Exit = Exit.INPUT

    def __init__(self, message: str, exit_code: Exit | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class Unreachable(CommandFailed):
    exit_code = Exit.UNREACHABLE


class Refused(CommandFailed):
    exit_code = Exit.REFUSED


def mask_url_passwords(text: str) -> str:
    """The text with any URL's password masked."""
    return _URL_PASSWORD.sub(r"\g<scheme>\g<user>:**********@", text)


def one_line(text: str) -> str:
    """The text on one line, with any URL's password masked."""
    return mask_url_passwords(" ".join(str(text).split()))


def validation_message(exc: ValidationError, limit: int = 3) -> str:
    """`Model: field.sub: what is wrong; …`: each error with the field it is about."""
    parts = []
    for error in exc.errors()[:limit]:
        where = ".".join(str(p) for p in error["loc"]) or "(the whole value)"
        parts.append(f"{where}: {error['msg']}")
    more = f" (and {exc.error_count() - limit} more)" if exc.error_count() > limit else ""
    return f"{exc.title}: {'; '.join(parts)}{more}"


def _unreachable(exc: BaseException) -> str | None:
    """A message when `exc` says a dependency cannot be reached, else None."""
    from aiokafka.errors import KafkaConnectionError, KafkaError
    from aiokafka.errors import NoBrokersAvailable as AioNoBrokers

    if isinstance(exc, KafkaConnectionError | AioNoBrokers) or (
            isinstance(exc, KafkaError) and "connect" in type(exc).__name__.lower()):
        return (f"cannot reach the Kafka brokers ({exc}); start one (`guardstream broker` runs a local one) or "
                "set GUARDSTREAM_KAFKA__BOOTSTRAP_SERVERS")
    module = type(exc).__module__.split(".")[0]
    if module == "redis" and "Connection" in type(exc).__name__:
        return f"cannot reach Redis ({exc}); start it or set GUARDSTREAM_CACHE__URL"
    if module == "sqlalchemy" and type(exc).__name__ == "OperationalError":
        return f"cannot use the database: {getattr(exc, 'orig', exc)}"
    if isinstance(exc, ConnectionError) or (isinstance(exc, OSError) and exc.errno in (
            errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT)):
        return f"cannot connect: {exc}"
    return None


def describe(exc: BaseException) -> tuple[Exit, str]:
    """The exit code and the one line for a command that ended with `exc`."""
    from topics.clients import KafkaSecurityError

    code = getattr(exc, "exit_code", None)
    if isinstance(code, int) and not isinstance(exc, click.exceptions.Exit):
        return Exit(code), one_line(str(exc))
    if isinstance(exc, ValidationError):
        return Exit.INPUT, one_line(validation_message(exc))
    if isinstance(exc, KafkaSecurityError):  # the Kafka security settings do not fit together
        return Exit.INPUT, one_line(f"kafka settings: {exc}")
    if isinstance(exc, FileNotFoundError):
        return Exit.INPUT, one_line(f"{exc.filename or exc}: no such file or folder")
    if isinstance(exc, IsADirectoryError | NotADirectoryError | PermissionError):
        return Exit.INPUT, one_line(f"{exc.filename or ''}: {exc.strerror or exc}")
    failure = getattr(exc, "command_failure", None)  # an error type of a service's own: (code, line)
    if callable(failure):
        code, line = failure()
        return Exit(code), one_line(line)
    reason = _unreachable(exc)
    if reason is not None:
        return Exit.UNREACHABLE, one_line(reason)
    return Exit.FAILED, one_line(f"{type(exc).__name__}: {exc} (a bug? rerun with {DEBUG_FLAG} for the traceback)")


def _is_usage_error(exc: BaseException) -> bool:
    return any(c.__name__ == "ClickException" for c in type(exc).__mro__) and callable(
        getattr(exc, "format_message", None))


def run_command(app: Callable[..., Any], argv: Sequence[str] | None = None) -> int:
    """Run the click/typer `app` on `argv` and return the exit code; failures print one line on stderr."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in args or os.environ.get("GUARDSTREAM_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != DEBUG_FLAG]
    drop_bootstrap_failures()
    try:
        result = app(args=args, prog_name="guardstream", standalone_mode=False)
    except (click.exceptions.Exit, typer.Exit) as exc:
        return exc.exit_code
    except (click.exceptions.Abort, typer.Abort, KeyboardInterrupt):
        click.echo("guardstream: interrupted", err=True)
        return Exit.INTERRUPTED
    except Exception as exc:
        if _is_usage_error(exc):  # click's, or the copy of click that typer carries
            message = one_line(exc.format_message())  # type: ignore[attr-defined]
            click.echo(f"guardstream: {message} (see guardstream --help)", err=True)
            return int(exc.exit_code)  # type: ignore[attr-defined]
        if debug:
            raise
        code, message = describe(exc)
        click.echo(f"guardstream: {message}", err=True)
        return code
    return result if isinstance(result, int) else Exit.OK
