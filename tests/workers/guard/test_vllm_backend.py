"""The vllm backend without vLLM (it needs a GPU): engine options, prompts, parsing, LoRA bookkeeping and
concurrency are real; only the engine is a stand-in with AsyncLLM.generate's shape (an async stream of
cumulative RequestOutputs)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from transformers import AutoTokenizer

from schemas.events import ModelRelease
from tests.tiny_qwen import LESSONS
from workers.errors import BackendError, BackendUnavailable
from workers.guard.base import GuardRequest, GuardResult
from workers.guard.prompt import INSTRUCTION
from workers.guard.vllm_backend import Adapter, VLLMGuard, engine_options, engine_prompt, sampling_options
from workers.served_model import load_release, release_settings
from workers.settings import GuardSettings

ANSWER = "<think>\nStep 1: it asks for a weapon.\n</think>\n<result>\nRequest: harmful\nResponse: none\n</result>"


class EngineGenerateError(Exception):
    """Like vllm.v1.engine.exceptions.EngineGenerateError: a plain Exception, not a RuntimeError."""


class StandInEngine:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[dict[str, Any]] = []
        self.active = 0
        self.max_active = 0
        self.shut_down = False
        self.fail = fail

    async def generate(self, prompt: dict[str, Any], sampling_params: Any, request_id: str, lora_request: Any = None):
        self.calls.append({"prompt": prompt, "params": sampling_params, "id": request_id, "lora": lora_request})
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(0.02)
            if self.fail:
                raise EngineGenerateError("engine dead")
            yield SimpleNamespace(outputs=[SimpleNamespace(text=ANSWER[:9], token_ids=[0] * 3)], prompt_token_ids=[0] * 7)
            await asyncio.sleep(0.01)
            yield SimpleNamespace(outputs=[SimpleNamespace(text=ANSWER, token_ids=[0] * 30)], prompt_token_ids=[0] * 7)
        finally:
            self.active -= 1

    def shutdown(self) -> None:
        self.shut_down = True


def render_with(model_dir: Path):  # type: ignore[no-untyped-def]
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    return lambda messages: tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_engine_options_carry_the_guardreasoner_defaults(tmp_path: Path) -> None:
    settings = GuardSettings(backend="vllm", model_path=tmp_path, max_new_tokens=4096, vllm_max_num_seqs=32,
                             vllm_max_pixels=200_704, vllm_max_images_per_prompt=2)
    options = engine_options(settings)
    assert options["model"] == str(tmp_path) and options["enable_prefix_caching"] is True
    assert options["max_num_seqs"] == 32 and options["limit_mm_per_prompt"] == {"image": 2, "video": 0}
    assert options["mm_processor_kwargs"] == {"max_pixels": 200_704} and "enable_lora" not in options
    assert sampling_options(settings) == {"temperature": 0.0, "max_tokens": 4096}
    with_lora = engine_options(settings.model_copy(update={"vllm_lora_adapter": tmp_path / "adapter"}))
    assert with_lora["enable_lora"] is True and with_lora["max_lora_rank"] == 64
    with pytest.raises(BackendUnavailable, match="MODEL_PATH"):
        engine_options(GuardSettings(backend="vllm"))


def test_prompts_are_chat_templated_with_images_in_slot_order(tiny_qwen: Path) -> None:
    red, blue = LESSONS[4].request.images[0], LESSONS[4].request.images[0].copy()
    prompt = engine_prompt(GuardRequest("Compare these.", images=[red, blue]), render_with(tiny_qwen))
    assert prompt["prompt"].startswith(f"<|im_start|>system\n{INSTRUCTION}<|im_end|>")
    assert prompt["prompt"].count("<|vision_start|><|image_pad|><|vision_end|>") == 2
    assert prompt["multi_modal_data"]["image"] == [red, blue]
    assert "multi_modal_data" not in engine_prompt(GuardRequest("text only"), render_with(tiny_qwen))


def test_without_vllm_the_backend_says_what_it_needs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # as on any machine without a GPU build of vLLM
    with pytest.raises(BackendUnavailable, match="CUDA"):
        VLLMGuard.from_settings(GuardSettings(backend="vllm", model_path=tmp_path))


async def test_requests_are_submitted_together_and_parsed(tiny_qwen: Path) -> None:
    engine = StandInEngine()
    guard = VLLMGuard(engine, render_with(tiny_qwen), sampling_params="greedy")
    outcomes = await guard.moderate([GuardRequest(f"question {i}") for i in range(5)])
    assert engine.max_active == 5  # all in the engine at once: vLLM batches them continuously
    assert len({c["id"] for c in engine.calls}) == 5 and all(c["lora"] is None for c in engine.calls)
    assert all(isinstance(o, GuardResult) and o.request_harmful and o.decided_by == "vllm" for o in outcomes)
    assert (outcomes[0].prompt_tokens, outcomes[0].completion_tokens) == (7, 30)  # type: ignore[union-attr]


async def test_an_engine_failure_is_a_backend_error(tiny_qwen: Path) -> None:
    with pytest.raises(BackendError, match="engine dead"):
        await VLLMGuard(StandInEngine(fail=True), render_with(tiny_qwen), "greedy").moderate([GuardRequest("x")])


async def test_an_adapter_release_switches_lora_on_the_same_engine(tiny_qwen: Path, tmp_path: Path) -> None:
    engine = StandInEngine()
    base = VLLMGuard(engine, render_with(tiny_qwen), "greedy", make_lora=lambda a: ("lora", a.name, a.lora_id))
    settings = GuardSettings(backend="vllm", model_path=tiny_qwen)
    release = ModelRelease(name="guard", version="v2-lora", backend="vllm", artefact_uri=str(tmp_path), kind="adapter")
    switched = load_release(base, release_settings(settings, release, tmp_path), release)
    assert isinstance(switched, VLLMGuard) and switched.engine is engine
    await switched.moderate([GuardRequest("x")])
    assert engine.calls[-1]["lora"][:2] == ("lora", "v2-lora")
    await base.close()
    assert not engine.shut_down  # the replaced view no longer owns the engine: retiring it keeps the engine up
    await switched.close()
    assert engine.shut_down


def adapter_release(tmp_path: Path) -> ModelRelease:
    return ModelRelease(name="guard", version="v2-lora", backend="vllm", artefact_uri=str(tmp_path), kind="adapter")


async def test_an_adapter_release_is_refused_by_an_engine_without_lora(tiny_qwen: Path, tmp_path: Path) -> None:
    engine = StandInEngine()
    base = VLLMGuard(engine, render_with(tiny_qwen), "greedy")  # as from_settings builds it without enable_lora
    settings = release_settings(GuardSettings(backend="vllm", model_path=tiny_qwen), adapter_release(tmp_path), tmp_path)
    assert not base.lora_enabled
    with pytest.raises(BackendUnavailable, match="without enable_lora"):
        load_release(base, settings, adapter_release(tmp_path))
    outcomes = await base.moderate([GuardRequest("x")])  # the current model still serves, and owns its engine
    assert isinstance(outcomes[0], GuardResult) and engine.calls[-1]["lora"] is None
    await base.close()
    assert engine.shut_down


def test_an_adapter_without_lora_support_is_refused(tiny_qwen: Path, tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="without enable_lora"):
        VLLMGuard(StandInEngine(), render_with(tiny_qwen), "greedy", adapter=Adapter("v1", tmp_path, 1))


class StandInVLLM:
    """vLLM's import surface as from_settings uses it, recording the engine arguments."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.engine_args: dict[str, Any] = {}
        vllm = ModuleType("vllm")
        vllm.AsyncEngineArgs = lambda **options: options  # type: ignore[attr-defined]
        vllm.SamplingParams = lambda **options: options  # type: ignore[attr-defined]
        lora = ModuleType("vllm.lora.request")
        lora.LoRARequest = lambda name, lora_id, path: ("lora", name, lora_id, path)  # type: ignore[attr-defined]
        async_llm = ModuleType("vllm.v1.engine.async_llm")
        async_llm.AsyncLLM = SimpleNamespace(from_engine_args=self._start)  # type: ignore[attr-defined]
        for module in (vllm, lora, async_llm):
            monkeypatch.setitem(sys.modules, module.__name__, module)

    def _start(self, options: dict[str, Any]) -> StandInEngine:
        self.engine_args = options
        return StandInEngine()


@pytest.mark.parametrize("started_with_adapter", [False, True])
def test_lora_support_follows_the_engine_options(
    monkeypatch: pytest.MonkeyPatch, tiny_qwen: Path, tmp_path: Path, started_with_adapter: bool
) -> None:
    vllm = StandInVLLM(monkeypatch)
    adapter = tmp_path / "adapter" if started_with_adapter else None
    guard = VLLMGuard.from_settings(GuardSettings(backend="vllm", model_path=tiny_qwen, vllm_lora_adapter=adapter))
    assert guard.lora_enabled is vllm.engine_args.get("enable_lora", False) is started_with_adapter
    assert (guard.adapter is not None) is started_with_adapter
