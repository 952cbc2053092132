"""Prometheus metrics of the console. One registry per console, so tests and demos read their own."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge

from runtime.dependency_state import DependencyState


@dataclass
class ConsoleMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.verdicts_seen = Counter("guardstream_console_verdicts", "Verdicts read from the verdicts topic",
                                     registry=r)
        self.verdicts_undecodable = Counter("guardstream_console_verdicts_undecodable", "Verdict records that did "
                                            "not decode (skipped)", registry=r)
        self.verdicts_refused = Counter("guardstream_console_verdicts_refused", "Verdicts the review store refused "
                                        "(skipped)", registry=r)
        self.queued = Counter("guardstream_console_queued", "Events queued for review, by sampling rule",
                              ["reason"], registry=r)
        self.events_unreadable = Counter("guardstream_console_events_unreadable", "Sampled verdicts whose event "
                                         "could not be read at its coordinates", ["reason"], registry=r)
        self.intake_errors = Counter("guardstream_console_intake_errors", "Polls the broker or the review store "
                                     "failed, by error type (read again after a backoff)", ["error"], registry=r)
        self.labels_given = Counter("guardstream_console_labels", "Labels given by reviewers", registry=r)
        self.labels_published = Counter("guardstream_console_labels_published", "Labels published to the audit "
                                        "topic", registry=r)
        self.label_publish_errors = Counter("guardstream_console_label_publish_errors", "Publication rounds the "
                                            "broker or the review store failed, by error type (retried after a "
                                            "backoff)", ["error"], registry=r)
        self.sign_in_failures = Counter("guardstream_console_sign_in_failures", "Refused sign-ins", registry=r)
        self.queue_open = Gauge("guardstream_console_queue_open", "Open review items", registry=r)
        self.queue_oldest_s = Gauge("guardstream_console_queue_oldest_seconds", "Age of the oldest open item",
                                    registry=r)
        self.dependencies = DependencyState(Gauge(
            "guardstream_dependency_up", "0 while the console sees this dependency failing (the broker, asked "
            "every kafka.broker_check_interval_s), 1 once it answers", ["dependency"], registry=r))
