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
    │   ├── ImageDigestMismatch    bytes do not hash to the declared sha256
    │   ├── ImageDecodeFailed      Pillow cannot read it
    │   └── FetchUnavailable       timeout or store error (retriable)
    ├── BackendError               the guard backend failed (retriable)
    │   ├── BackendTimeout
    │   └── BackendUnavailable     its dependency or model cannot be loaded (not retriable)
    ├── OutputUnparseable          the model answered, but not in the verdict format (raw text kept)
    └── InternalError              a bug in guardstream: logged with its traceback, answered as an error

The DLQ reason, the error verdict's code and the log event all come from `code`.
"""

from __future__ import annotations

from schemas.events import ErrorInfo


class GuardstreamError(Exception):
    code = "error"
    retriable = False

    def info(self) -> ErrorInfo:
        return ErrorInfo(code=self.code, message=str(self), retriable=self.retriable)


class InputError(GuardstreamError):
    code = "input_invalid"


class DecodeError(InputError):
    code = "decode_failed"


class SchemaError(InputError):
    code = "schema_invalid"


class LimitError(InputError):
    code = "limit_exceeded"


class FetchError(GuardstreamError):
    code = "fetch_failed"


class ImageNotAllowed(FetchError):
    code = "image_not_allowed"


class ImageNotFound(FetchError):
    code = "image_not_found"


class ImageTooLarge(FetchError):
    code = "image_too_large"


class ImageDigestMismatch(FetchError):
    code = "image_digest_mismatch"


class ImageDecodeFailed(FetchError):
    code = "image_decode_failed"


class FetchUnavailable(FetchError):
    code = "fetch_unavailable"
    retriable = True


class BackendError(GuardstreamError):
    code = "backend_failed"
    retriable = True


class BackendTimeout(BackendError):
    code = "backend_timeout"


class BackendUnavailable(BackendError):
    code = "backend_unavailable"
    retriable = False


class OutputUnparseable(GuardstreamError):
    code = "output_unparseable"


class InternalError(GuardstreamError):
    code = "internal_error"
