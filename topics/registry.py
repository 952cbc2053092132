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


def topic_specs(names: TopicNames, partitions: int = 8, replication_factor: int = 1) -> list[TopicSpec]:
    """Every topic guardstream uses. Verdicts mirror the input partitioning (same key)."""
    return [
        TopicSpec(names.events, partitions, replication_factor, {"retention.ms": WEEK_MS}),
        TopicSpec(names.verdicts, partitions, replication_factor, {"retention.ms": WEEK_MS}),
        TopicSpec(names.dlq, 1, replication_factor, {"retention.ms": MONTH_MS}),
        TopicSpec(names.audit_labels, partitions, replication_factor, {"retention.ms": MONTH_MS}),
        TopicSpec(names.models, 1, replication_factor, {"cleanup.policy": "compact"}),
    ]
