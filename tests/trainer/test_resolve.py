"""Reading one record by its coordinates: a record outside the log is missing for good; others are found."""

from __future__ import annotations

import pytest

from schemas.events import SourceRef
from topics.io import produce_raw
from topics.registry import TopicNames
from trainer.resolve import RecordMissing, RecordReader
from trainer.settings import TrainerSettings


async def test_a_record_is_read_at_its_offset_and_one_outside_the_log_is_missing(
    trainer_settings: TrainerSettings,
) -> None:
    topic = TopicNames(trainer_settings.kafka.topic_prefix).events
    for i in range(3):
        await produce_raw(trainer_settings.kafka, topic, [(b"k", f"value-{i}".encode())])
    reader = RecordReader(trainer_settings.kafka, timeout_s=1.0)
    await reader.start()
    try:
        partition = [p for p in range(4) if await _has(reader, topic, p)][0]
        assert await reader.read(SourceRef(topic=topic, partition=partition, offset=2)) == b"value-2"
        with pytest.raises(RecordMissing, match="outside the log"):
            await reader.read(SourceRef(topic=topic, partition=partition, offset=50))
        with pytest.raises(RecordMissing, match="does not exist"):
            await reader.read(SourceRef(topic=topic, partition=99, offset=0))
    finally:
        await reader.stop()


async def _has(reader: RecordReader, topic: str, partition: int) -> bool:
    try:
        return await reader.read(SourceRef(topic=topic, partition=partition, offset=0)) == b"value-0"
    except RecordMissing:
        return False
