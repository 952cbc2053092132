"""The reasoning jobs at real size on a GPU: a short reasoning SFT run, a short GRPO run going on from its
adapter, and the vLLM backend switching from one adapter to the other, on a randomly initialised Qwen2.5-VL of
the real architecture (3B or 7B; no weights can be downloaded), with the settings of
`deploy/gpu/reasoning-train.toml` (bf16, gradient checkpointing, LoRA).

Reported per job: wall time, seconds per optimiser step, tokens/s (the trainer's own token count over time),
peak GPU memory (torch.cuda.max_memory_allocated), and the job's first/last loss or reward. Random weights
write no parseable answer: the numbers are speed and memory, not quality.

    python -m bench.gpu_reasoning_train --size 3b --sft-steps 5 --grpo-steps 3 --out bench/results/gpu-reasoning

On a machine without CUDA it runs the tests' tiny model on the CPU (`--size tiny`), which checks the script.
Writes `reasoning-train.json` (and the jobs' figures) into --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import tomllib
from pathlib import Path
from typing import Any

import torch

from bench.gpu_guard import (
    QWEN_VOCAB,
    SPECIAL,
    Checkpoint,
    build_3b,
    random_model,
    save_checkpoint,
    vision_config_3b,
    widen_vocab,
)
from tests.tiny_qwen import CHAT_TEMPLATE, LESSONS, build_tiny_qwen, build_tokenizer
from trainer.held_out import is_held_out
from trainer.job_interface import Candidate, TrainingData
from trainer.labelled import LabelledEvent
from trainer.reasoning_grpo import ReasoningGrpo
from trainer.reasoning_settings import ReasoningSettings
from trainer.reasoning_sft import ReasoningSft
from trainer.settings import TrainerSettings
from workers.guard.qwen_processor import ImageOnlyQwenProcessor, Qwen2VLImageProcessorPil
from workers.settings import FetchSettings, GuardSettings

HELD_OUT_FRACTION = TrainerSettings.model_fields["gate"].default_factory().held_out_fraction  # type: ignore[misc]
CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "gpu" / "reasoning-train.toml"


def build_7b(device: str, dtype: torch.dtype, workdir: Path) -> Checkpoint:
    """Qwen2.5-VL-7B-Instruct's architecture (its config.json), random weights, the tests' tokenizer widened."""
    from transformers import Qwen2_5_VLConfig

    started = time.perf_counter()
    tokenizer = widen_vocab(build_tokenizer(["Human user:\nAI assistant:\nNone"]), QWEN_VOCAB, workdir / "tokenizer")
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL}
    text = {"vocab_size": QWEN_VOCAB, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
            "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6, "hidden_act": "silu", "tie_word_embeddings": False,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]},
            "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"], "bos_token_id": None}
    vision = {**vision_config_3b(), "out_hidden_size": 3584}
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False,
                              image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                              vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    processor = ImageOnlyQwenProcessor(image_processor=Qwen2VLImageProcessorPil(), tokenizer=tokenizer,
                                       chat_template=CHAT_TEMPLATE)
    model = random_model(config, device, dtype)
    return Checkpoint(model, processor, None, "Qwen2.5-VL-7B-Instruct architecture, random weights",
                      time.perf_counter() - started)


def base_checkpoint(size: str, device: str, workdir: Path) -> Path:
    if size == "tiny":
        return build_tiny_qwen(workdir / "base", train_steps=0)
    dtype = torch.bfloat16
    checkpoint = (build_3b if size == "3b" else build_7b)(device, dtype, workdir)
    folder = save_checkpoint(checkpoint, workdir / "base")
    del checkpoint
    torch.cuda.empty_cache()
    return folder


def lesson_data(workdir: Path, copies: int) -> TrainingData:
    """The tests' lessons (text, image, a response) as labelled items, a few copies of each."""
    from schemas.events import ChatEvent, ImageRef, ModelRef, Verdict, VerdictStatus

    items = []
    for n in range(copies):
        for i, lesson in enumerate(LESSONS):
            refs = []
            for j, image in enumerate(lesson.request.images):
                path = workdir / f"lesson{i}-{j}.png"
                image.resize((448, 448)).save(path)
                refs.append(ImageRef(uri=path.as_uri()))
            event = ChatEvent(event_id=f"l{i}-{n}", conversation_id=f"c{i}", text=f"{lesson.request.text} ({n})",
                              response=lesson.request.response, images=refs)
            if not is_held_out(event, HELD_OUT_FRACTION):  # a job refuses held-out events
                items.append(LabelledEvent(event, lesson.harmful, lesson.response_harmful, source="bench"))
    # random weights sample no matching rollout: the SFT targets come from "serving" verdicts in agreement
    verdicts = {item.event.event_id: Verdict(
        event_id=item.event.event_id, conversation_id=item.event.conversation_id, tenant=item.event.tenant,
        status=VerdictStatus.OK,
        request_harmful=item.request_harmful, response_harmful=item.response_harmful, decided_by="transformers",
        reasoning=lesson.target().split("</think>")[0].removeprefix("<think>\n"), policy_version="1",
        model=ModelRef(name="bench", version="0")) for item, lesson in zip(items, _lessons_of(items), strict=True)}
    return TrainingData(items, "bench", "now", 0, verdicts=verdicts)


def _lessons_of(items: list[LabelledEvent]) -> list[Any]:
    return [LESSONS[int(item.event.event_id[1:].split("-")[0])] for item in items]


def settings_for(size: str, base: Path, workdir: Path, sft_steps: int, grpo_steps: int) -> TrainerSettings:
    config = tomllib.loads(CONFIG.read_text())
    reasoning = ReasoningSettings(**config["reasoning"])
    sft = reasoning.sft.model_copy(update={"max_steps": sft_steps, "gradient_accumulation_steps": 1})
    grpo = reasoning.grpo.model_copy(update={"max_steps": grpo_steps, "gradient_accumulation_steps": 1,
                                             "max_completion_length": 256})
    update: dict[str, Any] = {"sft": sft, "grpo": grpo, "sampling_k": 2, "sampling_max_new_tokens": 128,
                              "max_items": 12}
    if size == "tiny":  # the CPU check of the script
        update |= {"device": "cpu", "bf16": False, "gradient_checkpointing": False,
                   "lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}
    guard = GuardSettings(backend="transformers", model_path=base, max_new_tokens=256,
                          device=update.get("device", "cuda"))
    return TrainerSettings(guard=guard, fetch=FetchSettings(file_root=workdir), data_dir=workdir / "data",
                           reasoning=reasoning.model_copy(update=update))


def timed(job: Any, data: TrainingData, out: Path) -> tuple[Candidate, dict[str, Any]]:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    candidate = job.train(data, out)
    wall = time.perf_counter() - started
    figures = candidate.metadata["figures"]
    steps = max(figures["steps"], 1)
    return candidate, {"wall_s": round(wall, 2), "s_per_step": round(wall / steps, 3), **figures,
                       "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
                       if torch.cuda.is_available() else None}


async def vllm_switch(base: Path, first: Path, second: Path) -> dict[str, Any]:
    """The vLLM backend started on the SFT adapter, switched to the GRPO one, answering a request with each."""
    from workers.guard.base import GuardRequest
    from workers.guard.vllm_backend import VLLMGuard

    settings = GuardSettings(backend="vllm", model_path=base, vllm_lora_adapter=first, model_version="sft",
                             max_new_tokens=64, vllm_max_lora_rank=64)
    started = time.perf_counter()
    guard = VLLMGuard.from_settings(settings)
    loaded = time.perf_counter() - started
    request = [GuardRequest(LESSONS[0].request.text)]
    before = await guard.moderate(request)
    started = time.perf_counter()
    switched = guard.with_adapter("grpo", second)
    after = await switched.moderate(request)
    switch = time.perf_counter() - started
    await switched.close()
    return {"engine_start_s": round(loaded, 2), "switch_and_first_answer_s": round(switch, 2),
            "answered_before": len(before), "answered_after": len(after)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["auto", "tiny", "3b", "7b"], default="auto")
    parser.add_argument("--sft-steps", type=int, default=5)
    parser.add_argument("--grpo-steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/out/gpu-reasoning"))
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    size = args.size if args.size != "auto" else ("3b" if device == "cuda" else "tiny")
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = args.out / "work"
    workdir.mkdir(exist_ok=True)
    base = base_checkpoint(size, device, workdir)
    settings = settings_for(size, base, workdir, args.sft_steps, args.grpo_steps)
    data = lesson_data(workdir, copies=2)
    report: dict[str, Any] = {"size": size, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
    sft, report["sft"] = timed(ReasoningSft(settings), data, args.out / "sft")
    serving = settings.guard.model_copy(update={"transformers_lora_adapter": sft.artefact})
    grpo_data = TrainingData(data.examples, data.dataset, data.manifest_updated_at, 0, serving=serving,
                             verdicts=data.verdicts)
    grpo, report["grpo"] = timed(ReasoningGrpo(settings), grpo_data, args.out / "grpo")
    try:
        report["vllm_adapter_switch"] = asyncio.run(vllm_switch(base, sft.artefact, grpo.artefact))
    except Exception as exc:  # no vLLM here (CPU), or it refused: said in the report, not hidden
        report["vllm_adapter_switch"] = {"not_run": f"{type(exc).__name__}: {exc}"[:300]}
    (args.out / "reasoning-train.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
