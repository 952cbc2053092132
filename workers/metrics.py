"""Prometheus metrics of the worker. One registry per worker, so tests and demos can read their own."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from runtime.dependency_state import DependencyState

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass
class WorkerMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.events_in = Counter("guardstream_events_in", "Records polled from the input topic", registry=r)
        self.verdicts_out = Counter(
            "guardstream_verdicts", "Verdicts produced", ["status", "request_harmful"], registry=r
        )
        self.dead_letters = Counter("guardstream_dead_letters", "Records sent to the DLQ", ["reason"], registry=r)
        self.cache_hits = Counter("guardstream_cache_hits", "Verdicts answered from the cache", registry=r)
        self.cache_misses = Counter("guardstream_cache_misses", "Cache lookups that missed", registry=r)
        self.cache_errors = Counter("guardstream_cache_errors", "Redis errors (cache degraded)", registry=r)
        self.singleflight_joins = Counter(
            "guardstream_singleflight_joins", "Events that shared an identical in-flight inference", registry=r
        )
        self.backend_retries = Counter("guardstream_backend_retries", "Guard batch retries", registry=r)
        self.batch_size = Histogram(
            "guardstream_batch_size", "Items per guard batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r
        )
        self.stage_seconds = Histogram(
            "guardstream_stage_seconds", "Time per stage", ["stage"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.in_flight = Gauge("guardstream_in_flight_events", "Events polled but not answered", registry=r)
        self.paused = Gauge("guardstream_partitions_paused", "1 while partitions are paused", registry=r)
        self.pauses = Counter("guardstream_backpressure_pauses", "Times the partitions were paused", registry=r)
        self.lag = Gauge("guardstream_consumer_lag", "Highwater minus position", ["partition"], registry=r)
        self.commits = Counter("guardstream_commits", "Offset commits", registry=r)
        self.model_info = Gauge("guardstream_model_info", "The model served (1)", ["name", "version", "backend"],
                                registry=r)
        self.model_switches = Counter("guardstream_model_switches", "Model releases switched to", registry=r)
        self.models_retired = Counter("guardstream_models_retired", "Replaced models closed once idle", registry=r)
        self.poll_errors = Counter("guardstream_poll_errors", "Polls the consumer could not read (a batch it "
                                   "cannot decode, a broker error)", ["error"], registry=r)
        self.produce_retries = Counter("guardstream_produce_retries", "Verdicts and dead letters the broker refused",
                                       ["failure", "error"], registry=r)
        self.produce_stalled = Gauge("guardstream_produce_stalled", "Answers the broker keeps refusing", registry=r)
        self.task_failures = Counter("guardstream_task_failures", "Worker tasks that ended in an exception",
                                     ["task"], registry=r)
        self.cache_unreadable = Counter("guardstream_cache_unreadable", "Cache entries that could not be read "
                                        "(counted as misses)", registry=r)
        self.model_watch_errors = Counter("guardstream_model_watch_errors", "Failures of the release watcher "
                                          "(it restarts)", registry=r)
        self.dependencies = DependencyState(Gauge(
            "guardstream_dependency_up", "0 while the worker sees this dependency failing, 1 once it answers",
            ["dependency"], registry=r))
        self.model_switch_failures = Counter("guardstream_model_switch_failures", "Releases that failed to load",
                                             registry=r)
