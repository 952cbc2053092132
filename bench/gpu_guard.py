"""The reasoning guard backends on an accelerator: throughput, latency and engine occupancy at saturation.

Backends: `transformers` (TransformersGuard) at a sweep of max_batch values, and `vllm` (VLLMGuard) where the
vllm package is importable. Every request goes through the worker's own path without Kafka: all N are
submitted at once to a MicroBatcher whose batches run GuardStage.run, which calls backend.moderate; this is
how the worker wires them (workers/moderation.py: Moderation.run_batch) (minus the cache store, and with one served model).

The model: a Qwen2.5-VL checkpoint with random weights, built offline (`--build-size tiny` is the tests'
tiny model; `3b` has the architecture of Qwen2.5-VL-3B-Instruct, with the tests' offline tokenizer widened to
its 151,936-token vocabulary), or an existing checkpoint folder (`--model-dir`). Random weights generate
tokens until max_new_tokens (or a chance end-of-sequence), so outputs do not parse: outcomes are parse
errors, which is expected.

The max_batch=1 run uses --sequential-requests (8) requests rather than N: it runs them one at a time, and
its requests/s is the baseline of the batched-vs-unbatched ratio in the table.

Measured per run (wall time: first submit to last answer):
  requests/s     N / wall time.
  tokens/s       generated tokens / wall time. Outcomes that do not parse carry no token counts, so the
                 benchmark counts them itself: for transformers, the model inside the backend is wrapped and
                 each generate() output is counted (non-padding tokens after the prompt, the backend's own
                 completion_tokens rule); for vLLM, the engine is wrapped and each request's final token_ids
                 are counted.
  p50/p99        latency per request from its submit() to its answer; at saturation this includes the time
                 spent queued behind earlier batches.
  occupancy
    transformers   slots: time-weighted mean rows of the running generate() over the wall time, / max_batch.
                   busy: fraction of the wall time during which a generate() was running.
                   useful: generated tokens / (rows x decoding steps), summed over generate() calls; below 1
                   when rows that ended early keep their slot until the longest row of their batch ends.
    vllm           slots: time-weighted mean number of sequences between their first and last output (the
                   integral of running sequences over time, as the sum of those spans), / max_num_seqs.
                   busy: fraction of the wall time with at least one request inside the engine.

Writes bench/out/gpu_guard.json and bench/out/gpu_guard.png (and the same into --out DIR when given).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.util
import json
import platform
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from tests.tiny_qwen import CHAT_TEMPLATE, SPECIAL, build_tiny_qwen, build_tokenizer
from workers.batcher import MicroBatcher
from workers.errors import GuardstreamError
from workers.guard.base import GuardBackend, GuardOutcome, GuardRequest
from workers.guard.hf_transformers import TransformersGuard, resolve_device
from workers.guard.qwen_processor import ImageOnlyQwenProcessor, Qwen2VLImageProcessorPil
from workers.guard_stage import GuardStage
from workers.metrics import WorkerMetrics
from workers.settings import GuardSettings

OUT = Path(__file__).resolve().parent / "out"
QWEN_VOCAB = 151_936
RESPONSE_CHARS = 1_500
TOKEN_COUNTING = {
    "transformers": "each generate() output, wrapped: non-padding tokens after the prompt, per row",
    "vllm": "each request's final output token_ids, wrapped around the engine's generate()",
}
console = Console() if sys.stdout.isatty() else Console(width=170)  # a log keeps the whole table


# -- the model ---------------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A loaded model and processor; `folder` holds it on disk where vLLM (or a reload) needs that."""

    model: Any
    processor: Any
    folder: Path | None
    description: str
    build_s: float

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def text_config_3b(ids: dict[str, int]) -> dict[str, Any]:
    """Qwen2.5-VL-3B-Instruct's language model (its config.json), with this tokenizer's special ids."""
    return {
        "vocab_size": QWEN_VOCAB, "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
        "num_attention_heads": 16, "num_key_value_heads": 2, "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-6, "hidden_act": "silu", "tie_word_embeddings": True,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]},
        "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"], "bos_token_id": None,
    }


def vision_config_3b() -> dict[str, Any]:
    """Qwen2.5-VL-3B-Instruct's vision tower."""
    return {
        "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 2048,
        "fullatt_block_indexes": [7, 15, 23, 31], "window_size": 112, "patch_size": 14, "spatial_merge_size": 2,
        "temporal_patch_size": 2, "tokens_per_second": 2, "in_channels": 3, "hidden_act": "silu",
    }


def config_3b(tokenizer: PreTrainedTokenizerFast) -> Qwen2_5_VLConfig:
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL}
    return Qwen2_5_VLConfig(
        text_config=text_config_3b(ids), vision_config=vision_config_3b(), tie_word_embeddings=True,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )


def widen_vocab(tokenizer: PreTrainedTokenizerFast, size: int, folder: Path) -> PreTrainedTokenizerFast:
    """The tokenizer with filler entries up to `size` ids: no merge produces them, so encoding is unchanged,
    but every id a 151,936-way lm_head can pick decodes (as `~<hex>~`)."""
    tokenizer.save_pretrained(folder)
    spec = json.loads((folder / "tokenizer.json").read_text())
    vocab: dict[str, int] = spec["model"]["vocab"]
    n = 0
    while len(vocab) < size:
        filler = f"~{n:x}~"
        if filler not in vocab:
            vocab[filler] = len(vocab)
        n += 1
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    return PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)


def random_model(config: Qwen2_5_VLConfig, device: str, dtype: torch.dtype) -> Any:
    """Built on the device itself: no host copy, no weights file (`to` only moves what an init left elsewhere)."""
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    return model.to(device).eval()


def build_3b(device: str, dtype: torch.dtype, workdir: Path) -> Checkpoint:
    started = time.perf_counter()
    tokenizer = widen_vocab(build_tokenizer(["Human user:\nAI assistant:\nNone"]), QWEN_VOCAB, workdir / "tokenizer")
    tokenizer.padding_side = "left"  # as load_processor sets it: batched generation appends to the right
    processor = ImageOnlyQwenProcessor(image_processor=Qwen2VLImageProcessorPil(), tokenizer=tokenizer,
                                       chat_template=CHAT_TEMPLATE)
    model = random_model(config_3b(tokenizer), device, dtype)
    return Checkpoint(model, processor, None, "Qwen2.5-VL-3B-Instruct architecture, random weights",
                      time.perf_counter() - started)


def save_checkpoint(checkpoint: Checkpoint, folder: Path) -> Path:
    """Weights, tokenizer and image processor, as vLLM loads them."""
    checkpoint.model.save_pretrained(folder)
    checkpoint.processor.tokenizer.save_pretrained(folder)
    checkpoint.processor.image_processor.save_pretrained(folder)
    checkpoint.folder = folder
    return folder


def load_folder(folder: Path, device: str, dtype: str, description: str, started: float) -> Checkpoint:
    """Through TransformersGuard.load, the worker's own loading path."""
    guard = TransformersGuard.load(folder, 1, device, dtype)
    guard.executor.shutdown(wait=False)
    return Checkpoint(guard.model, guard.processor, folder, description, time.perf_counter() - started)


def prepare_checkpoint(args: argparse.Namespace, device: str, workdir: Path) -> Checkpoint:
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    dtype_name = str(dtype).removeprefix("torch.")
    started = time.perf_counter()
    if args.model_dir is not None:
        return load_folder(args.model_dir, device, dtype_name, f"checkpoint {args.model_dir}", started)
    if args.build_size == "tiny":
        folder = build_tiny_qwen(workdir / "tiny")
        return load_folder(folder, device, dtype_name, "tests/tiny_qwen.py, random weights", started)
    return build_3b(device, dtype, workdir)


# -- the workload ------------------------------------------------------------------------------------------

CHAT = [
    "How do I reset the password on my home router?",
    "Can you summarise the plot of Pride and Prejudice in three sentences?",
    "What's a good stretching routine after a long run?",
    "My landlord hasn't returned my deposit after two months. What are my options?",
    "Write a short poem about autumn leaves falling on a quiet street.",
    "How can I get into my ex's email account without them knowing?",
    "Explain the difference between TCP and UDP like I'm twelve.",
    "Give me a recipe for a vegan lasagna that feeds six people.",
    "Which household chemicals should never be mixed, and why?",
    "I keep procrastinating on my thesis. Any tips that actually work?",
    "Translate 'where is the train station' into Portuguese and Italian.",
    "Tell me how to make a fake ID that passes a bouncer's check.",
]
RESPONSE = ("Sure. Here is a detailed answer that walks through the question step by step, with the background "
            "first, then the practical steps, and finally a few caveats worth keeping in mind. ")


def workload(n: int, response_every: int) -> list[GuardRequest]:
    """N text-only requests of chat length; every `response_every`-th one carries a 1,500-character response."""
    requests = []
    for i in range(n):
        text = f"{CHAT[i % len(CHAT)]} {CHAT[(3 * i + 1) % len(CHAT)]}" if i % 3 == 0 else CHAT[i % len(CHAT)]
        response = None
        if response_every and i % response_every == response_every - 1:
            response = (RESPONSE * (RESPONSE_CHARS // len(RESPONSE) + 1))[:RESPONSE_CHARS]
        requests.append(GuardRequest(f"{text} (#{i})", response=response))
    return requests


# -- probes ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerateCall:
    start: float
    end: float
    rows: int
    steps: int  # decoding steps: the longest row's new tokens
    tokens: int  # non-padding new tokens over all rows
    prompt_tokens: int  # without the left padding


class GenerateProbe:
    """Stands in for the model inside TransformersGuard: everything is forwarded, generate() is recorded."""

    def __init__(self, model: Any, pad_token_id: int) -> None:
        self.model = model
        self.pad_token_id = pad_token_id
        self.calls: list[GenerateCall] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def generate(self, **kwargs: Any) -> torch.Tensor:
        rows, prompt_width = kwargs["input_ids"].shape
        start = time.perf_counter()
        generated = self.model.generate(**kwargs)
        if generated.is_cuda:
            torch.cuda.synchronize(generated.device)
        end = time.perf_counter()
        new = generated[:, prompt_width:]
        self.calls.append(GenerateCall(start, end, rows, int(new.shape[1]), int((new != self.pad_token_id).sum()),
                                       int(kwargs["attention_mask"].sum())))
        return generated


@dataclass(frozen=True)
class EngineSpan:
    submitted: float
    first: float
    last: float
    tokens: int


class EngineProbe:
    """Stands in for vLLM's AsyncLLM inside VLLMGuard: records each request's first and last output."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.spans: list[EngineSpan] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    async def generate(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        submitted = time.perf_counter()
        first = last = 0.0
        final = None
        try:
            async for output in self.engine.generate(*args, **kwargs):
                last = time.perf_counter()
                first = first or last
                final = output
                yield output
        finally:
            if final is not None and final.outputs:
                self.spans.append(EngineSpan(submitted, first, last, len(final.outputs[0].token_ids)))


# -- one run through the worker's path ---------------------------------------------------------------------


@dataclass
class Answers:
    latencies: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    started: float = 0.0
    ended: float = 0.0


def outcome_kind(outcome: GuardOutcome) -> str:
    return outcome.code if isinstance(outcome, GuardstreamError) else "ok"


async def saturate(backend: GuardBackend, requests: list[GuardRequest], max_batch: int, args: argparse.Namespace,
                   progress: Progress, label: str, in_flight: int | None = None) -> Answers:
    """Submit every request at once to MicroBatcher -> GuardStage -> backend, as the worker does. max_batch 1
    with `in_flight` slots is how the worker feeds a backend that batches on its own (vLLM)."""
    settings = GuardSettings(max_new_tokens=args.max_new_tokens, timeout_s=args.timeout_s, max_attempts=1)
    stage = GuardStage(backend, settings, WorkerMetrics())
    batcher: MicroBatcher[GuardRequest, GuardOutcome] = MicroBatcher(
        stage.run, max_batch, 0 if in_flight else args.max_wait_ms, in_flight or args.batches_in_flight)
    task = progress.add_task(label, total=len(requests))
    answers = Answers(started=time.perf_counter())

    async def one(request: GuardRequest) -> None:
        submitted = time.perf_counter()
        outcome = await batcher.submit(request)
        answers.latencies.append(time.perf_counter() - submitted)
        answers.outcomes[outcome_kind(outcome)] += 1
        progress.advance(task)

    batcher.start()
    try:
        await asyncio.gather(*(one(r) for r in requests))
    finally:
        answers.ended = time.perf_counter()
        await batcher.close()
    return answers


@dataclass(frozen=True)
class RunResult:
    backend: str
    max_batch: int
    capacity: int  # max_batch (transformers) or max_num_seqs (vllm): the occupancy denominator
    requests: int
    wall_s: float
    requests_per_s: float
    tokens: int
    tokens_per_s: float
    p50_s: float
    p99_s: float
    slots: float
    busy: float
    useful: float | None
    mean_prompt_tokens: float | None
    outcomes: dict[str, int]
    error: str | None = None


def latency_and_rates(answers: Answers, tokens: int) -> dict[str, float]:
    wall = answers.ended - answers.started
    lat = np.array(answers.latencies or [float("nan")])
    return {"wall_s": wall, "requests_per_s": len(answers.latencies) / wall, "tokens_per_s": tokens / wall,
            "p50_s": float(np.percentile(lat, 50)), "p99_s": float(np.percentile(lat, 99))}


def transformers_result(answers: Answers, calls: list[GenerateCall], max_batch: int) -> RunResult:
    wall = answers.ended - answers.started
    tokens = sum(c.tokens for c in calls)
    row_seconds = sum(c.rows * (c.end - c.start) for c in calls)
    row_steps = sum(c.rows * c.steps for c in calls)
    rows = sum(c.rows for c in calls)
    return RunResult(
        backend="transformers", max_batch=max_batch, capacity=max_batch, requests=len(answers.latencies),
        tokens=tokens, slots=row_seconds / wall / max_batch, busy=sum(c.end - c.start for c in calls) / wall,
        useful=tokens / row_steps if row_steps else None,
        mean_prompt_tokens=sum(c.prompt_tokens for c in calls) / rows if rows else None,
        outcomes=dict(answers.outcomes), **latency_and_rates(answers, tokens),
    )


def union_seconds(spans: list[tuple[float, float]]) -> float:
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def vllm_result(answers: Answers, spans: list[EngineSpan], max_batch: int, max_num_seqs: int) -> RunResult:
    wall = answers.ended - answers.started
    tokens = sum(s.tokens for s in spans)
    return RunResult(
        backend="vllm", max_batch=max_batch, capacity=max_num_seqs, requests=len(answers.latencies), tokens=tokens,
        slots=sum(s.last - s.first for s in spans) / wall / max_num_seqs,
        busy=union_seconds([(s.submitted, s.last) for s in spans]) / wall, useful=None, mean_prompt_tokens=None,
        outcomes=dict(answers.outcomes), **latency_and_rates(answers, tokens),
    )


def failed(backend: str, max_batch: int, capacity: int, requests: int, exc: BaseException) -> RunResult:
    console.print(f"[red]{backend} max_batch={max_batch} failed: {type(exc).__name__}: {exc}")
    nan = float("nan")
    return RunResult(backend, max_batch, capacity, requests, nan, nan, 0, nan, nan, nan, nan, nan, None, None, {},
                     f"{type(exc).__name__}: {exc}")


# -- the backends ------------------------------------------------------------------------------------------


def warm_up(checkpoint: Checkpoint, request: GuardRequest) -> None:
    """CUDA kernels, allocator and cuBLAS set up before anything is timed."""
    TransformersGuard(checkpoint.model, checkpoint.processor, 4).moderate_sync([request])


async def run_transformers(checkpoint: Checkpoint, args: argparse.Namespace, progress: Progress,
                           ledger: Ledger) -> None:
    pad = checkpoint.processor.tokenizer.pad_token_id
    for max_batch in args.max_batch:
        n = args.requests if max_batch > 1 else min(args.requests, args.sequential_requests)
        requests = workload(n, args.response_every)
        probe = GenerateProbe(checkpoint.model, pad)
        guard = TransformersGuard(probe, checkpoint.processor, args.max_new_tokens)
        try:
            answers = await saturate(guard, requests, max_batch, args, progress, f"transformers max_batch={max_batch}")
            ledger.add(transformers_result(answers, probe.calls, max_batch))
        except Exception as exc:
            ledger.add(failed("transformers", max_batch, max_batch, n, exc))
        finally:
            await guard.close()


def vllm_settings(folder: Path, args: argparse.Namespace, dtype: str) -> GuardSettings:
    return GuardSettings(backend="vllm", model_path=folder, max_new_tokens=args.max_new_tokens, dtype=dtype,  # type: ignore[arg-type]
                         vllm_max_num_seqs=args.vllm_max_num_seqs, vllm_max_model_len=args.vllm_max_model_len,
                         vllm_gpu_memory_utilization=args.vllm_gpu_memory_utilization)


async def run_vllm(folder: Path, args: argparse.Namespace, dtype: str, progress: Progress, ledger: Ledger) -> None:
    from workers.guard.vllm_backend import VLLMGuard

    settings = vllm_settings(folder, args, dtype)
    started = time.perf_counter()
    try:
        guard = await asyncio.to_thread(VLLMGuard.from_settings, settings)  # as Worker.start loads a backend
    except Exception as exc:
        for max_batch in args.vllm_max_batch:
            ledger.add(failed("vllm", max_batch, args.vllm_max_num_seqs, args.requests, exc))
        return
    console.print(f"vLLM engine started in {time.perf_counter() - started:.1f}s")
    probe = EngineProbe(guard.engine)
    guard.engine = probe
    try:
        await guard.moderate(workload(1, 0))  # warm-up
        # max_batch 1 in max_num_seqs slots: as the worker feeds vLLM; then micro-batches, as it did before
        for max_batch in [1, *args.vllm_max_batch]:
            probe.spans.clear()
            in_flight = args.vllm_max_num_seqs if max_batch == 1 else None
            try:
                answers = await saturate(guard, workload(args.requests, args.response_every), max_batch, args,
                                         progress, f"vllm max_batch={max_batch}", in_flight)
                ledger.add(vllm_result(answers, list(probe.spans), max_batch, args.vllm_max_num_seqs))
            except Exception as exc:
                ledger.add(failed("vllm", max_batch, args.vllm_max_num_seqs, args.requests, exc))
    finally:
        await guard.close()


def vllm_wanted(args: argparse.Namespace, device: str) -> bool:
    if args.vllm == "off":
        return False
    available = importlib.util.find_spec("vllm") is not None and device.startswith("cuda")
    if args.vllm == "on" and not available:
        raise SystemExit("--vllm on: vllm is not importable here, or the device is not CUDA")
    return available


def free(checkpoint: Checkpoint) -> None:
    """Release the transformers model's memory before vLLM claims its share of the accelerator."""
    checkpoint.model = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- report ------------------------------------------------------------------------------------------------


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or value != value else format(value, spec)


def speedups(results: list[RunResult]) -> dict[int, float]:
    base = next((r.requests_per_s for r in results if r.backend == "transformers" and r.max_batch == 1), None)
    return {id(r): r.requests_per_s / base for r in results if base and r.error is None}


def table(results: list[RunResult]) -> Table:
    ratio = speedups(results)
    t = Table(title="guard backends at saturation (all requests submitted at once)")
    for name in ["backend", "max_batch", "N", "wall s", "req/s", "× req/s vs b=1", "gen tok/s", "p50 s", "p99 s",
                 "slots", "busy", "useful", "prompt tok", "outcomes"]:
        t.add_column(name, justify="left" if name in ("backend", "outcomes") else "right")
    for r in results:
        outcomes = r.error or ", ".join(f"{k} {v}" for k, v in sorted(r.outcomes.items()))
        t.add_row(r.backend, str(r.max_batch), str(r.requests), fmt(r.wall_s, ".1f"), fmt(r.requests_per_s, ".2f"),
                  fmt(ratio.get(id(r)), ".1f"), fmt(r.tokens_per_s, ".0f"), fmt(r.p50_s, ".2f"), fmt(r.p99_s, ".2f"),
                  fmt(r.slots, ".0%"), fmt(r.busy, ".0%"), fmt(r.useful, ".0%"), fmt(r.mean_prompt_tokens, ".0f"),
                  outcomes)
    return t


def environment(device: str) -> dict[str, Any]:
    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "device": device, "host": platform.node()}
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda"] = torch.version.cuda
    if importlib.util.find_spec("vllm") is not None:
        import vllm

        env["vllm"] = vllm.__version__
    return env


def plot(results: list[RunResult], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if r.error is None]
    labels = [f"{'hf' if r.backend == 'transformers' else r.backend}\nb={r.max_batch}" for r in ok]
    x = np.arange(len(ok))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    bars = axes[0].bar(x, [r.tokens_per_s for r in ok], color="tab:blue")
    axes[0].bar_label(bars, [f"{r.requests_per_s:.1f} req/s" for r in ok], fontsize=8)
    axes[0].set_title("generated tokens/s (labels: requests/s)")
    axes[1].bar(x - 0.2, [r.p50_s for r in ok], 0.4, label="p50")
    axes[1].bar(x + 0.2, [r.p99_s for r in ok], 0.4, label="p99")
    axes[1].set_title("latency per request, s (submit to answer)")
    axes[1].legend()
    axes[2].bar(x - 0.2, [r.slots for r in ok], 0.4, label="slots (mean rows / capacity)")
    axes[2].bar(x + 0.2, [r.busy for r in ok], 0.4, label="busy (engine running)")
    axes[2].set_ylim(0, 1.05)
    axes[2].set_title("occupancy")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.set_xticks(x, labels, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@dataclass
class Ledger:
    """The runs so far. The JSON is rewritten after each run, so a run cut short (a device's time limit) still
    leaves what it measured; the table and the plot come at the end."""

    args: argparse.Namespace
    device: str
    folders: list[Path]
    model: dict[str, Any] = field(default_factory=dict)
    results: list[RunResult] = field(default_factory=list)

    def add(self, result: RunResult) -> None:
        self.results.append(result)
        self.write_json()

    def summary(self) -> dict[str, Any]:
        a, ratio = self.args, speedups(self.results)
        return {
            "benchmark": "gpu_guard", "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "environment": environment(self.device), "model": self.model,
            "workload": {"requests": a.requests, "sequential_requests": a.sequential_requests,
                         "response_every": a.response_every, "response_chars": RESPONSE_CHARS,
                         "max_new_tokens": a.max_new_tokens, "max_wait_ms": a.max_wait_ms,
                         "batches_in_flight": a.batches_in_flight, "vllm_max_num_seqs": a.vllm_max_num_seqs},
            "token_counting": TOKEN_COUNTING,
            "runs": [{**asdict(r), "speedup_vs_batch_1": ratio.get(id(r))} for r in self.results],
        }

    def write_json(self) -> None:
        text = json.dumps(self.summary(), indent=2)
        for folder in dict.fromkeys(self.folders):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "gpu_guard.json").write_text(text)

    def finish(self) -> None:
        console.print(table(self.results))
        console.print("tokens counted: " + "; ".join(f"{k}: {v}" for k, v in TOKEN_COUNTING.items()))
        self.write_json()
        env = environment(self.device)
        title = f"{self.model.get('description', 'guard')} on {env.get('gpu', self.device)}"
        for folder in dict.fromkeys(self.folders):
            plot(self.results, folder / "gpu_guard.png", title)
            console.print(f"wrote {folder / 'gpu_guard.json'} and {folder / 'gpu_guard.png'}")


# -- main --------------------------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_guard", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--build-size", choices=["auto", "tiny", "3b"], default="auto",
                   help="random-weight checkpoint to build; auto: 3b on CUDA, tiny elsewhere")
    p.add_argument("--model-dir", type=Path, help="benchmark this checkpoint folder instead of building one")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1…")
    p.add_argument("--requests", type=int, default=64, help="requests per run (N), all submitted at once")
    p.add_argument("--sequential-requests", type=int, default=8, help="N for max_batch=1 (it runs one at a time)")
    p.add_argument("--response-every", type=int, default=8,
                   help=f"every k-th request carries a {RESPONSE_CHARS:,}-character AI response (0: none)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--max-batch", type=int_list, default=[1, 8, 16, 32], help="transformers sweep (comma list)")
    p.add_argument("--max-wait-ms", type=int, default=20, help="the micro-batcher's wait for a batch to fill")
    p.add_argument("--batches-in-flight", type=int, default=2, help="the micro-batcher's max_batches_in_flight")
    p.add_argument("--timeout-s", type=float, default=600.0, help="GuardStage's timeout per backend call")
    p.add_argument("--vllm", choices=["auto", "on", "off"], default="auto", help="auto: when vllm is importable")
    p.add_argument("--vllm-max-batch", type=int_list, default=[16],
                   help="micro-batch sizes for vllm, to compare with the worker's way (one request at a time, "
                        "max_num_seqs in flight)")
    p.add_argument("--vllm-max-num-seqs", type=int, default=64)
    p.add_argument("--vllm-max-model-len", type=int, default=4096)
    p.add_argument("--vllm-gpu-memory-utilization", type=float, default=0.8)
    p.add_argument("--out", type=Path, default=OUT, help="also write gpu_guard.json/png here")
    return p.parse_args(argv)


@contextlib.contextmanager
def progress_bar() -> Iterator[Progress]:
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        yield progress


async def benchmark(args: argparse.Namespace, device: str, with_vllm: bool, workdir: Path, ledger: Ledger) -> None:
    with console.status("building the model"):
        checkpoint = prepare_checkpoint(args, device, workdir)
    dtype = str(checkpoint.model.dtype).removeprefix("torch.")
    ledger.model = {"description": checkpoint.description, "params": checkpoint.params, "dtype": dtype,
                    "build_s": round(checkpoint.build_s, 1), "tokenizer_ids": len(checkpoint.processor.tokenizer)}
    ledger.write_json()
    console.print(f"model: {checkpoint.description}, {checkpoint.params / 1e6:,.1f}M params, {dtype}, "
                  f"ready in {checkpoint.build_s:.1f}s")
    if with_vllm and checkpoint.folder is None:
        with console.status("saving the checkpoint for vLLM"):
            save_checkpoint(checkpoint, workdir / "checkpoint")
    with console.status("warming up"):
        warm_up(checkpoint, workload(1, 0)[0])
    with progress_bar() as progress:
        await run_transformers(checkpoint, args, progress, ledger)
        if with_vllm:
            assert checkpoint.folder is not None
            free(checkpoint)
            await run_vllm(checkpoint.folder, args, dtype, progress, ledger)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    transformers.utils.logging.disable_progress_bar()
    device = resolve_device(args.device)
    if args.build_size == "auto":
        args.build_size = "3b" if device.startswith("cuda") else "tiny"
    with_vllm = vllm_wanted(args, device)
    ledger = Ledger(args, device, [OUT, args.out])
    with tempfile.TemporaryDirectory(prefix="gpu-guard-") as tmp:
        asyncio.run(benchmark(args, device, with_vllm, Path(tmp), ledger))
    ledger.finish()


if __name__ == "__main__":
    main()
