"""Every way an event can fail, as types.

    GuardstreamError               code, retriable, dead_letter
    ├── InputError                 the record itself can never be moderated (dead-lettered)
    │   ├── DecodeError            not UTF-8 JSON
    │   ├── SchemaError            JSON, but not a valid ChatEvent
    │   └── LimitError             valid, but over a configured limit
    ├── FetchError                 an image could not be fetched
    │   ├── ImageNotAllowed        the URI's scheme, host or path is not allowed
    │   ├── ImageNotFound
    │   ├── ImageTooLarge          over the byte or pixel limit
    │   ├── ImageShapeRefused      an aspect ratio the model cannot take
    │   ├── ImageDigestMismatch    bytes do not hash to the declared sha256
    │   ├── ImageDecodeFailed      Pillow cannot read it
    │   └── FetchUnavailable       timeout or store error (retriable)
    ├── BackendError               the guard backend failed (retriable)
    │   ├── BackendTimeout
    │   └── BackendUnavailable     its dependency or model cannot be loaded (not retriable)
    ├── OutputUnparseable          the model answered, but not in the verdict format (raw text kept)
    └── InternalError              a bug in guardstream: logged with its traceback, answered as an error

The DLQ reason, the error verdict's code and the log event all come from `code`. Two messages: `str(exc)`
is the detail (sizes, URIs, digests) for the dead-letter topic and the logs, which operators read;
`summary` is the fixed sentence an error verdict carries, because verdicts go to the platform's
consumers and through them, often, back to the user who sent the event.
"""

from __future__ import annotations

from runtime.cli_errors import Exit
from schemas.events import ErrorInfo


class GuardstreamError(Exception):
    code = "error"
    summary = "the event could not be moderated"
    retriable = False

    def info(self) -> ErrorInfo:
        """What an error verdict says: the code and the fixed summary, never the detail."""
        return ErrorInfo(code=self.code, message=self.summary, retriable=self.retriable)

    def command_failure(self) -> tuple[Exit, str]:
        """How a command that ended with this error exits, and its line (runtime/cli_errors.py)."""
        return Exit.INPUT, f"{self.code}: {self}"


class InputError(GuardstreamError):
    code = "input_invalid"
    summary = "the event is not valid input"


class DecodeError(InputError):
    code = "decode_failed"
    summary = "the record is not UTF-8 JSON"


class SchemaError(InputError):
    code = "schema_invalid"
    summary = "the record is not a valid ChatEvent"


class LimitError(InputError):
    code = "limit_exceeded"
    summary = "the event is over a configured limit"


class FetchError(GuardstreamError):
    code = "fetch_failed"
    summary = "an image could not be fetched"


class ImageNotAllowed(FetchError):
    code = "image_not_allowed"
    summary = "an image's location is not allowed"


class ImageNotFound(FetchError):
    code = "image_not_found"
    summary = "an image was not found"


class ImageTooLarge(FetchError):
    code = "image_too_large"
    summary = "an image is over the configured size limits"


class ImageShapeRefused(FetchError):
    code = "image_shape_refused"
    summary = "an image's aspect ratio is outside what the model accepts"


class ImageDigestMismatch(FetchError):
    code = "image_digest_mismatch"
    summary = "an image does not match its declared sha256"


class ImageDecodeFailed(FetchError):
    code = "image_decode_failed"
    summary = "an image could not be decoded"


class FetchUnavailable(FetchError):
    code = "fetch_unavailable"
    summary = "an image store did not answer in time"
    retriable = True


class BackendError(GuardstreamError):
    code = "backend_failed"
    summary = "the guard model failed"
    retriable = True


class BackendTimeout(BackendError):
    code = "backend_timeout"
    summary = "the guard model did not answer in time"


class BackendUnavailable(BackendError):
    code = "backend_unavailable"
    summary = "the guard model is not available"
    retriable = False

    def command_failure(self) -> tuple[Exit, str]:
        return Exit.UNREACHABLE, f"the guard backend cannot be loaded: {self}"


class OutputUnparseable(GuardstreamError):
    code = "output_unparseable"
    summary = "the guard model's answer could not be read"


class InternalError(GuardstreamError):
    code = "internal_error"
    summary = "an internal error stopped moderation"
