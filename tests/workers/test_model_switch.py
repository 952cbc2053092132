"""A ModelRelease on moderation.models switches a running worker's model without a restart or lost events."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from schemas.events import ModelRelease, VerdictStatus
from tests.conftest import S3, running_worker, verdicts_covering
from tests.factories import event
from tests.kafka_io import QUIET_S
from tests.tiny_qwen import LESSONS
from tests.waiting import wait_until
from topics.io import produce_events, produce_raw
from workers.guard.base import GuardOutcome, GuardRequest
from workers.guard.hf_transformers import TransformersGuard
from workers.guard.lite import LiteGuard
from workers.guard.registry import BACKENDS
from workers.served_model import ServedModel
from workers.settings import WorkerSettings


class GatedLite:
    """The lite guard behind a gate: while the test holds it closed, batches wait inside moderate()."""

    name = "lite"

    def __init__(self, inner: LiteGuard) -> None:
        self.inner = inner
        self.fingerprint = inner.fingerprint
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = 0

    async def moderate(self, requests: list[GuardRequest]) -> list[GuardOutcome]:
        self.waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        return await self.inner.moderate(requests)

    async def close(self) -> None:
        return None  # the session's lite guard outlives this worker


class RecordingGuard(TransformersGuard):
    """The transformers guard, gated like GatedLite, recording what still depended on it when it was closed."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.gate = asyncio.Event()
        self.gate.set()
        self.running = 0  # moderate() calls not yet returned
        self.bound: ServedModel | None = None  # the served model this backend is part of, set by the test
        self.closed_while: tuple[int, int] | None = None  # (calls running, events bound and unanswered) at close
        self.calls_after_close = 0

    async def moderate(self, requests: list[GuardRequest]) -> list[GuardOutcome]:
        if self.closed_while is not None:
            self.calls_after_close += 1
        self.running += 1
        try:
            await self.gate.wait()
            return await super().moderate(requests)
        finally:
            self.running -= 1

    async def close(self) -> None:
        assert self.bound is not None, "the test did not say which served model this backend belongs to"
        self.closed_while = (self.running, self.bound.users)
        await super().close()


def lesson_texts() -> list[str]:
    return [lesson.request.text for lesson in LESSONS if not lesson.request.images and lesson.request.response is None]


async def test_events_finish_on_the_model_they_were_admitted_with_across_a_live_switch(
    settings: WorkerSettings, lite_guard: LiteGuard, tiny_qwen: Path, s3: S3, tmp_path: Path
) -> None:
    settings.guard.artefact_cache_dir = tmp_path / "artefacts"
    servers = settings.kafka.bootstrap_servers
    events_topic = f"{settings.kafka.topic_prefix}chat.events"
    models_topic = f"{settings.kafka.topic_prefix}moderation.models"
    name = settings.guard.model_name
    texts = lesson_texts()
    before = [event(t, conversation=f"w0-{i}") for i, t in enumerate(texts)]
    # new texts (no cache hits), more than the two batches the gate holds, so some wait in the batcher's queue
    during = [event(f"{t} (copy {k})", conversation=f"w1-{k}-{i}") for k in range(5) for i, t in enumerate(texts)]
    after = [event(t, conversation=f"w2-{i}") for i, t in enumerate(texts)]
    bad = ModelRelease(name=name, version="broken", backend="transformers", artefact_uri="/nonexistent/model")
    good = ModelRelease(name=name, version="2", backend="transformers",  # as the trainer publishes: on S3
                        artefact_uri=s3.put_folder(tiny_qwen, f"models/{settings.kafka.topic_prefix}v2"))
    other = ModelRelease(name="someone-else", version="9", backend="lite", artefact_uri="/x")
    v1_guard = GatedLite(lite_guard)

    async with running_worker(settings, v1_guard) as worker:
        v1 = worker.served
        await produce_events(servers, events_topic, before)
        await verdicts_covering(settings, {e.event_id for e in before})
        await produce_raw(servers, models_topic, [(b"junk", b"not a release"), (name.encode(), bad.model_dump_json().encode())])
        await wait_until(lambda: worker.metrics.registry.get_sample_value("guardstream_model_switch_failures_total") == 1)
        assert worker.served is v1
        await wait_until(lambda: worker.tracker.unanswered_count() == 0)

        v1_guard.gate.clear()
        await produce_events(servers, events_topic, during)
        # a poll binds its records to the model served at that moment: all of `during` is bound to v1
        await wait_until(lambda: worker.tracker.unanswered_count() == len(during) and v1_guard.waiting > 0,
                         what="every event of the second wave polled, and v1 busy with them")
        await produce_raw(servers, models_topic, [(b"o", other.model_dump_json().encode()),
                                                  (name.encode(), good.model_dump_json().encode())])
        await wait_until(lambda: worker.served.ref.version == "2", timeout_s=120)
        v2 = worker.served
        await produce_events(servers, events_topic, after)
        await wait_until(lambda: worker.tracker.unanswered_count() == len(during) + len(after),
                         what="the third wave polled (bound to v2) while the second is held on v1")
        v1_guard.gate.set()
        verdicts = await verdicts_covering(settings, {e.event_id for e in before + during + after}, timeout_s=120,
                                           settle_s=QUIET_S)

    assert Counter(v.event_id for v in verdicts) == Counter(e.event_id for e in before + during + after)
    by_id = {v.event_id: v for v in verdicts}
    served = {"1": (v1, "lite"), "2": (v2, "transformers")}
    for e in before + during + after:
        v = by_id[e.event_id]
        assert v.status is VerdictStatus.OK and v.model.version in served, v
        model, decided_by = served[v.model.version]
        assert v.decided_by == decided_by, f"{e.event_id}: labelled {v.model.version}, decided by {v.decided_by}"
        assert v.content_key == model.content_key(e, []), f"{e.event_id}: key of another version"
    assert [by_id[e.event_id].model.version for e in before + during] == ["1"] * len(before + during)
    for e, text in zip(after, texts, strict=True):
        v = by_id[e.event_id]
        lesson = next(lesson for lesson in LESSONS if lesson.request.text == text)
        assert (v.model.version, v.cache_hit) == ("2", False)
        assert v.request_harmful == lesson.harmful
        assert v.content_key != by_id[before[texts.index(text)].event_id].content_key


async def test_a_replaced_model_is_closed_only_once_its_events_are_answered(
    settings: WorkerSettings, tiny_qwen: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(BACKENDS, "transformers", f"{__name__}:RecordingGuard")
    settings.guard = settings.guard.model_copy(update={"backend": "transformers", "model_path": tiny_qwen,
                                                       "max_new_tokens": 80})
    release = ModelRelease(name=settings.guard.model_name, version="2", backend="transformers",
                           artefact_uri=str(tiny_qwen))
    events = [event(text, conversation=f"c{i}") for i, text in enumerate(lesson_texts())]
    async with running_worker(settings, None) as worker:
        retired = lambda: worker.metrics.registry.get_sample_value("guardstream_models_retired_total")  # noqa: E731
        v1 = worker.served
        v1_guard = v1.backend
        assert isinstance(v1_guard, RecordingGuard)
        v1_guard.bound = v1
        v1_guard.gate.clear()
        await produce_events(settings.kafka.bootstrap_servers, f"{settings.kafka.topic_prefix}chat.events", events)
        await wait_until(lambda: v1.users == len(events) and v1_guard.running > 0,
                         what="every event bound to v1, and v1 busy with them")
        await produce_raw(settings.kafka.bootstrap_servers, f"{settings.kafka.topic_prefix}moderation.models",
                          [(b"k", release.model_dump_json().encode())])
        await wait_until(lambda: worker.served.ref.version == "2", timeout_s=120)
        v2_guard = worker.served.backend
        assert isinstance(v2_guard, RecordingGuard) and v2_guard is not v1_guard
        v2_guard.bound = worker.served
        assert retired() == 0 and v1_guard.closed_while is None, "v1 was closed with its events still running"
        v1_guard.gate.set()
        await wait_until(lambda: retired() == 1, timeout_s=120)
        verdicts = await verdicts_covering(settings, {e.event_id for e in events}, timeout_s=120, settle_s=QUIET_S)
    assert v1_guard.closed_while == (0, 0), "(moderate calls running, events bound and unanswered) when v1 closed"
    assert v1_guard.calls_after_close == 0
    assert v2_guard.closed_while == (0, 0)  # v2, still serving, was closed at shutdown, not retired
    assert retired() == 1
    assert Counter(v.event_id for v in verdicts) == Counter(e.event_id for e in events)
    assert {(v.model.version, v.decided_by) for v in verdicts} == {("1", "transformers")}
