"""Export a range of the audit labels topic into the trainer's data set (`guardstream replay --export`):
a data set rebuilt or backfilled from the topic, through the same resolution and shards as the trainer
service. Each batch becomes one committed shard before the position moves on; unresolvable labels are
counted by reason. Exporting a range twice stores its labels twice, and the data set keeps the latest of
each event. The export may run while the trainer writes the same data set: both append through the commit
log's conditional create (`trainer/dataset.py`), so neither drops the other's shards, and a batch whose
commit other writers keep beating fails the export (`ConcurrentWriter`) before its position moves."""

from __future__ import annotations

from collections import Counter

import structlog
from aiokafka import ConsumerRecord

from schemas.events import SourceRef
from topics.records import Unresolvable
from trainer.dataset import DataSet
from trainer.resolve import Resolver

log = structlog.get_logger("guardstream.replay")


class LabelExport:
    """The replay handler: resolve a batch of label records and append their examples as one shard."""

    def __init__(self, dataset: DataSet, resolver: Resolver) -> None:
        self.dataset = dataset
        self.resolver = resolver
        self.counts: Counter[str] = Counter()

    async def __call__(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        examples = []
        for record in records:
            source = SourceRef(topic=record.topic, partition=record.partition, offset=record.offset)
            try:
                examples.append(await self.resolver.resolve(record.value, source))
            except Unresolvable as exc:
                self.counts[f"unresolvable:{exc.reason}"] += 1
                log.warning("label_unresolvable", reason=exc.reason, error=str(exc), partition=record.partition,
                            offset=record.offset)
        if examples:
            await self.dataset.append(examples)
            self.counts["examples"] += len(examples)
