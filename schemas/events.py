"""Pydantic models of every record guardstream reads or writes.

Every model carries ``schema_version``. A reader accepts versions up to ``SCHEMA_VERSION``
and rejects newer ones, so a producer that upgrades first is noticed instead of misread.
Unknown fields are rejected: a typo in a producer is a schema error, not a silent default.

Times (`WireTime`, every datetime field of every model) are UTC: a time without an offset is read as UTC,
a time with one is converted to UTC, so any two times of any records compare. A time that cannot be
expressed in UTC (year 9999 at a negative offset) is a schema error like any other. A label's time may lie
at most `MAX_LABEL_CLOCK_SKEW` ahead of the reader's clock: the latest label of an event wins, so a label
dated in the future would win over every relabel until then; it is refused as undecodable instead.

Coordinates (`SourceRef`) are ones a Kafka broker can have: a legal topic name, a partition and an offset
within the protocol's int32 and int64, never negative, so seeking to them cannot fail on their shape.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 1
# Hosts kept by NTP differ by well under a second; five minutes lets a badly synced labeller's clock
# through (Kerberos allows the same) while a label from further ahead cannot outlive a relabel by more.
MAX_LABEL_CLOCK_SKEW = timedelta(minutes=5)

Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Identifier = Annotated[str, Field(min_length=1, max_length=256)]


def utcnow() -> datetime:
    return datetime.now(UTC)


def _as_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:  # pydantic reports ValueError as a validation error, OverflowError not at all
        raise ValueError(f"{value.isoformat()} is out of range in UTC") from exc


def _not_in_future(value: datetime) -> datetime:
    if value > utcnow() + MAX_LABEL_CLOCK_SKEW:
        raise ValueError(f"{value.isoformat()} is in the future (more than {MAX_LABEL_CLOCK_SKEW} ahead)")
    return value


def _not_dots(name: str) -> str:
    if name in {".", ".."}:
        raise ValueError(f"{name!r} is not a legal topic name")
    return name


WireTime = Annotated[datetime, AfterValidator(_as_utc),
                     Field(description="UTC; a time without an offset is read as UTC")]
LabelTime = Annotated[WireTime, AfterValidator(_not_in_future)]
TopicName = Annotated[str, Field(min_length=1, max_length=249, pattern=r"^[a-zA-Z0-9._-]+$"),
                      AfterValidator(_not_dots)]


class WireModel(BaseModel):
    """Base of every wire model: strict about unknown fields, immutable, versioned."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Annotated[int, Field(ge=1, le=SCHEMA_VERSION)] = SCHEMA_VERSION


class ImageRef(BaseModel):
    """Where an image lives (s3://, file://, https://) and, optionally, what it must hash to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: Annotated[str, Field(min_length=1, max_length=2048)]
    sha256: Sha256Hex | None = None
    media_type: str | None = None


class ChatEvent(WireModel):
    """A chat turn to moderate: the user's text and images, and optionally the VLM's response."""

    event_id: Identifier
    conversation_id: Identifier
    tenant: Identifier = "default"
    created_at: WireTime = Field(default_factory=utcnow)
    text: str = ""
    images: list[ImageRef] = Field(default_factory=list)
    response: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _has_content(self) -> ChatEvent:
        if not self.text.strip() and not self.images:
            raise ValueError("an event needs text or at least one image")
        return self


class ModelRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str


class VerdictStatus(StrEnum):
    OK = "ok"
    ERROR = "error"


class ErrorInfo(BaseModel):
    """Why an event could not be moderated: a stable code and a human-readable message."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str
    message: str
    retriable: bool = False


class SourceRef(BaseModel):
    """The coordinates of a record on its topic, so that it can be found and replayed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    topic: TopicName
    partition: Annotated[int, Field(ge=0, le=2**31 - 1)]
    offset: Annotated[int, Field(ge=0, le=2**63 - 1)]
    key: str | None = None


class StageVerdict(BaseModel):
    """What one stage of a multi-stage guard (a cascade) answered: its labels and scores."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    request_harmful: bool
    response_harmful: bool | None = None
    request_score: float | None = None
    response_score: float | None = None


class Verdict(WireModel):
    """The answer to one ChatEvent: labels, the reasoning behind them, and how it was reached."""

    event_id: Identifier
    conversation_id: Identifier
    tenant: Identifier
    status: VerdictStatus
    request_harmful: bool | None = None
    response_harmful: bool | None = None
    request_score: float | None = None
    response_score: float | None = None
    reasoning: str = ""
    model: ModelRef
    policy_version: str = Field(description="the policy the verdict was judged under; since operating points, "
                                "`<policy>+<point>` (e.g. `1+balanced`)")
    operating_point: str | None = Field(None, description="the operating point applied (strict, balanced or "
                                        "permissive), the tenant's; None in verdicts written before points")
    content_key: str | None = None
    cache_hit: bool = False
    decided_by: str | None = None
    stages: list[StageVerdict] = Field(default_factory=list,
                                       description="the stages that judged the event, in order, when more than one "
                                       "did (a cascade's lite stage, then the reasoning stage that decided); empty "
                                       "when a single stage decided")
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    produced_at: WireTime = Field(default_factory=utcnow)
    source: SourceRef | None = Field(None, description="where the judged event is (topic, partition, offset), "
                                     "so a label can find it by seeking; None when it came from no topic")

    @model_validator(mode="after")
    def _status_matches_error(self) -> Verdict:
        if (self.status is VerdictStatus.ERROR) != (self.error is not None):
            raise ValueError("an error verdict carries an error, an ok verdict none")
        if self.status is VerdictStatus.OK and self.request_harmful is None:
            raise ValueError("an ok verdict says whether the request was harmful")
        return self


class DeadLetter(WireModel):
    """Input that could not be moderated, with the reason. The raw value is kept up to a configured size
    (`raw_value_truncated` marks a cut one); `source` always finds the whole record on its topic."""

    source: SourceRef
    event_id: str | None = None
    raw_value_b64: str
    raw_value_bytes: int | None = None
    raw_value_truncated: bool = False
    reason: str
    message: str
    retriable: bool = False
    failed_at: WireTime = Field(default_factory=utcnow)


class AuditLabel(WireModel):
    """A human or upstream judgement of an event, used for evaluation and retraining.

    The trainer finds the labelled event by seeking, never by a lookup table: through `verdict`, the
    coordinates of the verdict the label judges (which carries its event's coordinates), or through
    `event`, the event's own coordinates, for a label given without a verdict. A label with neither
    cannot be resolved."""

    event_id: Identifier
    request_harmful: bool
    response_harmful: bool | None = None
    labeller: Identifier
    labelled_at: LabelTime = Field(default_factory=utcnow)
    note: Annotated[str, Field(max_length=4_000)] = ""
    verdict: SourceRef | None = None
    event: SourceRef | None = None
    random_sample: bool | None = Field(None, description="true when the reviewed event was chosen by the uniform "
                                       "random-sample policy (its labels are an unbiased estimate of quality), false "
                                       "when it was chosen for another reason (model uncertainty, a report...), None "
                                       "when unknown (labels from outside the console)")


class ModelRelease(WireModel):
    """The model version workers must serve (compacted topic, keyed by model name)."""

    name: Identifier
    version: Identifier
    backend: Identifier
    artefact_uri: str
    kind: Literal["full", "adapter"] = "full"
    base_model: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    released_at: WireTime = Field(default_factory=utcnow)
