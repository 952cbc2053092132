"""Answering: what every polled record ends in, and how it is sent.

An admitted event travels as a `Pending`, bound to the model served when it was admitted, and ends as one
`Answer`: an ok verdict, an error verdict with a dead letter saying why, or (for input that is not an
event at all) a dead letter alone. `Answerer` builds these answers, produces them together, marks each
record's offset answered once the broker has taken its answer, and then gives the verdict to the
embedding application's hook.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from aiokafka import ConsumerRecord
from PIL import Image

from schemas.events import ChatEvent, DeadLetter, SourceRef, Verdict
from workers.emit import Publisher, cut, dead_letter, error_verdict, ok_verdict
from workers.errors import GuardstreamError, InternalError
from workers.guard.base import GuardResult
from workers.metrics import WorkerMetrics
from workers.served_model import ServedModel
from workers.settings import LimitSettings, OperatingPoint, WorkerSettings

log = structlog.get_logger("guardstream.worker")


@dataclass(eq=False)
class Pending:
    """One polled event on its way to its one answer, bound to the model served when it was admitted."""

    record: ConsumerRecord[bytes, bytes]
    event: ChatEvent
    served: ServedModel
    started: float  # admission (monotonic)
    key: str | None = None  # the content key, once known
    images: list[Image.Image] = field(default_factory=list)
    guard_started: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def point(self) -> OperatingPoint:
        """The operating point it is judged at: its tenant's, on the model it is bound to."""
        return self.served.operating_point(self.event.tenant)


@dataclass(frozen=True)
class Answer:
    """What answers one record: a verdict, a dead letter, or both. `served` is released once it is sent."""

    record: ConsumerRecord[bytes, bytes]
    verdict: Verdict | None
    letter: DeadLetter | None
    served: ServedModel | None = None


class Answerer:
    """Builds each record's answer and sends it. `answered` is told each record whose answer the broker took;
    `on_verdict` (the embedding application's hook) is then given its verdict."""

    publisher: Publisher  # attached by Worker.start(), once the producer is up

    def __init__(self, settings: WorkerSettings, metrics: WorkerMetrics,
                 answered: Callable[[ConsumerRecord[bytes, bytes]], None],
                 on_verdict: Callable[[Verdict], None] | None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.answered = answered
        self.on_verdict = on_verdict

    def ok(self, pending: Pending, result: GuardResult, cache_hit: bool) -> Answer:
        """The verdict of a judged event (a verdict that cannot be built is that event's failure)."""
        assert pending.key is not None
        if cache_hit:
            self.metrics.cache_hits.inc()
        else:
            pending.timings["total_ms"] = ms_since(pending.started)
        try:
            point = pending.point
            verdict = ok_verdict(pending.event, result, pending.served.ref, pending.served.policy(point), pending.key,
                                 cache_hit, pending.timings, record_source(pending.record, self.settings.limits),
                                 operating_point=point)
        except Exception as exc:
            return self.failed(pending, exc)
        return Answer(pending.record, verdict, None, pending.served)

    def failed(self, pending: Pending, exc: BaseException) -> Answer:
        """An error verdict and a dead letter, both saying why (the exception's type and message)."""
        event, served = pending.event, pending.served
        error = self.typed(exc, event.event_id)
        log.warning("event_failed", event_id=event.event_id, code=error.code, retriable=error.retriable,
                    error=cut(str(error), self.settings.limits.max_error_chars))
        verdict = error_verdict(event, error, served.ref, served.policy(pending.point), pending.timings,
                                record_source(pending.record, self.settings.limits), operating_point=pending.point)
        return Answer(pending.record, verdict, self.letter(pending.record, error, event.event_id), served)

    def letter(self, record: ConsumerRecord[bytes, bytes], error: GuardstreamError, event_id: str | None) -> DeadLetter:
        return dead_letter(record_source(record, self.settings.limits), record.value, error, event_id, self.settings.limits)

    @staticmethod
    def typed(exc: BaseException, event_id: str | None) -> GuardstreamError:
        if isinstance(exc, GuardstreamError):
            return exc
        log.error("event_failed_unexpectedly", event_id=event_id, exc_info=exc)
        return InternalError(f"{type(exc).__name__}: {exc}")

    async def answer(self, answers: list[Answer]) -> None:
        """Produce the answers together (the publisher retries each until the broker takes it); only then
        is each offset answered. An answer that cannot even be built into a record is replaced by a dead
        letter saying so."""
        limits = self.settings.limits
        keys = [answer_key(a.record.key, limits) for a in answers]
        errors = await self.publisher.publish_many(
            [(key, a.verdict, a.letter) for key, a in zip(keys, answers, strict=True)])
        for key, answer, error in zip(keys, answers, errors, strict=True):
            if error is not None:
                event_id = answer.verdict.event_id if answer.verdict else (answer.letter.event_id if answer.letter else None)
                answer = Answer(answer.record, None, self.letter(answer.record, self.typed(error, event_id), event_id),
                                answer.served)
                await self.publisher.publish(key, None, answer.letter)
            self.answered(answer.record)
            if answer.served is not None:
                answer.served.users -= 1
            if answer.letter is not None:
                self.metrics.dead_letters.labels(answer.letter.reason).inc()
            if answer.verdict is not None:
                self.metrics.verdicts_out.labels(answer.verdict.status.value, str(answer.verdict.request_harmful)).inc()
                self.hand_over(answer.verdict)

    def hand_over(self, verdict: Verdict) -> None:
        """Give the verdict to the embedding application's hook; its failure is logged and counted, never
        mistaken for a failure to answer (the answer is already on the topic)."""
        if self.on_verdict is None:
            return
        try:
            self.on_verdict(verdict)
        except Exception:
            self.metrics.task_failures.labels("hook").inc()
            log.exception("on_verdict_failed", event_id=verdict.event_id)


def answer_key(key: bytes | None, limits: LimitSettings) -> bytes | None:
    """The key an answer is produced with: the input's, or, for a key over `max_key_bytes`, its sha256
    (still the same for every record with that key, so answers keep its partitioning)."""
    if key is None or len(key) <= limits.max_key_bytes:
        return key
    return b"sha256:" + hashlib.sha256(key).hexdigest().encode()


def record_source(record: ConsumerRecord[bytes, bytes], limits: LimitSettings) -> SourceRef:
    """Where a record is: what dead letters and verdicts carry, so the record can be found again."""
    key = record.key.decode("utf-8", "replace") if record.key is not None else None
    return SourceRef(topic=record.topic, partition=record.partition, offset=record.offset,
                     key=None if key is None else cut(key, limits.max_key_bytes))


def ms_since(started: float) -> float:
    """Milliseconds since a monotonic instant, as verdicts' timings carry them."""
    return round((time.monotonic() - started) * 1000, 2)
