"""How labels ended, as the trainer's metrics and its consumer group's commits tell it."""

from __future__ import annotations

from tests.conftest import PARTITIONS
from tests.kafka_io import committed_offsets
from topics.registry import TopicNames
from trainer.service import TrainerService
from trainer.settings import TrainerSettings


def total(trainer: TrainerService, metric: str, labels: dict[str, str] | None = None) -> float:
    """A counter's value (summed over its labels unless `labels` picks one); 0 before it is first counted."""
    return sum(sample.value for family in trainer.metrics.registry.collect() for sample in family.samples
               if sample.name == metric and (labels is None or sample.labels == labels))


def skipped(trainer: TrainerService, reason: str | None = None) -> float:
    """Labels counted as unresolvable, for one reason or all."""
    return total(trainer, "guardstream_trainer_labels_unresolvable_total", {"reason": reason} if reason else None)


async def committed(settings: TrainerSettings) -> int:
    """How many label records the trainer's group has committed, over every partition."""
    offsets = await committed_offsets(settings.kafka.bootstrap_servers, settings.group_id,
                                      TopicNames(settings.kafka.topic_prefix).audit_labels, PARTITIONS)
    return sum(offsets.values())
