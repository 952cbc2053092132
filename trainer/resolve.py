"""Resolve an audit label to its event and verdict by seeking, never through a table a restart would lose.

A label names the verdict it judges (`label.verdict`: topic/partition/offset), and that verdict names its
event (`verdict.source`); or the label names its event directly (`label.event`). Each hop reads one
record at its coordinates and checks that it is about the label's event.

A label that can never be resolved raises `Unresolvable` with a reason code (counted by the trainer and
acknowledged: retrying cannot help): a record outside its partition's log, or of another event, is
missing for good. A broker that does not answer, or a record inside the log that does not arrive within
the timeout, raises a KafkaError, and the label waits to be tried again, uncommitted.

Coordinates come from records anyone may write (labels, verdicts, reports), so the reader trusts none of
them: it reads only the configured events and verdicts topics (any other name is refused before the broker
is asked about it: a metadata request makes a broker that auto-creates topics create it), and coordinates
the consumer refuses or that Kafka cannot have are that record's `BadCoordinates`, never the reader's error.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError
from pydantic import BaseModel, ValidationError

from schemas.events import AuditLabel, ChatEvent, SourceRef, Verdict
from topics.registry import TopicNames
from trainer.dataset import AuditExample
from workers.kafka_clients import client_options, stop_consumer
from workers.settings import KafkaSettings, LimitSettings

M = TypeVar("M", bound=BaseModel)


class Unresolvable(Exception):
    """A label that cannot be turned into an example; `reason` is the metrics' and logs' code."""

    reason = "unresolvable"


class LabelUndecodable(Unresolvable):
    reason = "label_undecodable"


class NoCoordinates(Unresolvable):
    reason = "no_coordinates"


class RecordMissing(Unresolvable):
    reason = "record_missing"  # past the end, deleted by retention, or compacted away


class RecordUndecodable(Unresolvable):
    reason = "record_undecodable"


class WrongEvent(Unresolvable):
    reason = "event_mismatch"  # the coordinates hold another event's record


class ErrorVerdictWithoutEvent(Unresolvable):
    reason = "verdict_without_source"  # the verdict names no event coordinates (replayed from a file…)


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
            raise RecordUnavailable(f"{_at(ref)}: the broker did not say within {check_s}s whether its "
                                    "log holds it") from exc
        raise RecordUnavailable(f"{_at(ref)} is inside the log but was not delivered within {self.timeout_s}s")

    async def ask_brokers(self) -> None:
        """A metadata request on the reader's connections: a KafkaError when no broker answers."""
        assert self._consumer is not None, "start() first"
        await self._consumer.topics()

    def _seek(self, ref: SourceRef) -> TopicPartition:
        """Point the consumer at `ref`, refusing what it must not or cannot read before any request is sent."""
        assert self._consumer is not None
        if ref.topic not in self.topics:
            raise TopicNotAllowed(f"{_at(ref)}: only {sorted(self.topics)} are read")
        if not (0 <= ref.partition <= MAX_PARTITION and ref.offset <= MAX_OFFSET):
            raise BadCoordinates(f"{_at(ref)} is outside Kafka's ranges")
        tp = TopicPartition(ref.topic, ref.partition)
        try:
            self._consumer.assign([tp])
            self._consumer.seek(tp, ref.offset)
        except (ValueError, TypeError, IllegalStateError) as exc:  # seek refuses a negative offset with ValueError
            raise BadCoordinates(f"{_at(ref)}: {exc}") from exc
        return tp

    async def _check_in_log(self, tp: TopicPartition, ref: SourceRef) -> None:
        """RecordMissing if the offset is outside the partition's log (a KafkaError if the broker cannot say)."""
        assert self._consumer is not None
        if ref.partition not in (self._consumer.partitions_for_topic(ref.topic) or set()):
            raise RecordMissing(f"{ref.topic}[{ref.partition}] does not exist")
        first, end = (await self._consumer.beginning_offsets([tp]))[tp], (await self._consumer.end_offsets([tp]))[tp]
        if not first <= ref.offset < end:
            raise RecordMissing(f"{_at(ref)} is outside the log [{first}, {end})")


class RecordUnavailable(KafkaError):
    """A record inside the log that did not arrive in time: the broker's trouble, so the label is retried."""

    retriable = True


class Resolver:
    """Reads labels' verdicts and events at their coordinates (the trainer's, and the console's for the events
    it queues). Not for concurrent use: its reader seeks one consumer."""

    def __init__(self, reader: RecordReader, limits: LimitSettings) -> None:
        self.reader = reader
        self.limits = limits

    async def resolve(self, raw_label: bytes | None, label_source: SourceRef | None = None) -> AuditExample:
        label = _decode(AuditLabel, raw_label, LabelUndecodable, "label")
        verdict = None
        if label.verdict is not None:
            verdict = await self.read_verdict(label.verdict, label.event_id)
            if verdict.source is None and label.event is None:
                raise ErrorVerdictWithoutEvent(f"verdict at {_at(label.verdict)} names no event coordinates")
        event_ref = label.event or (verdict.source if verdict is not None else None)
        if event_ref is None:
            raise NoCoordinates(f"label for {label.event_id!r} names neither its verdict nor its event")
        event = await self.read_event(event_ref, label.event_id)
        return AuditExample(event=event, label=label, verdict=verdict, label_source=label_source)

    async def read_verdict(self, ref: SourceRef, event_id: str) -> Verdict:
        """The verdict at `ref`, which must be about `event_id` (Unresolvable otherwise)."""
        verdict = _decode(Verdict, await self.reader.read(ref), RecordUndecodable, "verdict")
        _same_event(verdict.event_id, event_id)
        return verdict

    async def read_event(self, ref: SourceRef, event_id: str) -> ChatEvent:
        """The event at `ref`, within the record limit, which must be `event_id` (Unresolvable otherwise)."""
        raw_event = await self.reader.read(ref)
        if len(raw_event) > self.limits.max_record_bytes:
            raise RecordUndecodable(f"event at {_at(ref)} is {len(raw_event)} bytes, over the limit")
        event = _decode(ChatEvent, raw_event, RecordUndecodable, "event")
        _same_event(event.event_id, event_id)
        return event


def _decode(model: type[M], raw: bytes | None, error: type[Unresolvable], what: str) -> M:
    try:
        return model.model_validate_json(raw or b"")
    except ValidationError as exc:
        raise error(f"{what} is not a valid {model.__name__}: {exc.errors()[0]['msg']}") from exc


def _same_event(found: str, expected: str) -> None:
    if found != expected:
        raise WrongEvent(f"a record of event {found!r} where {expected!r} was expected")


def _at(ref: SourceRef) -> str:
    return f"{ref.topic}[{ref.partition}]@{ref.offset}"
