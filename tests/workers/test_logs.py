"""Logs never carry secrets: not in tracebacks' local variables, not in SecretStr fields, not in fields named so."""

from __future__ import annotations

import io
import json
import secrets
import sys
from collections.abc import Iterator
from types import TracebackType

import pytest
import structlog
from pydantic import SecretBytes, SecretStr
from structlog.tracebacks import ExceptionDictTransformer

from runtime.logs import REDACTED, configure_logging

SECRET = f"hunter2-{secrets.token_hex(8)}"
FORMATS = ["console", "json"]


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure_logging is process-wide; leave structlog as the other tests found it."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def connect(url: str, password: str) -> None:
    """Fails while holding the password in a local variable, as a connection helper would."""
    raise ConnectionError(f"refused: {url}")


def raised() -> tuple[type[BaseException], BaseException, TracebackType]:
    try:
        connect("redis://127.0.0.1:1/0", SECRET)
    except ConnectionError:
        exc_info = sys.exc_info()
        assert exc_info[0] is not None and exc_info[1] is not None and exc_info[2] is not None
        return exc_info[0], exc_info[1], exc_info[2]
    raise AssertionError("connect did not raise")


def test_a_formatter_that_shows_locals_would_show_the_secret() -> None:
    """The probe below can fail: the secret is there for any traceback that prints locals."""
    exc_info = raised()
    console = io.StringIO()
    structlog.dev.RichTracebackFormatter(color_system=None, show_locals=True)(console, exc_info)
    assert SECRET in console.getvalue()
    assert SECRET in json.dumps(ExceptionDictTransformer(show_locals=True)(exc_info))


@pytest.mark.parametrize("fmt", FORMATS)
def test_logged_tracebacks_never_show_local_variables(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(fmt, "debug")
    log = structlog.get_logger("test")
    try:
        connect("redis://127.0.0.1:1/0", SECRET)
    except ConnectionError:
        log.exception("connect_failed")
    log.error("task_failed", exc_info=raised()[1])

    err = capsys.readouterr().err
    shown = "ConnectionError: refused" if fmt == "console" else '"exc_value": "refused'
    assert err.count(shown) == 2, "no traceback was rendered: nothing was tested"
    assert SECRET not in err
    if fmt == "json":
        lines = [json.loads(line) for line in err.splitlines()]
        frames = [frame for line in lines for frame in line["exception"][0]["frames"]]
        assert {"connect"} <= {frame["name"] for frame in frames}, "the exception is structured, frame by frame"
        assert all("locals" not in frame for frame in frames)


@pytest.mark.parametrize("fmt", FORMATS)
def test_secret_values_and_fields_named_like_secrets_are_masked(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(fmt, "debug")
    named = {"password": "pw", "sasl_password": "spw", "client_secret": "cs", "token": "tk",
             "openai_api_key": "ak", "apikey": "ak2", "Authorization": "Bearer b"}
    values = {k: f"{v}-{SECRET}" for k, v in named.items()}
    structlog.get_logger("test").info(
        "connecting", redis_url=SecretStr(f"redis://:{SECRET}@127.0.0.1:1/0"), raw=SecretBytes(SECRET.encode()),
        key="guardstream:abc", prompt_tokens=12, host="127.0.0.1", **values,
    )

    err = capsys.readouterr().err
    assert "connecting" in err
    assert SECRET not in err
    if fmt == "json":
        line = json.loads(err)
        for field in [*named, "redis_url", "raw"]:
            assert line[field] == REDACTED, field
        assert (line["key"], line["prompt_tokens"], line["host"]) == ("guardstream:abc", 12, "127.0.0.1")
    else:
        assert err.count(REDACTED) == len(named) + 2
        assert "key=guardstream:abc" in err and "prompt_tokens=12" in err and "host=127.0.0.1" in err
