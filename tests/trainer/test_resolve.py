"""Reading one record by its coordinates: a record outside the log is missing for good; others are found."""

from __future__ import annotations

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from schemas.events import SourceRef
from topics.io import produce_raw
from topics.records import BadCoordinates, RecordMissing, RecordReader, TopicNotAllowed
from topics.registry import TopicNames
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


async def test_a_short_read_timeout_still_finds_a_record_outside_the_log_missing(
    trainer_settings: TrainerSettings,
) -> None:
    """The read's timeout bounds waiting for the record, not the broker's answer to whether its log holds the
    offset: with a read timeout shorter than that answer takes, a past-the-log record is still missing for good,
    never "unavailable" and retried forever."""
    topic = TopicNames(trainer_settings.kafka.topic_prefix).events
    await produce_raw(trainer_settings.kafka, topic, [(b"k", b"value-0")])
    reader = RecordReader(trainer_settings.kafka, timeout_s=0.01)
    await reader.start()
    try:
        for partition in range(4):
            with pytest.raises(RecordMissing, match="outside the log"):
                await reader.read(SourceRef(topic=topic, partition=partition, offset=1_000_000))
    finally:
        await reader.stop()


async def _has(reader: RecordReader, topic: str, partition: int) -> bool:
    try:
        return await reader.read(SourceRef(topic=topic, partition=partition, offset=0)) == b"value-0"
    except RecordMissing:
        return False


async def test_a_ref_to_a_topic_other_than_events_and_verdicts_is_refused_without_asking_the_broker(
    trainer_settings: TrainerSettings,
) -> None:
    """A reporter or a label may only name the configured events and verdicts topics: another name is refused
    before any metadata request, which would make a broker that auto-creates topics create it."""
    names = TopicNames(trainer_settings.kafka.topic_prefix)
    elsewhere = f"{names.prefix}named.by.a.reporter"
    reader = RecordReader(trainer_settings.kafka, timeout_s=1.0)
    await reader.start()
    try:
        for topic in (elsewhere, names.audit_labels, "__consumer_offsets"):
            with pytest.raises(TopicNotAllowed) as refused:
                await reader.read(SourceRef(topic=topic, partition=0, offset=0))
            assert refused.value.reason == "topic_not_allowed"
    finally:
        await reader.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=trainer_settings.kafka.bootstrap_servers)
    await admin.start()
    try:
        assert elsewhere not in await admin.list_topics()
    finally:
        await admin.close()


async def test_coordinates_the_consumer_refuses_are_unresolvable_not_an_error_of_the_reader(
    trainer_settings: TrainerSettings,
) -> None:
    """A negative offset (aiokafka's seek raises ValueError) or numbers past Kafka's ranges end as that
    record's Unresolvable; the reader still reads the next record."""
    topic = TopicNames(trainer_settings.kafka.topic_prefix).events
    await produce_raw(trainer_settings.kafka, topic, [(b"k", b"value-0")])
    reader = RecordReader(trainer_settings.kafka, timeout_s=1.0)
    await reader.start()
    try:
        hostile = [SourceRef.model_construct(topic=topic, partition=0, offset=-1),  # past the schema's own bounds
                   SourceRef.model_construct(topic=topic, partition=-1, offset=0),
                   SourceRef.model_construct(topic=topic, partition=0, offset=2**63),
                   SourceRef.model_construct(topic=topic, partition=2**31, offset=0)]
        for ref in hostile:
            with pytest.raises(BadCoordinates) as refused:
                await reader.read(ref)
            assert refused.value.reason == "bad_coordinates"
        partition = [p for p in range(4) if await _has(reader, topic, p)][0]
        assert await reader.read(SourceRef(topic=topic, partition=partition, offset=0)) == b"value-0"
    finally:
        await reader.stop()
