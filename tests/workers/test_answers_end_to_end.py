"""Every way an admitted event can fail ends, against the real broker, in one error verdict with the
failure's code and one dead letter, and the worker commits past it and goes on answering."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from dataclasses import dataclass

import pytest

from schemas.events import ChatEvent, DeadLetter, Verdict, VerdictStatus
from tests.conftest import S3, committed_and_end, dead_letters_for, running_worker, verdicts_covering
from tests.factories import BENIGN, event, image_ref, png
from tests.kafka_io import QUIET_S, read_topic
from topics.io import produce_events
from topics.local_broker import free_loopback_port
from workers.guard.base import GuardOutcome, GuardRequest, GuardResult
from workers.guard.lite import LiteGuard
from workers.settings import WorkerSettings

TRIGGER = "[fail here]"


class TriggeredGuard:
    """The lite guard, except for a batch with a request whose text holds TRIGGER: `misbehave` answers it."""

    name = "lite"

    def __init__(self, inner: LiteGuard) -> None:
        self.inner = inner
        self.fingerprint = inner.fingerprint

    async def moderate(self, requests: list[GuardRequest]) -> list[GuardOutcome]:
        if any(TRIGGER in r.text for r in requests):
            return await self.misbehave(requests)
        return await self.inner.moderate(requests)

    async def misbehave(self, requests: list[GuardRequest]) -> list[GuardOutcome]:
        raise NotImplementedError

    async def close(self) -> None:
        return None  # the session's lite guard outlives this worker


class RaisingGuard(TriggeredGuard):
    async def misbehave(self, requests: list[GuardRequest]) -> list[GuardOutcome]:
        raise RuntimeError("the model server dropped the connection")


class SilentGuard(TriggeredGuard):
    async def misbehave(self, requests: list[GuardRequest]) -> list[GuardOutcome]:
        await asyncio.Event().wait()  # never set: the call only ends when the guard's timeout cancels it
        raise AssertionError("unreachable")


class MislabellingGuard(TriggeredGuard):
    """Answers the triggering request with a label that is not a bool, which no verdict can carry."""

    async def misbehave(self, requests: list[GuardRequest]) -> list[GuardOutcome]:
        results = await self.inner.moderate(requests)
        return [dataclasses.replace(result, request_harmful="maybe")  # type: ignore[arg-type]
                if TRIGGER in request.text and isinstance(result, GuardResult) else result
                for request, result in zip(requests, results, strict=True)]


@dataclass
class Answers:
    verdicts: dict[str, Verdict]
    letters: list[DeadLetter]
    positions: dict[str, tuple[int, int]]  # event id: (partition, offset) on the events topic
    committed: dict[int, int]

    def assert_failed(self, failed: ChatEvent, code: str, retriable: bool) -> None:
        verdict = self.verdicts[failed.event_id]
        assert verdict.status is VerdictStatus.ERROR and verdict.error is not None, verdict
        assert (verdict.error.code, verdict.error.retriable) == (code, retriable)
        letters = [letter for letter in self.letters if letter.event_id == failed.event_id]
        assert [(letter.reason, letter.retriable) for letter in letters] == [(code, retriable)]
        partition, offset = self.positions[failed.event_id]
        assert (letters[0].source.partition, letters[0].source.offset) == (partition, offset)
        assert self.committed[partition] > offset, "the partition was not committed past the failed record"

    def assert_ok(self, events: list[ChatEvent]) -> None:
        assert all(self.verdicts[e.event_id].status is VerdictStatus.OK for e in events)


async def answer(settings: WorkerSettings, backend: object, waves: list[list[ChatEvent]], failing: int) -> Answers:
    """Produce each wave once the one before is answered, stop the worker, and collect every answer."""
    servers, topic = settings.kafka.bootstrap_servers, f"{settings.kafka.topic_prefix}chat.events"
    events = [e for wave in waves for e in wave]
    async with running_worker(settings, backend):
        for wave in waves:
            await produce_events(servers, topic, wave)
            verdicts = await verdicts_covering(settings, {e.event_id for e in wave}, settle_s=QUIET_S)  # all so far
        letters = await dead_letters_for(settings, failing, settle_s=QUIET_S)
    committed, ends = await committed_and_end(settings, len(events))
    assert Counter(v.event_id for v in verdicts) == Counter(e.event_id for e in events)
    assert len(letters) == failing
    assert committed == ends, (committed, ends)
    inputs = await read_topic(servers, topic, len(events))
    positions = {ChatEvent.model_validate_json(r.value).event_id: (r.partition, r.offset) for r in inputs}
    return Answers({v.event_id: v for v in verdicts}, letters, positions, committed)


def after(failing: ChatEvent, count: int = 3) -> list[ChatEvent]:
    """Ordinary events of the same conversation, so on the same partition, after the failing one."""
    return [event(f"{BENIGN[i % len(BENIGN)]} ({i})", conversation=failing.conversation_id) for i in range(count)]


async def test_an_event_over_max_images_is_refused_with_limit_exceeded(
    settings: WorkerSettings, lite_guard: LiteGuard, s3: S3
) -> None:
    settings.limits.max_images = 1
    picture = png(32, 32)
    uri = s3.put("answers/one.png", picture)
    failing = event("two pictures", images=[image_ref(uri, picture), image_ref(uri, picture)], conversation="imgs")
    allowed = event("one picture", images=[image_ref(uri, picture)], conversation="imgs")
    later = [allowed, *after(failing)]
    answers = await answer(settings, lite_guard, [[failing, *later]], failing=1)
    answers.assert_failed(failing, "limit_exceeded", retriable=False)
    answers.assert_ok(later)
    assert answers.verdicts[allowed.event_id].timings_ms["fetch_ms"] > 0


async def test_an_image_store_that_does_not_answer_is_fetch_unavailable(
    settings: WorkerSettings, lite_guard: LiteGuard
) -> None:
    settings.fetch.s3_endpoint = f"http://127.0.0.1:{free_loopback_port()}"  # nothing listens there
    settings.fetch.timeout_s = 0.5
    settings.fetch.max_attempts = 2
    failing = event("what is this?", images=[image_ref("s3://images/nowhere.png")], conversation="store")
    later = after(failing)
    answers = await answer(settings, lite_guard, [[failing, *later]], failing=1)
    answers.assert_failed(failing, "fetch_unavailable", retriable=True)
    answers.assert_ok(later)


@pytest.mark.parametrize(
    ("guard", "code", "retriable"),
    [
        ("RaisingGuard", "backend_failed", True),  # raises on the trigger
        ("SilentGuard", "backend_timeout", True),  # never answers the trigger (guard timeout 0.5 s)
        ("MislabellingGuard", "internal_error", False),  # a result no verdict can carry
    ],
)
async def test_a_backend_failure_is_answered_with_its_code_and_the_partition_goes_on(
    settings: WorkerSettings, lite_guard: LiteGuard, guard: str, code: str, retriable: bool
) -> None:
    settings.guard.max_attempts = 1
    settings.guard.timeout_s = 0.5
    failing = event(f"Tell me a fun fact about octopuses. {TRIGGER}", conversation=guard)
    later = after(failing)
    answers = await answer(settings, globals()[guard](lite_guard), [[failing, *later]], failing=1)
    answers.assert_failed(failing, code, retriable=retriable)
    answers.assert_ok(later)


async def test_a_repeat_of_an_internal_error_is_answered_and_the_worker_goes_on(
    settings: WorkerSettings, lite_guard: LiteGuard
) -> None:
    """The bad result must not come back from the cache as a verdict, nor stop the worker, when it repeats."""
    first = event(f"Is this request fine? {TRIGGER}", conversation="mislabel")
    repeat = event(first.text, conversation="mislabel")
    later = after(repeat)
    answers = await answer(settings, MislabellingGuard(lite_guard), [[first], [repeat, *later]], failing=2)
    answers.assert_failed(first, "internal_error", retriable=False)
    answers.assert_failed(repeat, "internal_error", retriable=False)
    answers.assert_ok(later)
