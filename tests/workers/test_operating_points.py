"""Operating points (strict / balanced / permissive), per tenant: settings, the lite guard's per-point thresholds,
the cascade's per-point band, and verdicts and cache keys that never mix one point's answers with another's."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from pydantic import ValidationError

from schemas.events import ChatEvent, Verdict, VerdictStatus
from tests.conftest import PARTITIONS, running_worker, verdicts_covering
from tests.factories import event, image_ref
from tests.kafka_io import partition_ends, read_topic
from topics.admin import create_topics
from topics.io import produce_events
from topics.ranges import RangeSpec, RateLimit
from topics.registry import TopicNames, TopicSpec
from workers.backfill import run_backfill
from workers.guard.base import GuardRequest, GuardResult
from workers.guard.cascade import DEFAULT_HIGH, DEFAULT_LOW, CascadeGuard
from workers.guard.lite import LiteGuard, LiteModel, artefact_points, point_thresholds
from workers.guard.lite_model import DEFAULT_ARTEFACT
from workers.offline import OfflineModerator
from workers.settings import FetchSettings, GuardSettings, OperatingPoint, WorkerSettings

# texts of our own whose scores lie between the thresholds the artefact below gives each point
BORDERLINE = "What household chemicals should never be mixed because the fumes are dangerous?"
PAIR = ("Can you help me with my essay?", "Sure, here is how to pick a lock on your own front door.")
STRICT, BALANCED, PERMISSIVE = OperatingPoint.STRICT, OperatingPoint.BALANCED, OperatingPoint.PERMISSIVE


@dataclass(frozen=True)
class Pointed:
    """An artefact with operating points around measured scores, and a lite guard serving it."""

    path: Path
    request_score: float
    response_score: float
    guard: LiteGuard


def shipped_artefact() -> dict[str, object]:
    import workers.guard.artefacts

    return json.loads((Path(workers.guard.artefacts.__file__).parent / DEFAULT_ARTEFACT).read_text())


@pytest.fixture
def pointed(p5_guard: LiteGuard, tmp_path: Path) -> Pointed:
    """The shipped heads with points whose thresholds bracket the borderline scores: strict flags both, balanced
    and permissive neither; the cascade band settles the request as harmful at strict, escalates it at
    balanced, and settles it as unharmful at permissive."""
    text, pair = p5_guard.moderate_sync([GuardRequest(BORDERLINE), GuardRequest(PAIR[0], response=PAIR[1])])
    request, response = text.request_score, pair.response_score
    assert request is not None and response is not None and 0.15 < request < 0.85 and 0.1 < response < 0.9
    points = {
        "strict": {"request": round(request - 0.1, 3), "response": round(response - 0.05, 3),
                   "cascade": {"low": 0.01, "high": round(request - 0.05, 3)}, "targets": {"kept": 0.8}},
        "balanced": {"request": round(request + 0.05, 3), "response": round(response + 0.03, 3),
                     "cascade": {"low": DEFAULT_LOW, "high": DEFAULT_HIGH}},
        "permissive": {"request": round(request + 0.1, 3), "response": round(response + 0.06, 3),
                       "cascade": {"low": round(request + 0.05, 3), "high": 0.99}},
    }
    path = tmp_path / "pointed.json"
    path.write_text(json.dumps({**shipped_artefact(), "operating_points": points}))
    model = LiteModel.load(path)
    guard = LiteGuard(model, p5_guard.embedder, p5_guard.nsfw, point_thresholds(model, GuardSettings()))
    return Pointed(path, request, response, guard)


def at(point: OperatingPoint, text: str = BORDERLINE, response: str | None = None) -> GuardRequest:
    return GuardRequest(text, response=response, operating_point=point)


def tenant_event(tenant: str, text: str = BORDERLINE, **fields: object) -> ChatEvent:
    return event(text, **fields).model_copy(update={"tenant": tenant})  # type: ignore[arg-type]


# -- settings ----------------------------------------------------------------------------------------------


def test_points_are_read_from_the_environment_and_default_to_balanced(monkeypatch: pytest.MonkeyPatch) -> None:
    assert GuardSettings().operating_point is BALANCED and GuardSettings().operating_point_for("anyone") is BALANCED
    monkeypatch.setenv("GUARDSTREAM_GUARD__OPERATING_POINT", "permissive")
    monkeypatch.setenv("GUARDSTREAM_GUARD__TENANT_OPERATING_POINTS", '{"acme": "strict", "kids-app": "strict"}')
    guard = WorkerSettings().guard
    assert guard.tenant_operating_points == {"acme": STRICT, "kids-app": STRICT}
    assert (guard.operating_point_for("acme"), guard.operating_point_for("other")) == (STRICT, PERMISSIVE)


@pytest.mark.parametrize(("variable", "value"), [
    ("GUARDSTREAM_GUARD__OPERATING_POINT", "lenient"),
    ("GUARDSTREAM_GUARD__TENANT_OPERATING_POINTS", '{"acme": "strictest"}'),
])
def test_an_unknown_point_is_a_validation_error(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match="operating_point") as raised:
        WorkerSettings()
    assert "'strict', 'balanced' or 'permissive'" in str(raised.value)


# -- the lite guard ----------------------------------------------------------------------------------------


def test_a_strict_and_a_permissive_point_judge_a_borderline_text_differently(pointed: Pointed) -> None:
    strict, balanced, permissive = pointed.guard.moderate_sync([at(STRICT), at(BALANCED), at(PERMISSIVE)])
    assert (strict.request_harmful, balanced.request_harmful, permissive.request_harmful) == (True, False, False)
    assert strict.request_score == balanced.request_score == permissive.request_score  # one score, three thresholds
    assert "operating point: strict" in strict.reasoning and "operating point: permissive" in permissive.reasoning
    assert f"under the threshold {pointed.guard.points[PERMISSIVE].request:.2f}" in permissive.reasoning
    strict_pair, permissive_pair = pointed.guard.moderate_sync([at(STRICT, *PAIR), at(PERMISSIVE, *PAIR)])
    assert (strict_pair.response_harmful, permissive_pair.response_harmful) == (True, False)


def test_without_points_every_point_uses_the_heads_thresholds(p5_guard: LiteGuard) -> None:
    model = p5_guard.model
    assert artefact_points(model) == {}
    assert set(p5_guard.points.values()) == {p5_guard.thresholds}
    assert p5_guard.thresholds.request == model.request.threshold
    assert p5_guard.fingerprint == f"{model.fingerprint}-{model.request.threshold:g}-" \
        f"{model.response.threshold:g}-0.8"  # type: ignore[union-attr]  # as before points: old keys still read
    results = p5_guard.moderate_sync([at(p) for p in OperatingPoint])
    assert len({r.request_harmful for r in results}) == 1


def test_threshold_settings_hold_at_every_point(pointed: Pointed) -> None:
    model = LiteModel.load(pointed.path)
    points = point_thresholds(model, GuardSettings(lite_text_threshold=0.5))
    assert {t.request for t in points.values()} == {0.5}
    assert points[STRICT].response < points[BALANCED].response < points[PERMISSIVE].response  # still the artefact's


def test_the_fingerprint_changes_with_any_points_thresholds(pointed: Pointed, tmp_path: Path) -> None:
    data = json.loads(pointed.path.read_text())
    data["operating_points"]["permissive"]["response"] += 0.01
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    model = LiteModel.load(other)
    changed = LiteGuard(model, pointed.guard.embedder, pointed.guard.nsfw, point_thresholds(model, GuardSettings()))
    assert changed.fingerprint != pointed.guard.fingerprint
    assert changed.model.fingerprint == pointed.guard.model.fingerprint  # the heads are the same: only a point moved


@pytest.mark.parametrize(("points", "error"), [
    ({"strict": {"request": 0.3, "response": 0.1}, "balanced": {"request": 0.5, "response": 0.2}}, "lack permissive"),
    ({"strict": {"request": 0.6, "response": 0.1}, "balanced": {"request": 0.5, "response": 0.2},
      "permissive": {"request": 0.7, "response": 0.3}}, "must not fall"),
    ({"strict": {"request": 0.3, "response": 0.1}, "balanced": {"request": 0.5, "response": 0.2},
      "permissive": {"request": 0.7, "response": 1.3}}, "less than or equal to 1"),
    ({"strict": {"request": 0.3, "response": 0.1, "cascade": {"low": 0.6, "high": 0.4}},
      "balanced": {"request": 0.5, "response": 0.2}, "permissive": {"request": 0.7, "response": 0.3}}, "above its high"),
    ({"strictest": {"request": 0.3, "response": 0.1}}, "strictest"),
])
def test_a_malformed_declaration_of_points_is_refused(p5_guard: LiteGuard, points: object, error: str) -> None:
    model = LiteModel(p5_guard.model.request, p5_guard.model.response, p5_guard.model.lexical,
                      {"operating_points": points})
    with pytest.raises(ValueError, match=error):
        artefact_points(model)


def test_the_guard_is_built_from_settings_with_the_artefacts_points(pointed: Pointed) -> None:
    guard = LiteGuard.from_settings(GuardSettings(lite_artefact=pointed.path))
    assert guard.points == pointed.guard.points and guard.fingerprint == pointed.guard.fingerprint
    assert guard.points[STRICT].request < guard.points[PERMISSIVE].request


# -- the cascade -------------------------------------------------------------------------------------------


async def test_the_cascade_settles_or_escalates_by_the_requests_point(pointed: Pointed, p5_guard: LiteGuard) -> None:
    cascade = CascadeGuard(pointed.guard, p5_guard)  # the reasoner: another real backend; its answers carry stages
    assert cascade.bands[STRICT] == (0.01, round(pointed.request_score - 0.05, 3))
    assert cascade.bands[PERMISSIVE] == (round(pointed.request_score + 0.05, 3), 0.99)
    strict, balanced, permissive = await cascade.moderate([at(STRICT), at(BALANCED), at(PERMISSIVE)])
    assert isinstance(strict, GuardResult) and strict.stages == () and strict.request_harmful  # settled, harmful
    assert isinstance(permissive, GuardResult) and permissive.stages == () and not permissive.request_harmful
    assert isinstance(balanced, GuardResult) and [s.name for s in balanced.stages] == ["lite", "lite"]  # escalated
    assert "lite stage unsure at operating point balanced" in balanced.reasoning


def test_cascade_settings_override_the_artefacts_band_and_the_default_band_stays(
    pointed: Pointed, p5_guard: LiteGuard,
) -> None:
    assert set(CascadeGuard(pointed.guard, p5_guard, low=0.1, high=0.9).bands.values()) == {(0.1, 0.9)}
    only_low = CascadeGuard(pointed.guard, p5_guard, low=0.02)
    assert only_low.bands[STRICT] == (0.02, round(pointed.request_score - 0.05, 3))
    without_points = CascadeGuard(p5_guard, p5_guard)
    assert set(without_points.bands.values()) == {(0.03, 0.99)}
    assert (without_points.low, without_points.high) == (0.03, 0.99)
    with pytest.raises(ValueError, match="above high"):
        CascadeGuard(pointed.guard, p5_guard, low=0.995)


# -- verdicts, keys and the cache --------------------------------------------------------------------------


async def test_the_worker_judges_each_tenant_at_its_point_and_the_cache_never_crosses_points(
    settings: WorkerSettings, pointed: Pointed, redis_url: str,
) -> None:
    settings.guard.tenant_operating_points = {"careful": STRICT, "relaxed": PERMISSIVE}
    topic = TopicNames(settings.kafka.topic_prefix).events
    strict_first = tenant_event("careful", conversation="a")
    permissive_next = tenant_event("relaxed", conversation="b")
    repeats = [tenant_event("careful", conversation="c"), tenant_event("relaxed", conversation="d"),
               tenant_event("someone-else", conversation="e")]
    async with running_worker(settings, pointed.guard):
        await produce_events(settings.kafka.bootstrap_servers, topic, [strict_first])
        await verdicts_covering(settings, {strict_first.event_id})  # its answer is cached before the next is sent
        await produce_events(settings.kafka.bootstrap_servers, topic, [permissive_next])
        await verdicts_covering(settings, {strict_first.event_id, permissive_next.event_id})
        await produce_events(settings.kafka.bootstrap_servers, topic, repeats)
        verdicts = await verdicts_covering(settings, {e.event_id for e in [strict_first, permissive_next, *repeats]})
    v = {x.event_id: x for x in verdicts}
    strict, permissive = v[strict_first.event_id], v[permissive_next.event_id]
    assert (strict.request_harmful, strict.operating_point, strict.policy_version) == (True, "strict", "1+strict")
    assert (permissive.request_harmful, permissive.operating_point) == (False, "permissive")
    assert permissive.policy_version == "1+permissive" and not permissive.cache_hit  # not the strict tenant's answer
    assert strict.content_key != permissive.content_key
    assert "operating point: strict" in strict.reasoning
    again_strict, again_permissive, other = (v[e.event_id] for e in repeats)
    assert again_strict.cache_hit and again_strict.request_harmful and again_strict.operating_point == "strict"
    assert again_permissive.cache_hit and not again_permissive.request_harmful
    assert again_permissive.content_key == permissive.content_key
    assert (other.operating_point, other.policy_version, other.cache_hit) == ("balanced", "1+balanced", False)
    keys = [k.decode() for k in redis.Redis.from_url(redis_url).scan_iter(f"{settings.cache.key_prefix}:*")]
    assert sorted(k.split(":")[4] for k in keys) == ["1+balanced", "1+permissive", "1+strict"]


async def test_offline_verdicts_name_the_point_ok_or_error(pointed: Pointed, tmp_path: Path) -> None:
    guard = GuardSettings(tenant_operating_points={"careful": STRICT}, operating_point=PERMISSIVE)
    missing = image_ref(f"file://{tmp_path}/missing.png")
    events = [tenant_event("careful"), tenant_event("anyone"), tenant_event("careful", images=[missing])]
    async with OfflineModerator(pointed.guard, guard, FetchSettings(file_root=tmp_path)) as moderator:
        strict, permissive, failed = await moderator.moderate(events)
    assert (strict.request_harmful, strict.operating_point, strict.policy_version) == (True, "strict", "1+strict")
    assert (permissive.request_harmful, permissive.operating_point) == (False, "permissive")
    assert strict.content_key != permissive.content_key
    assert failed.status is VerdictStatus.ERROR and (failed.operating_point, failed.policy_version) == ("strict",
                                                                                                      "1+strict")


async def test_backfilled_verdicts_name_the_point_ok_or_error(settings: WorkerSettings, pointed: Pointed) -> None:
    settings.guard.tenant_operating_points = {"careful": STRICT}
    settings.limits.max_text_chars = 100
    topics = TopicNames(settings.kafka.topic_prefix)
    target = f"{topics.prefix}backfill.verdicts"
    await create_topics(settings.kafka.bootstrap_servers, [TopicSpec(target, PARTITIONS, 1, {})])
    events = [tenant_event("careful", conversation="a"), tenant_event("anyone", conversation="b"),
              tenant_event("careful", text="x" * 120, conversation="c")]
    await produce_events(settings.kafka, topics.events, events)
    ends = partition_ends(await read_topic(settings.kafka.bootstrap_servers, topics.events, len(events)), PARTITIONS)
    every = RangeSpec(offsets=",".join(f"{p}:0-{end}" for p, end in ends.items() if end))
    summary = await run_backfill(settings, pointed.guard, topics.events, target, every, None, RateLimit(None),
                                 batch_size=10, idle_timeout_s=3)
    assert summary.incomplete == {} and summary.read == len(events)
    verdicts = [Verdict.model_validate_json(r.value) for r in await read_topic(
        settings.kafka.bootstrap_servers, target, len(events))]
    v = {x.event_id: x for x in verdicts}
    strict, balanced, over = (v[e.event_id] for e in events)
    assert (strict.request_harmful, strict.operating_point, strict.policy_version) == (True, "strict", "1+strict")
    assert (balanced.request_harmful, balanced.operating_point, balanced.policy_version) == (False, "balanced",
                                                                                             "1+balanced")
    assert over.status is VerdictStatus.ERROR and (over.operating_point, over.policy_version) == ("strict", "1+strict")


def test_a_verdict_written_before_points_still_validates() -> None:
    old = {"event_id": "e", "conversation_id": "c", "tenant": "t", "status": "ok", "request_harmful": False,
           "model": {"name": "m", "version": "1"}, "policy_version": "1"}
    verdict = Verdict.model_validate_json(json.dumps(old))
    assert verdict.operating_point is None and verdict.policy_version == "1"
