"""structlog set-up: readable in a terminal, JSON in production; neither shows secrets or local variables.

Tracebacks never show local variables (they hold user text, images and credentials), and a processor masks
pydantic secrets and fields named like secrets, so a log line cannot carry what settings keep secret.
"""

from __future__ import annotations

import logging
import re
import sys

import structlog
from pydantic import SecretBytes, SecretStr
from structlog.types import EventDict, Processor, WrappedLogger

REDACTED = "**********"
SECRET_KEY = re.compile(r"password|secret|token|api_?key|authorization", re.IGNORECASE)


def _stderr_logger(*_: object) -> structlog.PrintLogger:
    """Whatever sys.stderr is when a logger is made, not when logging was configured (it can be swapped)."""
    return structlog.PrintLogger(sys.stderr)


def redact_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Mask SecretStr/SecretBytes values, and text in any field whose name looks like a secret's."""
    for key, value in event_dict.items():
        if isinstance(value, SecretStr | SecretBytes) or (isinstance(value, str | bytes) and SECRET_KEY.search(key)):
            event_dict[key] = REDACTED
    return event_dict


def _renderers(fmt: str) -> list[Processor]:
    if fmt == "json":
        no_locals = structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        return [structlog.processors.ExceptionRenderer(no_locals), structlog.processors.JSONRenderer()]
    colors = sys.stderr.isatty()
    tracebacks = structlog.dev.RichTracebackFormatter(color_system="truecolor" if colors else None, show_locals=False)
    return [structlog.dev.ConsoleRenderer(colors=colors, exception_formatter=tracebacks)]


def _not_a_bootstrap_failure(record: logging.LogRecord) -> bool:
    """aiokafka logs each bootstrap address it cannot reach; the KafkaConnectionError that follows says the
    same, and the command or service reports that (one line), so the log line is dropped."""
    return not str(record.msg).startswith('Unable connect to "')


def drop_bootstrap_failures() -> None:
    bootstrap = logging.getLogger("aiokafka")  # aiokafka.client logs as "aiokafka"
    if _not_a_bootstrap_failure not in bootstrap.filters:
        bootstrap.addFilter(_not_a_bootstrap_failure)


def configure_logging(fmt: str = "console", level: str = "info") -> None:
    drop_bootstrap_failures()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            *_renderers(fmt),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
