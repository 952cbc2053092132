"""The wire contract of guardstream: every record on every topic is one of these models."""

from schemas.events import (
    SCHEMA_VERSION,
    AuditLabel,
    ChatEvent,
    DeadLetter,
    ErrorInfo,
    ImageRef,
    ModelRef,
    ModelRelease,
    SourceRef,
    StageVerdict,
    Verdict,
    VerdictStatus,
)

__all__ = [
    "SCHEMA_VERSION",
    "AuditLabel",
    "ChatEvent",
    "DeadLetter",
    "ErrorInfo",
    "ImageRef",
    "ModelRef",
    "ModelRelease",
    "SourceRef",
    "StageVerdict",
    "Verdict",
    "VerdictStatus",
]
