"""The trainer's Prometheus metrics, on a registry of its own (served at /metrics)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge

from runtime.dependency_state import DependencyState


@dataclass
class TrainerMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.labels_seen = Counter("guardstream_trainer_labels_seen", "Audit label records consumed", registry=r)
        self.labels_resolved = Counter("guardstream_trainer_labels_resolved",
                                       "Labels resolved to their event (and verdict)", registry=r)
        self.labels_unresolvable = Counter("guardstream_trainer_labels_unresolvable",
                                           "Labels skipped, by reason: never resolvable, "
                                           "a lasting read error (broker_error_lasting), a bug met on the record "
                                           "(resolve_failed)", ["reason"], registry=r)
        self.resolve_retries = Counter("guardstream_trainer_resolve_retries",
                                       "Resolutions retried after a broker error (readiness "
                                     "is down while a label is retried)", registry=r)
        self.examples_written = Counter("guardstream_trainer_examples_written",
                                        "Examples written to data set shards", registry=r)
        self.shards_written = Counter("guardstream_trainer_shards_written", "Data set shards written", registry=r)
        self.shard_failures = Counter("guardstream_trainer_shard_failures",
                                      "Shard or manifest writes that failed (retried)", registry=r)
        self.pending_labels = Gauge("guardstream_trainer_pending_labels",
                                    "Labels consumed and waiting for their shard (not committed)", registry=r)
        self.job_runs = Counter("guardstream_trainer_job_runs", "Job runs by job and outcome (released, refused, "
                                "failed)", ["trainer_job", "outcome"], registry=r)
        self.last_run = Gauge("guardstream_trainer_last_run_timestamp_seconds",
                              "When the last job run finished (unix time)", ["trainer_job"], registry=r)
        self.dependencies = DependencyState(Gauge(
            "guardstream_dependency_up", "0 while the trainer sees this dependency failing (the broker, asked "
            "every kafka.broker_check_interval_s), 1 once it answers", ["dependency"], registry=r))
