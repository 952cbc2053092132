"""Resolve an audit label to its event and verdict by seeking, never through a table a restart would lose.

A label names the verdict it judges (`label.verdict`: topic/partition/offset), and that verdict names its
event (`verdict.source`); or the label names its event directly (`label.event`). Each hop reads one
record at its coordinates (`topics/records.py`) and checks that it is about the label's event.

Each read is `topics/records.py`'s, with its errors: a label that can never be resolved raises `Unresolvable`
with a reason code (counted by the trainer and acknowledged); a broker that does not answer raises a KafkaError,
and the label waits to be tried again, uncommitted. Here: the label's own failures (undecodable; an error verdict
that names no event) and the two hops.
"""

from __future__ import annotations

from schemas.events import AuditLabel, SourceRef
from topics.records import (
    EventVerdictReader,
    NoCoordinates,
    RecordReader,
    Unresolvable,
    at,
    decode_record,
)
from trainer.dataset import AuditExample
from workers.settings import LimitSettings


class LabelUndecodable(Unresolvable):
    reason = "label_undecodable"


class ErrorVerdictWithoutEvent(Unresolvable):
    reason = "verdict_without_source"  # the verdict names no event coordinates (replayed from a file…)


class Resolver(EventVerdictReader):
    """Reads a label's verdict and event at their coordinates. Not for concurrent use: its reader seeks one
    consumer."""

    def __init__(self, reader: RecordReader, limits: LimitSettings) -> None:
        super().__init__(reader, limits.max_record_bytes)

    async def resolve(self, raw_label: bytes | None, label_source: SourceRef | None = None) -> AuditExample:
        label = decode_record(AuditLabel, raw_label, LabelUndecodable, "label")
        verdict = None
        if label.verdict is not None:
            verdict = await self.read_verdict(label.verdict, label.event_id)
            if verdict.source is None and label.event is None:
                raise ErrorVerdictWithoutEvent(f"verdict at {at(label.verdict)} names no event coordinates")
        event_ref = label.event or (verdict.source if verdict is not None else None)
        if event_ref is None:
            raise NoCoordinates(f"label for {label.event_id!r} names neither its verdict nor its event")
        event = await self.read_event(event_ref, label.event_id)
        return AuditExample(event=event, label=label, verdict=verdict, label_source=label_source)
