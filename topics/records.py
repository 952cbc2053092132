"""Reading one record at its coordinates (topic, partition, offset): the trainer's labels and the console's
sampled verdicts name the events and verdicts they are about this way, and nothing keeps a table a restart would
lose.

`RecordReader` reads the raw record with one consumer outside any group; `EventVerdictReader` reads an event or a verdict
and checks that it is about the event expected. A record that can never be read raises `Unresolvable` with a
reason code (counted and acknowledged by the caller: retrying cannot help): a record outside its partition's log,
or of another event, is missing for good. A broker that does not answer, or a record inside the log that does not
arrive within the timeout, raises a KafkaError (`RecordUnavailable`), and the caller tries again later.

Coordinates come from records anyone may write (labels, verdicts, reports), so the reader trusts none of them: it
reads only the configured events and verdicts topics (any other name is refused before the broker is asked about
it: a metadata request makes a broker that auto-creates topics create it), and coordinates the consumer refuses or
that Kafka cannot have are that record's `BadCoordinates`, never the reader's error.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError
from pydantic import BaseModel, ValidationError

from schemas.events import ChatEvent, SourceRef, Verdict
from topics.clients import client_options, stop_consumer
from topics.registry import TopicNames
from topics.settings import KafkaSettings

M = TypeVar("M", bound=BaseModel)


class Unresolvable(Exception):
    """A record that can never be read as asked (nor, so, the label or verdict naming it); `reason` is the metrics' and logs' code."""

    reason = "unresolvable"


class NoCoordinates(Unresolvable):
    reason = "no_coordinates"


class RecordMissing(Unresolvable):
    reason = "record_missing"  # past the end, deleted by retention, or compacted away


class RecordUndecodable(Unresolvable):
    reason = "record_undecodable"


class WrongEvent(Unresolvable):
    reason = "event_mismatch"  # the coordinates hold another event's record


class TopicNotAllowed(Unresolvable):
    reason = "topic_not_allowed"  # neither the events nor the verdicts topic: never looked up


class BadCoordinates(Unresolvable):
    reason = "bad_coordinates"  # a partition or offset no Kafka log can have, or one the consumer refuses


MAX_PARTITION = 2**31 - 1  # the protocol's int32
MAX_OFFSET = 2**63 - 1  # and int64: past these, encoding the fetch would fail in the consumer's own task


class RecordReader:
    """Reads single records of the events and verdicts topics at given coordinates with one unassigned-group
    consumer."""

    def __init__(self, kafka: KafkaSettings, timeout_s: float) -> None:
        self.kafka = kafka
        self.timeout_s = timeout_s
        names = TopicNames(kafka.topic_prefix)
        self.topics = frozenset({names.events, names.verdicts})
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(**client_options(self.kafka), group_id=None, enable_auto_commit=False,
                                          auto_offset_reset="earliest", fetch_max_wait_ms=self.kafka.fetch_max_wait_ms)
        await self._consumer.start()

    async def stop(self) -> None:
        if self._consumer is not None:
            await stop_consumer(self._consumer)

    async def read(self, ref: SourceRef) -> bytes:
        """The value of the record at `ref`: RecordMissing if the log has none there, RecordUnavailable
        (retriable) if it should and none came within the timeout."""
        assert self._consumer is not None, "start() first"
        tp = self._seek(ref)
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            batch = await self._consumer.getmany(tp, timeout_ms=int(left * 1000) + 1, max_records=16)
            for record in batch.get(tp, []):
                if record.offset == ref.offset:
                    return record.value or b""
                if record.offset > ref.offset:
                    raise RecordMissing(f"{ref.topic}[{ref.partition}]@{ref.offset} is gone (next is {record.offset})")
        # Bounded too (a broker that does not answer would hold the label for the client's 40 s), but by the
        # session timeout, not the read's: the offsets requests queue behind the consumer's fetches, and a read
        # timeout shorter than that answer would make a record outside the log look unavailable for ever.
        check_s = self.kafka.session_timeout_ms / 1000
        try:
            await asyncio.wait_for(self._check_in_log(tp, ref), check_s)
        except TimeoutError as exc:
            raise RecordUnavailable(f"{at(ref)}: the broker did not say within {check_s}s whether its "
                                    "log holds it") from exc
        raise RecordUnavailable(f"{at(ref)} is inside the log but was not delivered within {self.timeout_s}s")

    async def ask_brokers(self) -> None:
        """A metadata request on the reader's connections: a KafkaError when no broker answers."""
        assert self._consumer is not None, "start() first"
        await self._consumer.topics()

    def _seek(self, ref: SourceRef) -> TopicPartition:
        """Point the consumer at `ref`, refusing what it must not or cannot read before any request is sent."""
        assert self._consumer is not None
        if ref.topic not in self.topics:
            raise TopicNotAllowed(f"{at(ref)}: only {sorted(self.topics)} are read")
        if not (0 <= ref.partition <= MAX_PARTITION and ref.offset <= MAX_OFFSET):
            raise BadCoordinates(f"{at(ref)} is outside Kafka's ranges")
        tp = TopicPartition(ref.topic, ref.partition)
        try:
            self._consumer.assign([tp])
            self._consumer.seek(tp, ref.offset)
        except (ValueError, TypeError, IllegalStateError) as exc:  # seek refuses a negative offset with ValueError
            raise BadCoordinates(f"{at(ref)}: {exc}") from exc
        return tp

    async def _check_in_log(self, tp: TopicPartition, ref: SourceRef) -> None:
        """RecordMissing if the offset is outside the partition's log (a KafkaError if the broker cannot say)."""
        assert self._consumer is not None
        if ref.partition not in (self._consumer.partitions_for_topic(ref.topic) or set()):
            raise RecordMissing(f"{ref.topic}[{ref.partition}] does not exist")
        first, end = (await self._consumer.beginning_offsets([tp]))[tp], (await self._consumer.end_offsets([tp]))[tp]
        if not first <= ref.offset < end:
            raise RecordMissing(f"{at(ref)} is outside the log [{first}, {end})")


class RecordUnavailable(KafkaError):
    """A record inside the log that did not arrive in time: the broker's trouble, so the label is retried."""

    retriable = True


class EventVerdictReader:
    """Reads events and verdicts at their coordinates, each checked to be about the event expected and within the
    record limit. Not for concurrent use: its reader seeks one consumer."""

    def __init__(self, reader: RecordReader, max_record_bytes: int) -> None:
        self.reader = reader
        self.max_record_bytes = max_record_bytes

    async def read_verdict(self, ref: SourceRef, event_id: str) -> Verdict:
        """The verdict at `ref`, which must be about `event_id` (Unresolvable otherwise)."""
        verdict = decode_record(Verdict, await self.reader.read(ref), RecordUndecodable, "verdict")
        _same_event(verdict.event_id, event_id)
        return verdict

    async def read_event(self, ref: SourceRef, event_id: str) -> ChatEvent:
        """The event at `ref`, within the record limit, which must be `event_id` (Unresolvable otherwise)."""
        raw_event = await self.reader.read(ref)
        if len(raw_event) > self.max_record_bytes:
            raise RecordUndecodable(f"event at {at(ref)} is {len(raw_event)} bytes, over the limit")
        event = decode_record(ChatEvent, raw_event, RecordUndecodable, "event")
        _same_event(event.event_id, event_id)
        return event


def decode_record(model: type[M], raw: bytes | None, error: type[Unresolvable], what: str) -> M:
    try:
        return model.model_validate_json(raw or b"")
    except ValidationError as exc:
        raise error(f"{what} is not a valid {model.__name__}: {exc.errors()[0]['msg']}") from exc


def _same_event(found: str, expected: str) -> None:
    if found != expected:
        raise WrongEvent(f"a record of event {found!r} where {expected!r} was expected")


def at(ref: SourceRef) -> str:
    return f"{ref.topic}[{ref.partition}]@{ref.offset}"
