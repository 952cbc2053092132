"""Step 7: build verdicts and dead letters, and produce them until the broker has them.

Every refusal of the broker is classified (`classify`):
- transient (a leader moving, a timeout, a lost connection): retried with a backoff capped at
  `kafka.produce_backoff_max_s`, counted in `guardstream_produce_retries_total`;
- too large: the record is made smaller once (a dead letter loses its raw value, a verdict its long
  reasoning, each with a marker) and sent again;
- permanent (authorization, a missing topic, a record still too large): retried at the capped backoff
  too, because dropping it would lose an answer, but the worker reports the stall: `/readyz` answers 503
  and `guardstream_produce_stalled` counts the answers waiting.
The offset of an event is answered only once every part of its answer is acknowledged, and a part
the broker took is never sent again.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from dataclasses import asdict
from enum import StrEnum
from typing import TypeVar

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    UnknownTopicOrPartitionError,
)
from pydantic import BaseModel

from runtime.backoff import backoff_s
from schemas.events import ChatEvent, DeadLetter, ModelRef, SourceRef, StageVerdict, Verdict, VerdictStatus
from topics.registry import TopicNames
from topics.settings import KafkaSettings
from workers.errors import GuardstreamError
from workers.guard.base import GuardResult
from workers.metrics import WorkerMetrics
from workers.settings import LimitSettings, OperatingPoint

log = structlog.get_logger("guardstream.emit")

M = TypeVar("M", bound=BaseModel)

STALL_AFTER_ATTEMPTS = 3  # transient failures in a row after which an answer counts as stalled
SHRUNK_REASONING_CHARS = 1_000
SHRUNK_MESSAGE_CHARS = 500


def cut(text: str, limit: int) -> str:
    """`text` up to `limit` characters, with a marker saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [cut: {len(text) - limit} more characters]"


def _answering(event: ChatEvent) -> dict[str, str]:
    return {"event_id": event.event_id, "conversation_id": event.conversation_id, "tenant": event.tenant}


def ok_verdict(
    event: ChatEvent, result: GuardResult, model: ModelRef, policy_version: str, key: str, cache_hit: bool,
    timings_ms: dict[str, float], source: SourceRef | None = None, operating_point: OperatingPoint | None = None,
) -> Verdict:
    """The verdict of a judged event. `policy_version` is the one it was judged under, with its operating point
    (`point_policy`), as in its content key; `operating_point` names that point."""
    return Verdict(
        **_answering(event),
        status=VerdictStatus.OK,
        request_harmful=result.request_harmful,
        response_harmful=result.response_harmful,
        request_score=result.request_score,
        response_score=result.response_score,
        reasoning=result.reasoning,
        model=model,
        policy_version=policy_version,
        operating_point=operating_point,
        content_key=key,
        cache_hit=cache_hit,
        decided_by=result.decided_by,
        stages=[StageVerdict(**asdict(stage)) for stage in result.stages],
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        timings_ms=timings_ms,
        source=source,
    )


def error_verdict(
    event: ChatEvent, error: GuardstreamError, model: ModelRef, policy_version: str, timings_ms: dict[str, float],
    source: SourceRef | None = None, operating_point: OperatingPoint | None = None,
) -> Verdict:
    """An event that could not be moderated. It says why in a fixed sentence (`error.summary`): the
    detail, which may name sizes, locations and digests, goes only to the dead-letter topic. The policy
    version and operating point are the ones it would have been judged at (see `ok_verdict`)."""
    return Verdict(
        **_answering(event),
        status=VerdictStatus.ERROR,
        reasoning=f"not moderated: {error.summary}",
        model=model,
        policy_version=policy_version,
        operating_point=operating_point,
        error=error.info(),
        timings_ms=timings_ms,
        source=source,
    )


def dead_letter(
    source: SourceRef, raw: bytes | None, error: GuardstreamError, event_id: str | None, limits: LimitSettings
) -> DeadLetter:
    raw = raw or b""
    kept = raw[: limits.max_dead_letter_raw_bytes]
    return DeadLetter(
        source=source,
        event_id=event_id,
        raw_value_b64=base64.b64encode(kept).decode("ascii"),
        raw_value_bytes=len(raw),
        raw_value_truncated=len(kept) < len(raw),
        reason=error.code,
        message=cut(str(error), limits.max_error_chars),
        retriable=error.retriable,
    )


def smaller_dead_letter(letter: DeadLetter) -> DeadLetter:
    return letter.model_copy(update={"raw_value_b64": "", "raw_value_truncated": letter.raw_value_bytes != 0,
                                     "message": cut(letter.message, SHRUNK_MESSAGE_CHARS)})


def smaller_verdict(verdict: Verdict) -> Verdict:
    return verdict.model_copy(update={"reasoning": cut(verdict.reasoning, SHRUNK_REASONING_CHARS)})


class ProduceFailure(StrEnum):
    TRANSIENT = "transient"
    TOO_LARGE = "too_large"
    PERMANENT = "permanent"


def classify(exc: KafkaError) -> ProduceFailure:
    """What a broker's refusal means for the answer that it refused."""
    if isinstance(exc, MessageSizeTooLargeError | RecordListTooLargeError):
        return ProduceFailure.TOO_LARGE
    if isinstance(exc, UnknownTopicOrPartitionError):  # retriable to Kafka while a topic is created; here a gap
        return ProduceFailure.PERMANENT
    if exc.retriable or isinstance(exc, KafkaTimeoutError):
        return ProduceFailure.TRANSIENT
    return ProduceFailure.PERMANENT


class Publisher:
    def __init__(self, producer: AIOKafkaProducer, topics: TopicNames, kafka: KafkaSettings,
                 metrics: WorkerMetrics) -> None:
        self.producer = producer
        self.topics = topics
        self.backoff_max_s = kafka.produce_backoff_max_s
        self.metrics = metrics
        self.stalled = 0  # answers the broker keeps refusing; /readyz reports them

    async def publish(self, key: bytes | None, verdict: Verdict | None, letter: DeadLetter | None) -> None:
        """The dead letter, then the verdict; each is sent until acknowledged, and only once."""
        if letter is not None:
            await self._deliver(self.topics.dlq, letter, key, smaller_dead_letter)
        if verdict is not None:
            await self._deliver(self.topics.verdicts, verdict, key, smaller_verdict)

    async def publish_many(self, answers: list[tuple[bytes | None, Verdict | None, DeadLetter | None]]
                           ) -> list[Exception | None]:
        """`publish` for many answers at once: every dead letter is handed to the producer, then awaited,
        then every verdict; they share produce requests instead of each waiting for its own round trip.
        A record the producer or the broker refuses goes the one-by-one way (`_deliver`: retried, shrunk,
        reported), and a record that cannot even be built fails its own answer only: each answer's error,
        or None. (Not send_batch with batches built here: aiokafka lets one batch per partition wait in its
        accumulator, and its wait for room shrinks its timeout by the total time waited at every turn, so
        many finished batches answering at once ran out of time and failed: KafkaTimeoutError.)"""
        errors: list[Exception | None] = [None] * len(answers)
        with self.metrics.stage_seconds.labels("emit").time():
            letters = [(i, letter) for i, (_, _, letter) in enumerate(answers) if letter is not None]
            await self._deliver_many(self.topics.dlq, letters, answers, errors, smaller_dead_letter)
            verdicts = [(i, v) for i, (_, v, _) in enumerate(answers) if v is not None and errors[i] is None]
            await self._deliver_many(self.topics.verdicts, verdicts, answers, errors, smaller_verdict)
        return errors

    async def _deliver_many(self, topic: str, records: list[tuple[int, M]],
                            answers: list[tuple[bytes | None, Verdict | None, DeadLetter | None]],
                            errors: list[Exception | None], shrink: Callable[[M], M]) -> None:
        sent: list[tuple[int, M, asyncio.Future[object]]] = []
        refused: list[tuple[int, M, KafkaError]] = []
        for i, record in records:
            try:
                sent.append((i, record, await self.producer.send(topic, record.model_dump_json().encode(),
                                                                 key=answers[i][0])))
            except KafkaError as exc:
                refused.append((i, record, exc))
            except Exception as exc:
                errors[i] = exc
        for i, record, delivery in sent:
            try:
                await delivery
            except KafkaError as exc:
                refused.append((i, record, exc))
        for i, record, exc in refused:  # rare: one by one, until the broker takes it
            try:
                await self._deliver(topic, record, answers[i][0], shrink, exc)
            except Exception as exc:
                errors[i] = exc

    async def _deliver(self, topic: str, record: M, key: bytes | None, shrink: Callable[[M], M],
                       refused: KafkaError | None = None) -> None:
        """Send `record` until the broker takes it; `refused` is the broker's answer to a send already made."""
        attempt, shrunk, stalled = 0, False, False
        try:
            while True:
                if refused is None:
                    try:
                        with self.metrics.stage_seconds.labels("emit").time():
                            await self.producer.send_and_wait(topic, record.model_dump_json().encode(), key=key)
                        return
                    except KafkaError as exc:
                        refused = exc
                attempt += 1
                failure = classify(refused)
                error_type = type(refused).__name__
                self.metrics.produce_retries.labels(failure.value, error_type).inc()
                error, refused = f"{error_type}: {refused}", None
                if failure is ProduceFailure.TOO_LARGE and not shrunk:
                    record, shrunk = shrink(record), True
                    log.warning("produce_shrunk", topic=topic, error=error_type)
                    continue
                if not stalled and (failure is not ProduceFailure.TRANSIENT or attempt >= STALL_AFTER_ATTEMPTS):
                    stalled = True
                    self._stall(+1)
                log.error("produce_failed", topic=topic, attempt=attempt, failure=failure.value, error=error)
                await asyncio.sleep(backoff_s(attempt + 1, 0.1, self.backoff_max_s))
        finally:
            if stalled:
                self._stall(-1)

    def _stall(self, change: int) -> None:
        self.stalled += change
        self.metrics.produce_stalled.set(self.stalled)
