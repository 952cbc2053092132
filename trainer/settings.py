"""The trainer's settings: one model, from GUARDSTREAM_* variables (nested with `__`) or a TOML file
(GUARDSTREAM_CONFIG_FILE), like the worker's. The Kafka, fetch (S3) and guard sections are the worker's
own models: the trainer reads the topics the workers write, and evaluates the model they serve."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import Field

from workers.settings import (
    FetchSettings,
    GuardSettings,
    KafkaSettings,
    LimitSettings,
    ObservabilitySettings,
    Section,
    ServiceSettings,
)

WORK_ROOT = Path(tempfile.gettempdir()) / "guardstream-trainer"


class DatasetSettings(Section):
    uri: str = Field("guardstream-data/audit", description="where examples go: a local folder or s3://bucket/prefix")
    shard_max_examples: int = Field(500, ge=1, description="a shard is written when this many labels wait")
    flush_interval_s: float = Field(30.0, gt=0, description="…or when the oldest waiting label is this old")
    resolve_timeout_s: float = Field(5.0, gt=0, description="how long to wait for a record at a label's coordinates")


class JobSettings(Section):
    scheduled: list[str] = Field(["lite-refit"], description="jobs run on the schedule and after new labels")
    interval_s: float | None = Field(86_400.0, gt=0, description="run the jobs this often; None: never on a timer")
    after_new_labels: int | None = Field(200, ge=1, description="run the jobs once this many new labels are "
                                         "stored; None: never on a count")
    work_dir: Path = Field(WORK_ROOT / "runs", description="local folder for candidates and reports")


class LiteRefitSettings(Section):
    audit_weight: float = Field(5.0, gt=0, description="weight of an audit example against a package text's 1")
    max_package_examples: int | None = Field(None, ge=2, description="a deterministic sample of the package "
                                             "texts (None: all of them); smaller is faster and less general")
    embedding_cache_dir: Path = Field(WORK_ROOT / "embeddings", description="package texts' embeddings, "
                                      "computed once per data and model")
    threads: int = Field(2, ge=1)
    seed: int = 0


class GateSettings(Section):
    held_out_fraction: float = Field(0.2, gt=0, lt=1, description="share of labelled events kept for evaluation "
                                     "only (chosen by a hash of the event id, so once held out, always)")
    min_held_out: int = Field(20, ge=1, description="fewer held-out labels than this: no release")
    min_f1_gain: float = Field(0.01, ge=0, description="the candidate's F1 must beat the serving model's by this")
    max_task_regression: float = Field(0.02, ge=0, description="…and no task's F1 may drop by more than this")
    release_uri: str = Field("guardstream-data/releases", description="where released artefacts and reports go: "
                             "a local folder or s3://bucket/prefix (workers must be able to read it)")
    eval_batch_size: int = Field(32, ge=1)


class TrainerSettings(ServiceSettings):
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    group_id: str = Field("guardstream-trainer", description="the trainer's consumer group (kafka.group_id is "
                          "the workers')")
    fetch: FetchSettings = Field(default_factory=FetchSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    guard: GuardSettings = Field(default_factory=GuardSettings)
    dataset: DatasetSettings = Field(default_factory=DatasetSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    lite_refit: LiteRefitSettings = Field(default_factory=LiteRefitSettings)
    gate: GateSettings = Field(default_factory=GateSettings)
    observability: ObservabilitySettings = Field(
        default_factory=lambda: ObservabilitySettings(health_port=9465))
