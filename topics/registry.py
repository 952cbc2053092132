"""The topics of DESIGN.md: names (under a configurable prefix), partition counts and configs."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TopicNames:
    """The concrete topic names for one deployment; the prefix lets several share a cluster."""

    prefix: str = ""

    @property
    def events(self) -> str:
        return f"{self.prefix}chat.events"

    @property
    def verdicts(self) -> str:
        return f"{self.prefix}moderation.verdicts"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}moderation.dlq"

    @property
    def audit_labels(self) -> str:
        return f"{self.prefix}moderation.audit.labels"

    @property
    def models(self) -> str:
        return f"{self.prefix}moderation.models"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str] = field(default_factory=dict)


WEEK_MS = str(7 * 24 * 3600 * 1000)
MONTH_MS = str(30 * 24 * 3600 * 1000)
MAX_DEFAULT_REPLICATION = 3
MAX_MIN_INSYNC = 2


def choose_replication(brokers: int, configured: int | None = None) -> int:
    """The replication factor `topics create` uses: the configured one, else min(3, brokers in the cluster).
    Three copies survive one broker down for maintenance and another failing."""
    if configured is not None:
        return configured
    return max(1, min(MAX_DEFAULT_REPLICATION, brokers))


def durability_configs(replication_factor: int) -> dict[str, str]:
    """min.insync.replicas = min(2, rf) once there are copies to wait for: with the producers' acks=all, a
    write is then acknowledged only when a second replica has it, so one broker lost loses no answer."""
    if replication_factor < 2:
        return {}
    return {"min.insync.replicas": str(min(MAX_MIN_INSYNC, replication_factor))}


def topic_specs(names: TopicNames, partitions: int = 8, replication_factor: int = 1) -> list[TopicSpec]:
    """Every topic guardstream uses. Verdicts mirror the input partitioning (same key). Every topic waits
    for a second copy where there is one: dead letters are answers too, and a release lost is a switch missed."""
    durable = durability_configs(replication_factor)
    return [
        TopicSpec(names.events, partitions, replication_factor, {"retention.ms": WEEK_MS, **durable}),
        TopicSpec(names.verdicts, partitions, replication_factor, {"retention.ms": WEEK_MS, **durable}),
        TopicSpec(names.dlq, 1, replication_factor, {"retention.ms": MONTH_MS, **durable}),
        TopicSpec(names.audit_labels, partitions, replication_factor, {"retention.ms": MONTH_MS, **durable}),
        TopicSpec(names.models, 1, replication_factor, {"cleanup.policy": "compact", **durable}),
    ]
