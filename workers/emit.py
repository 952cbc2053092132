"""Step 7: produce verdicts and dead letters, and wait for the broker to acknowledge them."""

from __future__ import annotations

import base64

from aiokafka import AIOKafkaProducer

from schemas.events import ChatEvent, DeadLetter, ModelRef, SourceRef, Verdict, VerdictStatus
from topics.registry import TopicNames
from workers.errors import GuardstreamError
from workers.guard.base import GuardResult


def _answering(event: ChatEvent) -> dict[str, str]:
    return {"event_id": event.event_id, "conversation_id": event.conversation_id, "tenant": event.tenant}


def ok_verdict(
    event: ChatEvent, result: GuardResult, model: ModelRef, policy_version: str, key: str, cache_hit: bool,
    timings_ms: dict[str, float],
) -> Verdict:
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
        content_key=key,
        cache_hit=cache_hit,
        decided_by=result.decided_by,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        timings_ms=timings_ms,
    )


def error_verdict(
    event: ChatEvent, error: GuardstreamError, model: ModelRef, policy_version: str, timings_ms: dict[str, float]
) -> Verdict:
    return Verdict(
        **_answering(event),
        status=VerdictStatus.ERROR,
        reasoning=f"not moderated: {error}",
        model=model,
        policy_version=policy_version,
        error=error.info(),
        timings_ms=timings_ms,
    )


def dead_letter(source: SourceRef, raw: bytes | None, error: GuardstreamError, event_id: str | None) -> DeadLetter:
    return DeadLetter(
        source=source,
        event_id=event_id,
        raw_value_b64=base64.b64encode(raw or b"").decode("ascii"),
        reason=error.code,
        message=str(error),
        retriable=error.retriable,
    )


class Emitter:
    def __init__(self, producer: AIOKafkaProducer, topics: TopicNames) -> None:
        self.producer = producer
        self.topics = topics

    async def verdict(self, verdict: Verdict, key: bytes | None) -> None:
        await self.producer.send_and_wait(self.topics.verdicts, verdict.model_dump_json().encode(), key=key)

    async def dead_letter(self, letter: DeadLetter, key: bytes | None) -> None:
        await self.producer.send_and_wait(self.topics.dlq, letter.model_dump_json().encode(), key=key)
