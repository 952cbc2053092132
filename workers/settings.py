"""The worker's settings: its sections (limits, fetch, cache, batch, guard) on the shared base
(`runtime/settings.py`), with the `kafka` section of `topics/settings.py`."""

from __future__ import annotations

import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from runtime.settings import ObservabilitySettings, Section, ServiceSettings
from topics.settings import KafkaSettings


class LimitSettings(Section):
    """Explicit limits on what one event may contain; beyond them the event is refused, not truncated."""

    max_record_bytes: int = Field(1_048_576, ge=1)
    max_text_chars: int = Field(32_000, ge=1)
    max_response_chars: int = Field(32_000, ge=1)
    max_images: int = Field(4, ge=0)
    max_dead_letter_raw_bytes: int = Field(65_536, ge=0, description="raw value kept in a dead letter; the "
                                           "source coordinates always find the whole record")
    max_key_bytes: int = Field(1_024, ge=16, description="longer record keys: answers are keyed by their sha256, "
                               "dead letters keep them cut")
    max_error_chars: int = Field(2_000, ge=80, description="error messages in dead letters and logs are cut here")


class FetchSettings(Section):
    """Image fetching: where images may come from, and how much of them is accepted."""

    file_root: Path | None = None
    https_allowed_hosts: list[str] = Field(default_factory=list)
    s3_endpoint: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_allow_http: bool = False
    max_bytes: int = Field(10 * 1024 * 1024, ge=1)
    max_pixels: int = Field(40_000_000, ge=1)
    pixel_budget: int = Field(1_003_520, ge=1, description="resize target, in pixels (Qwen2.5-VL: 1280*28*28)")
    timeout_s: float = Field(5.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    backoff_base_s: float = Field(0.1, ge=0)
    concurrency: int = Field(16, ge=1)
    decode_threads: int = Field(2, ge=1, description="threads that decode images (apart from the guard's)")
    max_aspect_ratio: float = Field(200.0, ge=1, description="longer side over shorter; Qwen2.5-VL refuses > 200")
    trust_declared_digests: bool = Field(False, description="answer from the cache by an image's declared sha256 "
                                         "before fetching it; only for producers you trust (see SECURITY.md)")
    https_allow_private_addresses: bool = Field(False, description="let allow-listed https hosts resolve to "
                                                "loopback, private or link-local addresses")
    https_ca_file: Path | None = Field(None, description="extra CA bundle for https images (a private CA)")


class CacheSettings(Section):
    enabled: bool = True
    redis_url: SecretStr = Field(SecretStr("redis://127.0.0.1:6379/0"), description="may carry a password")
    key_prefix: str = "guardstream"
    ttl_s: int = Field(7 * 24 * 3600, ge=1)
    socket_timeout_s: float = Field(0.5, gt=0)
    retry_after_s: float = Field(2.0, ge=0, description="after a Redis error, skip Redis this long")


class BatchSettings(Section):
    max_batch: int = Field(16, ge=1)
    max_wait_ms: int = Field(20, ge=0)
    max_batches_in_flight: int = Field(2, ge=1)
    dispatch_when_idle: bool = Field(True, description="start a batch at once, without max_wait_ms, when none is "
                                     "running: an idle device gains nothing from the wait (batches still fill "
                                     "under load, while one runs)")
    max_in_flight_events: int = Field(512, ge=1, description="above this, partitions are paused")


class OperatingPoint(StrEnum):
    """How readily a guard flags: `strict` flags more (lower thresholds), `permissive` less; `balanced` is the
    default. A lite artefact may carry each point's thresholds and cascade band; the verdict names the point."""

    STRICT = "strict"
    BALANCED = "balanced"
    PERMISSIVE = "permissive"


def point_policy(policy_version: str, point: OperatingPoint) -> str:
    """The policy version a verdict judged at `point` carries, and its content and cache keys: answers made at
    one point are never served at another."""
    return f"{policy_version}+{point}"


class GuardSettings(Section):
    backend: str = "lite"
    model_name: str = "guardstream-lite"
    model_version: str = "1"
    policy_version: str = "1"
    follow_releases: bool = Field(True, description="switch models on releases in moderation.models")
    artefact_cache_dir: Path = Field(Path(tempfile.gettempdir()) / "guardstream-artefacts",
                                     description="where s3:// release artefacts are downloaded")
    max_attempts: int = Field(3, ge=1)
    backoff_base_s: float = Field(0.2, ge=0)
    timeout_s: float = Field(120.0, gt=0)
    model_path: Path | None = Field(None, description="local checkpoint folder (transformers, vllm)")
    max_new_tokens: int = Field(1024, ge=1, description="generation budget; the reference uses 4096")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1…")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    transformers_lora_adapter: Path | None = Field(None, description="PEFT LoRA adapter folder the transformers "
                                                   "backend serves on MODEL_PATH")
    openai_base_url: str | None = Field(None, description="OpenAI-compatible server, e.g. a vLLM server's /v1")
    openai_api_key: SecretStr = Field(SecretStr("none"), description="sent as the bearer token")
    openai_model: str | None = Field(None, description="model name the server knows; default: MODEL_PATH")
    openai_concurrency: int = Field(16, ge=1, description="requests in flight to the server")
    openai_max_retries: int = Field(2, ge=0, description="client retries on connection errors, 429 and 5xx")
    vllm_max_num_seqs: int = Field(64, ge=1, description="sequences vLLM batches at once")
    vllm_max_model_len: int = Field(8192, ge=256)
    vllm_gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    vllm_prefix_caching: bool = Field(True, description="reuse the shared instruction's KV cache")
    vllm_max_images_per_prompt: int = Field(4, ge=0)
    vllm_max_pixels: int = Field(1_003_520, ge=1, description="per image, through the multimodal processor")
    vllm_lora_adapter: Path | None = Field(None, description="LoRA adapter folder to serve on the base model")
    vllm_max_lora_rank: int = Field(64, ge=1)
    operating_point: OperatingPoint = Field(OperatingPoint.BALANCED, description="strict, balanced or permissive: "
                                            "the point of every tenant without one of its own")
    tenant_operating_points: dict[str, OperatingPoint] = Field(
        default_factory=dict, description="tenant -> operating point (JSON in the environment), over `operating_point`")
    cascade_backend: str = Field("transformers", description="the reasoning backend behind the lite stage")
    # None: the artefact's band for the request's operating point, else 0.03 / 0.99, which keep 0.95 precision
    # on text the lite model never trained on (README: Cascade)
    cascade_low: float | None = Field(None, ge=0, le=1, description="lite scores below this settle as unharmful; "
                                      "None: the artefact's band for the operating point")
    cascade_high: float | None = Field(None, ge=0, le=1, description="lite scores at or above this settle as "
                                       "harmful; None: the artefact's band for the operating point")
    lite_artefact: Path | None = Field(None, description="the lite models' JSON (both heads); None uses the one shipped")
    lite_text_threshold: float | None = Field(None, ge=0, le=1,
                                              description="the request head's threshold at every operating point; "
                                              "None uses the artefact's (each point's)")
    lite_response_threshold: float | None = Field(None, ge=0, le=1,
                                                  description="the response head's threshold at every operating "
                                                  "point; None uses the artefact's (each point's)")
    lite_image_threshold: float = Field(0.8, ge=0, le=1)
    lite_threads: int = Field(2, ge=1)

    def operating_point_for(self, tenant: str) -> OperatingPoint:
        """The operating point `tenant`'s events are judged at."""
        return self.tenant_operating_points.get(tenant, self.operating_point)


class WorkerSettings(ServiceSettings):
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    fetch: FetchSettings = Field(default_factory=FetchSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    guard: GuardSettings = Field(default_factory=GuardSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    drain_timeout_s: float = Field(30.0, ge=0)
