"""The trainer's settings: one model, from GUARDSTREAM_* variables (nested with `__`) or a TOML file
(GUARDSTREAM_CONFIG_FILE), like the worker's. The Kafka, fetch (S3) and guard sections are the worker's
own models: the trainer reads the topics the workers write, and evaluates the model they serve.

Every local location the trainer writes to by default lies under the data directory (`data_dir`,
GUARDSTREAM_DATA_DIR): the data set (`audit/`), the releases (`releases/`), the jobs' scratch folder
(`trainer/runs/`) and faust's state (`trainer/state/<group id>/`). A location given explicitly is kept as given."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from runtime.settings import ObservabilitySettings, Section, ServiceSettings, default_data_dir
from topics.settings import KafkaSettings
from trainer.reasoning_settings import ReasoningSettings
from workers.settings import FetchSettings, GuardSettings, LimitSettings

DATASET_FOLDER = "audit"
RELEASES_FOLDER = "releases"
RUNS_FOLDER = Path("trainer") / "runs"
STATE_FOLDER = Path("trainer") / "state"


class DatasetSettings(Section):
    uri: str = Field(default_factory=lambda: str(default_data_dir() / DATASET_FOLDER),
                     description="where examples go: a local folder or s3://bucket/prefix; default: DATA_DIR/audit")
    shard_max_examples: int = Field(500, ge=1, description="a shard is written when this many labels wait")
    flush_interval_s: float = Field(30.0, gt=0, description="…or when the oldest waiting label is this old")
    resolve_timeout_s: float = Field(5.0, gt=0, description="how long to wait for a record at a label's coordinates")
    commit_attempts: int = Field(8, ge=1, description="commit numbers a shard tries while other writers take "
                                 "them, before the append fails with ConcurrentWriter")
    io_concurrency: int = Field(16, ge=1, description="objects one append or load reads or writes at once")


class LabelSettings(Section):
    give_up_after_s: float = Field(600.0, gt=0, description="a label whose event or verdict cannot be read for "
                                   "this long while the broker answers is skipped (counted as broker_error_lasting): "
                                   "one unreadable record must not hold up every label behind it")
    retry_backoff_max_s: float = Field(30.0, gt=0, description="the longest wait between two tries of a label")
    broker_probe_timeout_s: float = Field(10.0, gt=0, description="how long the check that the broker answers, "
                                          "made before a label is given up, may take")


class JobSettings(Section):
    scheduled: list[str] = Field(["lite-refit"], description="jobs run on the schedule and after new labels")
    interval_s: float | None = Field(86_400.0, gt=0, description="run the jobs this often; None: never on a timer")
    after_new_labels: int | None = Field(200, ge=1, description="run the jobs once this many new labels are "
                                         "stored; None: never on a count")
    work_dir: Path = Field(default_factory=lambda: default_data_dir() / RUNS_FOLDER,
                           description="local folder for candidates and reports; default: DATA_DIR/trainer/runs")


class LiteRefitSettings(Section):
    audit_weight: float = Field(5.0, gt=0, description="weight of an audit example against a package text's 1")
    max_package_examples: int | None = Field(None, ge=2, description="a deterministic sample of the package "
                                             "texts (None: all of them); smaller is faster and less general")
    start_artefact: Path | None = Field(None, description="the fine-tuned lite model a refit goes on from "
                                        "(None: the shipped one)")
    epochs: float = Field(1.0, gt=0, description="passes over the training data, per stage")
    max_steps: int | None = Field(None, ge=1, description="a cap on optimiser steps per stage (None: no cap)")
    threads: int = Field(2, ge=1)
    seed: int = 0


class GateSettings(Section):
    held_out_fraction: float = Field(0.2, gt=0, lt=1, description="share of labelled events kept for evaluation "
                                     "only (chosen by a hash of the event's content, so once held out, always, "
                                     "and a repeat under another id with it)")
    min_held_out: int = Field(20, ge=1, description="fewer held-out labels than this: no release")
    min_f1_gain: float = Field(0.01, ge=0, description="the candidate's F1 must beat the serving model's by this")
    max_task_regression: float = Field(0.02, ge=0, description="…and no task's F1, nor the F1 on the random-sample "
                                       "labels (when at least min_held_out), may drop by more than this")
    max_error_rate: float = Field(0.05, ge=0, le=1, description="…and at most this share of the candidate's "
                                  "decisions may be errors (which also count as wrong answers in every F1)")
    release_uri: str = Field(default_factory=lambda: str(default_data_dir() / RELEASES_FOLDER),
                             description="where released artefacts and reports go: a local folder or "
                             "s3://bucket/prefix (workers must be able to read it); default: DATA_DIR/releases")
    eval_batch_size: int = Field(32, ge=1)
    regression_max_items: int = Field(400, ge=0, description="texts of the regression set (hard cases, "
                                      "over-blocking contrasts) both models are scored on; 0: none")


class TrainerSettings(ServiceSettings):
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    group_id: str = Field("guardstream-trainer", description="the trainer's consumer group (kafka.group_id is "
                          "the workers')")
    fetch: FetchSettings = Field(default_factory=FetchSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    guard: GuardSettings = Field(default_factory=GuardSettings)
    dataset: DatasetSettings = Field(default_factory=DatasetSettings)
    labels: LabelSettings = Field(default_factory=LabelSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    lite_refit: LiteRefitSettings = Field(default_factory=LiteRefitSettings)
    reasoning: ReasoningSettings = Field(default_factory=ReasoningSettings)
    gate: GateSettings = Field(default_factory=GateSettings)
    observability: ObservabilitySettings = Field(
        default_factory=lambda: ObservabilitySettings(health_port=9465))

    @model_validator(mode="after")
    def _place_under_data_dir(self) -> TrainerSettings:
        """The locations not given explicitly (in the environment, the file or the constructor) lie under
        `data_dir`; sections are replaced, never changed, as a caller may share them."""
        if "uri" not in self.dataset.model_fields_set:
            self.dataset = self.dataset.model_copy(update={"uri": str(self.data_dir / DATASET_FOLDER)})
        if "work_dir" not in self.jobs.model_fields_set:
            self.jobs = self.jobs.model_copy(update={"work_dir": self.data_dir / RUNS_FOLDER})
        if "release_uri" not in self.gate.model_fields_set:
            self.gate = self.gate.model_copy(update={"release_uri": str(self.data_dir / RELEASES_FOLDER)})
        return self

    @property
    def state_dir(self) -> Path:
        """faust's own folder (it creates one even with in-memory tables), one per consumer group."""
        return self.data_dir / STATE_FOLDER / self.group_id
