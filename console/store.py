"""The review store: the sampled events, every verdict seen for them, the queue, and the reviewers' labels.

Synchronous SQLAlchemy Core over PostgreSQL or SQLite; the web handlers run it on their thread pool and
the consumer through `asyncio.to_thread`. Writes are idempotent where records can be delivered twice: a
verdict is stored once per coordinates, an event once per id, an item once per event.

A label is published through the store (an outbox): it waits `undo_window_s`, is claimed by the publisher
(`publishing_since`), sent, then marked `published_at`. An undo before the claim withdraws it; an undo after
it reopens the item, and the reviewer's next label, the later one, supersedes it for the trainer.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from pydantic import BaseModel
from sqlalchemy import and_, case, create_engine, event, func, insert, or_, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from console import tables as t
from console.quality import Judged
from console.sampling import PRIORITY, Reason, wants_two_reviews
from schemas.events import (
    AuditLabel,
    ChatEvent,
    ErrorInfo,
    ImageRef,
    ModelRef,
    SourceRef,
    StageVerdict,
    Verdict,
    VerdictStatus,
)

M = TypeVar("M", bound=BaseModel)
P = ParamSpec("P")
R = TypeVar("R")


class StoreNotAnswering(TimeoutError):
    """A call to the review store that did not return in time: a hung server, or a network that swallows what is
    sent (no error ever comes). Counted and retried like any outage; its thread ends when its connection does."""


async def answered_within(timeout_s: float, call: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """`call(*args)` on a worker thread, waited for at most `timeout_s`; StoreNotAnswering past it."""
    deadline = asyncio.timeout(timeout_s)
    try:
        async with deadline:
            return await asyncio.to_thread(call, *args, **kwargs)
    except TimeoutError as exc:
        if not deadline.expired():
            raise
        name = getattr(call, "__name__", "a call")
        raise StoreNotAnswering(f"the review store did not answer {name} within {timeout_s}s") from exc


class LabelRefused(Exception):
    """A label the store will not take; the message says why, for the reviewer."""


class NoSuchItem(LabelRefused):
    """An item id the queue does not have."""


@dataclass(frozen=True)
class Incoming:
    """A verdict read from the verdicts topic, at `at`, with the sampling rules that fired for it."""

    verdict: Verdict
    at: SourceRef
    reasons: Sequence[Reason]


@dataclass(frozen=True)
class StoredVerdict:
    id: int
    at: SourceRef
    verdict: Verdict


@dataclass(frozen=True)
class StoredLabel:
    id: int
    reviewer: str
    request_harmful: bool
    response_harmful: bool | None
    note: str
    labelled_at: datetime
    published: bool
    undone: bool


@dataclass(frozen=True)
class StoredReport:
    reporter: str
    reason: str
    reported_at: datetime


@dataclass(frozen=True)
class ItemView:
    id: int
    event: ChatEvent
    event_at: SourceRef | None
    reasons: list[str]
    random_sample: bool
    reviews_wanted: int
    enqueued_at: datetime
    done: bool
    verdicts: list[StoredVerdict]
    labels: list[StoredLabel]
    reports: list[StoredReport]

    @property
    def live_labels(self) -> list[StoredLabel]:
        return [label for label in self.labels if not label.undone]

    @property
    def disputed(self) -> bool:
        return len({(x.request_harmful, x.response_harmful) for x in self.live_labels}) > 1


@dataclass(frozen=True)
class Undone:
    item_id: int
    withdrawn: bool  # never published; False: already on the topic, a new label will supersede it


@dataclass(frozen=True)
class DueLabel:
    id: int
    label: AuditLabel


@dataclass
class QueueStats:
    open: int = 0
    oldest_open_s: float | None = None
    done: int = 0
    labels: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    disputed: list[int] = field(default_factory=list)


def storable(text: str) -> str:
    """PostgreSQL's text cannot hold NUL: it becomes U+FFFD (shown, never silently dropped)."""
    return text.replace("\x00", "\ufffd")


def storable_model(model: M) -> M:
    """`model` with every NUL in its strings replaced (the same model when it has none)."""
    if "\\u0000" not in model.model_dump_json():  # NUL is escaped so in JSON: this finds it anywhere
        return model
    return type(model).model_validate(_replace_nul(model.model_dump()))


def _replace_nul(value: Any) -> Any:
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        return {_replace_nul(k): _replace_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_nul(v) for v in value]
    return value


def utc(value: datetime) -> datetime:
    """In UTC: what the store writes is UTC, and SQLite hands it back naive."""
    return value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)


def make_engine(url: str, timeout_s: float = 30.0) -> Engine:
    """PostgreSQL sessions in UTC; SQLite transactions that take the write lock when they begin (BEGIN
    IMMEDIATE), so a claim's read and its write are one step there too, as FOR UPDATE makes them on PostgreSQL.
    A statement waits at most `timeout_s` for SQLite's write lock, or for a pooled or new PostgreSQL connection,
    then fails (OperationalError, or the pool's TimeoutError): callers retry, a thread is never held for good."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, pool_timeout=timeout_s,
                             connect_args={"options": "-c timezone=UTC", "connect_timeout": math.ceil(timeout_s)})
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": timeout_s})

    @event.listens_for(engine, "connect")
    def _connect(connection: Any, _: Any) -> None:
        connection.isolation_level = None  # the driver's own BEGIN off: SQLAlchemy's begin event below issues it
        cursor = connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _insert_new(connection: Connection, table: t.Table, rows: list[dict[str, Any]], keys: list[str]) -> None:
    """Insert rows whose keys are not there yet (records delivered twice are stored once)."""
    if not rows:
        return
    dialect = connection.dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    connection.execute(dialect_insert(table).on_conflict_do_nothing(index_elements=keys), rows)


class ReviewStore:
    def __init__(self, engine: Engine, *, undo_window_s: float = 10.0, claim_s: float = 300.0,
                 double_review_rate: float = 0.0) -> None:
        self.engine = engine
        self.undo_window = timedelta(seconds=undo_window_s)
        self.claim = timedelta(seconds=claim_s)
        self.double_review_rate = double_review_rate

    def close(self) -> None:
        self.engine.dispose()

    # -- intake ---------------------------------------------------------------------------------------------

    def events_with_items(self, event_ids: Iterable[str]) -> set[str]:
        with self.engine.connect() as c:
            return _queued(c, event_ids)

    def add(self, incoming: Sequence[Incoming], events: dict[str, tuple[ChatEvent, SourceRef | None]],
            now: datetime) -> int:
        """Store each verdict whose event has an item or gets one now (it has reasons and its event is in
        `events`); returns how many new items entered the queue."""
        with self.engine.begin() as c:
            known = _queued(c, (i.verdict.event_id for i in incoming))  # again, in this transaction
            new_items = 0
            for one in incoming:
                event_id = one.verdict.event_id
                if event_id not in known:
                    if not one.reasons or event_id not in events:
                        continue
                    chat, at = events[event_id]
                    _insert_new(c, t.events, [_event_row(chat, at)], ["event_id"])
                    _insert_new(c, t.items, [self._item_row(event_id, one.reasons, now)], ["event_id"])
                    known.add(event_id)
                    new_items += 1
                elif one.reasons:
                    self._add_reasons(c, event_id, one.reasons)
                _insert_new(c, t.verdicts, [_verdict_row(one.verdict, one.at)], ["topic", "partition", "offset"])
            return new_items

    def _item_row(self, event_id: str, reasons: Sequence[Reason], now: datetime) -> dict[str, Any]:
        return {"event_id": event_id, "reasons": sorted({str(r) for r in reasons}, key=lambda r: PRIORITY[Reason(r)]),
                "priority": priority(reasons), "random_sample": Reason.RANDOM in reasons,
                "reviews_wanted": 2 if wants_two_reviews(event_id, self.double_review_rate) else 1,
                "enqueued_at": now}

    @staticmethod
    def _add_reasons(c: Connection, event_id: str, reasons: Sequence[Reason]) -> None:
        row = c.execute(select(t.items.c.id, t.items.c.reasons).where(t.items.c.event_id == event_id)
                        .with_for_update()).one()
        merged = sorted({*row.reasons, *(str(r) for r in reasons)}, key=lambda r: PRIORITY[Reason(r)])
        if merged != list(row.reasons):  # the random rule hashes the event id: firing late, it still chose the event
            c.execute(update(t.items).where(t.items.c.id == row.id).values(
                reasons=merged, priority=priority([Reason(r) for r in merged]), random_sample=Reason.RANDOM in merged))

    def report(self, event_id: str, reporter: str, reason: str, now: datetime) -> bool:
        """Record a report; put its event at the front of the queue (reopened if it was reviewed). False if the
        store lacks the event."""
        with self.engine.begin() as c:
            item = c.execute(select(t.items.c.id, t.items.c.done_at).where(t.items.c.event_id == event_id)
                             .with_for_update()).one_or_none()
            if item is None:
                return False
            c.execute(insert(t.reports).values(event_id=event_id, reporter=reporter, reason=reason, reported_at=now))
            self._add_reasons(c, event_id, [Reason.REPORTED])
            if item.done_at is not None:  # reviewed already: a report asks for one more look
                live = c.scalar(select(func.count()).select_from(t.labels).where(
                    t.labels.c.item_id == item.id, t.labels.c.undone_at.is_(None)))
                c.execute(update(t.items).where(t.items.c.id == item.id).values(done_at=None, reviews_wanted=live + 1))
            return True

    # -- reviewing ------------------------------------------------------------------------------------------

    def next_item(self, reviewer: str, now: datetime) -> int | None:
        """The next open item for `reviewer` (claimed for them, so that others are offered another)."""
        i = t.items.c
        mine = select(t.labels.c.item_id).where(t.labels.c.reviewer == reviewer, t.labels.c.undone_at.is_(None))
        skipped = select(t.skips.c.item_id).where(t.skips.c.reviewer == reviewer)
        # an item this reviewer holds comes first (the one they just undid), then by priority and age
        query = (select(i.id).where(i.done_at.is_(None), i.id.not_in(mine), i.id.not_in(skipped),
                                    or_(i.claimed_by.is_(None), i.claimed_by == reviewer, i.claimed_until < now))
                 .order_by(case((i.claimed_by == reviewer, 0), else_=1), i.priority, i.enqueued_at, i.id).limit(1))
        with self.engine.begin() as c:
            item_id = c.scalar(query.with_for_update(skip_locked=True))
            if item_id is not None:
                c.execute(update(t.items).where(i.id == item_id).values(claimed_by=reviewer,
                                                                         claimed_until=now + self.claim))
            return item_id

    def images(self, item_id: int) -> list[ImageRef] | None:
        """The images of an item's event (None: no such item), without the rest of the item."""
        with self.engine.connect() as c:
            images = c.scalar(select(t.events.c.images).join(t.items, t.items.c.event_id == t.events.c.event_id)
                              .where(t.items.c.id == item_id))
        return None if images is None else [ImageRef(**image) for image in images]

    def item_of(self, event_id: str) -> ItemView | None:
        with self.engine.connect() as c:
            item_id = c.scalar(select(t.items.c.id).where(t.items.c.event_id == event_id))
        return None if item_id is None else self.item(item_id)

    def item(self, item_id: int) -> ItemView | None:
        with self.engine.connect() as c:
            row = c.execute(select(t.items, t.events).join(t.events, t.events.c.event_id == t.items.c.event_id)
                            .where(t.items.c.id == item_id)).mappings().one_or_none()
            if row is None:
                return None
            verdict_rows = c.execute(select(t.verdicts).where(t.verdicts.c.event_id == row["event_id"])
                                     .order_by(t.verdicts.c.produced_at, t.verdicts.c.id)).mappings().all()
            label_rows = c.execute(select(t.labels).where(t.labels.c.item_id == item_id)
                                   .order_by(t.labels.c.labelled_at, t.labels.c.id)).mappings().all()
            report_rows = c.execute(select(t.reports).where(t.reports.c.event_id == row["event_id"])
                                    .order_by(t.reports.c.reported_at, t.reports.c.id)).mappings().all()
        return ItemView(
            id=item_id, event=_chat_event(row), event_at=_event_at(row), reasons=list(row["reasons"]),
            random_sample=row["random_sample"], reviews_wanted=row["reviews_wanted"],
            enqueued_at=utc(row["enqueued_at"]), done=row["done_at"] is not None,
            verdicts=[StoredVerdict(v["id"], SourceRef(topic=v["topic"], partition=v["partition"], offset=v["offset"]),
                                    _verdict(v, row)) for v in verdict_rows],
            labels=[StoredLabel(x["id"], x["reviewer"], x["request_harmful"], x["response_harmful"], x["note"],
                                utc(x["labelled_at"]), x["published_at"] is not None or x["publishing_since"] is not None,
                                x["undone_at"] is not None) for x in label_rows],
            reports=[StoredReport(r["reporter"], r["reason"], utc(r["reported_at"])) for r in report_rows],
        )

    def label(self, item_id: int, reviewer: str, request_harmful: bool, response_harmful: bool | None, note: str,
              now: datetime) -> int:
        try:
            return self._label(item_id, reviewer, request_harmful, response_harmful, note, now)
        except IntegrityError as exc:  # the one-live-label index: a double submit, or another tab's label
            raise LabelRefused("you have already labelled this event (undo first to change it)") from exc

    def _label(self, item_id: int, reviewer: str, request_harmful: bool, response_harmful: bool | None, note: str,
               now: datetime) -> int:
        with self.engine.begin() as c:
            item = c.execute(select(t.items.c.event_id, t.items.c.reviews_wanted, t.events.c.response)
                             .join(t.events, t.events.c.event_id == t.items.c.event_id)
                             .where(t.items.c.id == item_id).with_for_update(of=t.items)).one_or_none()
            if item is None:
                raise NoSuchItem(f"there is no item {item_id}")
            if item.response is None and response_harmful is not None:
                raise LabelRefused("this event has no response to label")
            if item.response is not None and response_harmful is None:
                raise LabelRefused("this event has a response: label it too")
            verdict_id = c.scalar(select(t.verdicts.c.id).where(t.verdicts.c.event_id == item.event_id)
                                  .order_by(t.verdicts.c.produced_at.desc(), t.verdicts.c.id.desc()).limit(1))
            label_id = c.execute(insert(t.labels).values(
                item_id=item_id, event_id=item.event_id, reviewer=reviewer, request_harmful=request_harmful,
                response_harmful=response_harmful, note=note, labelled_at=now, verdict_id=verdict_id,
                publish_after=now + self.undo_window)).inserted_primary_key[0]
            live = c.scalar(select(func.count()).select_from(t.labels).where(
                t.labels.c.item_id == item_id, t.labels.c.undone_at.is_(None)))
            c.execute(update(t.items).where(t.items.c.id == item_id).values(
                claimed_by=None, claimed_until=None, done_at=now if live >= item.reviews_wanted else None))
            return int(label_id)

    def skip(self, item_id: int, reviewer: str, now: datetime) -> None:
        with self.engine.begin() as c:
            if c.scalar(select(t.items.c.id).where(t.items.c.id == item_id)) is None:
                raise NoSuchItem(f"there is no item {item_id}")
            _insert_new(c, t.skips, [{"item_id": item_id, "reviewer": reviewer, "skipped_at": now}],
                        ["item_id", "reviewer"])
            c.execute(update(t.items).where(t.items.c.id == item_id, t.items.c.claimed_by == reviewer)
                      .values(claimed_by=None, claimed_until=None))

    def undo_last(self, reviewer: str, now: datetime) -> Undone | None:
        """Undo `reviewer`'s latest live label; its item goes back to them first."""
        with self.engine.begin() as c:
            label = c.execute(select(t.labels).where(t.labels.c.reviewer == reviewer, t.labels.c.undone_at.is_(None))
                              .order_by(t.labels.c.labelled_at.desc(), t.labels.c.id.desc()).limit(1)
                              .with_for_update()).mappings().one_or_none()
            if label is None:
                return None
            c.execute(update(t.labels).where(t.labels.c.id == label["id"]).values(undone_at=now))
            c.execute(update(t.items).where(t.items.c.id == label["item_id"]).values(
                done_at=None, claimed_by=reviewer, claimed_until=now + self.claim))
            withdrawn = label["publishing_since"] is None and label["published_at"] is None
            return Undone(label["item_id"], withdrawn)

    # -- publishing (the outbox) ----------------------------------------------------------------------------

    def claim_due_labels(self, now: datetime, limit: int = 100, stale_s: float = 60.0) -> list[DueLabel]:
        """Claim labels whose undo window has passed and that are not published (or whose claim is stale:
        a publisher that died); the caller publishes them, then calls `published`, or `release` on failure."""
        x = t.labels.c
        due = and_(x.published_at.is_(None), x.undone_at.is_(None), x.publish_after <= now,
                   or_(x.publishing_since.is_(None), x.publishing_since < now - timedelta(seconds=stale_s)))
        with self.engine.begin() as c:
            ids = list(c.scalars(select(x.id).where(due).order_by(x.id).limit(limit).with_for_update(skip_locked=True)))
            if not ids:
                return []
            c.execute(update(t.labels).where(x.id.in_(ids)).values(publishing_since=now))
            rows = c.execute(
                select(t.labels, t.verdicts.c.topic, t.verdicts.c.partition, t.verdicts.c.offset,
                       t.events.c.source_topic, t.events.c.source_partition, t.events.c.source_offset,
                       t.items.c.random_sample)
                .join(t.verdicts, t.verdicts.c.id == x.verdict_id, isouter=True)
                .join(t.events, t.events.c.event_id == x.event_id)
                .join(t.items, t.items.c.id == x.item_id)
                .where(x.id.in_(ids)).order_by(x.id)).mappings().all()
        return [DueLabel(r["id"], _audit_label(r)) for r in rows]

    def published(self, label_ids: Sequence[int], now: datetime) -> None:
        with self.engine.begin() as c:
            c.execute(update(t.labels).where(t.labels.c.id.in_(label_ids)).values(published_at=now))

    def release(self, label_ids: Sequence[int]) -> None:
        with self.engine.begin() as c:
            c.execute(update(t.labels).where(t.labels.c.id.in_(label_ids), t.labels.c.published_at.is_(None))
                      .values(publishing_since=None))

    # -- quality --------------------------------------------------------------------------------------------

    def judged(self) -> list[Judged]:
        """Every ok verdict of a random-sample item, against the item's latest live label (latest wins, as
        in the trainer's data set), per task."""
        v, x = t.verdicts.c, t.labels.c
        with self.engine.connect() as c:
            rows = c.execute(
                select(v.id, t.events.c.modality, v.model_name, v.model_version, v.produced_at, v.request_harmful,
                       v.response_harmful, x.request_harmful.label("truth_request"),
                       x.response_harmful.label("truth_response"), x.labelled_at, x.id.label("label_id"))
                .join(t.events, t.events.c.event_id == t.items.c.event_id)
                .join(t.verdicts, v.event_id == t.items.c.event_id)
                .join(t.labels, and_(x.item_id == t.items.c.id, x.undone_at.is_(None)))
                .where(t.items.c.random_sample.is_(True), v.status == "ok")
                .order_by(x.labelled_at, x.id)
            ).all()
        latest = {r.id: r for r in rows}  # ordered by label time: the last one per verdict stays
        judged: list[Judged] = []
        for r in latest.values():
            model, at = f"{r.model_name}:{r.model_version}", utc(r.produced_at)
            judged.append(Judged("request", r.modality, model, at, bool(r.request_harmful), bool(r.truth_request)))
            if r.truth_response is not None and r.response_harmful is not None:
                judged.append(Judged("response", r.modality, model, at, bool(r.response_harmful),
                                     bool(r.truth_response)))
        return judged

    def agreement_pairs(self) -> dict[str, list[tuple[bool, bool]]]:
        """Per task, the first two reviewers' answers on every item two reviewers labelled."""
        with self.engine.connect() as c:
            rows = c.execute(select(t.labels.c.item_id, t.labels.c.reviewer, t.labels.c.request_harmful,
                                    t.labels.c.response_harmful)
                             .where(t.labels.c.undone_at.is_(None)).order_by(t.labels.c.item_id, t.labels.c.id)).all()
        per_item: dict[int, list[Any]] = {}
        for r in rows:
            seen = per_item.setdefault(r.item_id, [])
            if len(seen) < 2 and all(s.reviewer != r.reviewer for s in seen):
                seen.append(r)
        pairs: dict[str, list[tuple[bool, bool]]] = {"request": [], "response": []}
        for a, b in (v for v in per_item.values() if len(v) == 2):
            pairs["request"].append((a.request_harmful, b.request_harmful))
            if a.response_harmful is not None and b.response_harmful is not None:
                pairs["response"].append((a.response_harmful, b.response_harmful))
        return pairs

    def open_items(self, now: datetime) -> tuple[int, float]:
        """How many items are open, and the oldest one's age in seconds (0 when none is)."""
        i = t.items.c
        with self.engine.connect() as c:
            count, oldest = c.execute(select(func.count(), func.min(i.enqueued_at)).where(i.done_at.is_(None))).one()
        return count, (now - utc(oldest)).total_seconds() if oldest is not None else 0.0

    def queue_stats(self, now: datetime) -> QueueStats:
        i = t.items.c
        with self.engine.connect() as c:
            stats = QueueStats(
                open=c.scalar(select(func.count()).where(i.done_at.is_(None))) or 0,
                done=c.scalar(select(func.count()).where(i.done_at.is_not(None))) or 0,
                labels=c.scalar(select(func.count()).select_from(t.labels).where(t.labels.c.undone_at.is_(None))) or 0,
            )
            oldest = c.scalar(select(func.min(i.enqueued_at)).where(i.done_at.is_(None)))
            if oldest is not None:
                stats.oldest_open_s = (now - utc(oldest)).total_seconds()
            for reasons, in c.execute(select(i.reasons).where(i.done_at.is_(None))):
                for reason in reasons:
                    stats.by_reason[reason] = stats.by_reason.get(reason, 0) + 1
            answers = c.execute(select(t.labels.c.item_id, t.labels.c.request_harmful, t.labels.c.response_harmful)
                                .where(t.labels.c.undone_at.is_(None))).all()
        distinct: dict[int, set[tuple[bool, bool | None]]] = {}
        for a in answers:
            distinct.setdefault(a.item_id, set()).add((a.request_harmful, a.response_harmful))
        stats.disputed = sorted(item for item, seen in distinct.items() if len(seen) > 1)
        return stats


def _queued(c: Connection, event_ids: Iterable[str]) -> set[str]:
    """Which of these events have a queue item."""
    ids = list(set(event_ids))
    if not ids:
        return set()
    return set(c.scalars(select(t.items.c.event_id).where(t.items.c.event_id.in_(ids))))


def priority(reasons: Sequence[Reason]) -> int:
    """The queue's order. A random-sample item keeps the random rank whatever else it is (only a report moves
    it forward): random items are then labelled first come, first served, and the labelled part of the
    sample stays uniform, not enriched with the hard cases other rules single out."""
    if Reason.RANDOM in reasons and Reason.REPORTED not in reasons:
        return PRIORITY[Reason.RANDOM]
    return min(PRIORITY[r] for r in reasons)


def _event_row(chat: ChatEvent, at: SourceRef | None) -> dict[str, Any]:
    return {"event_id": chat.event_id, "conversation_id": chat.conversation_id, "tenant": chat.tenant,
            "created_at": utc(chat.created_at), "text": chat.text, "response": chat.response,
            "images": [image.model_dump(mode="json") for image in chat.images],
            "modality": "image" if chat.images else "text",
            "source_topic": at.topic if at else None, "source_partition": at.partition if at else None,
            "source_offset": at.offset if at else None}


def _verdict_row(v: Verdict, at: SourceRef) -> dict[str, Any]:
    return {"event_id": v.event_id, "topic": at.topic, "partition": at.partition, "offset": at.offset,
            "status": str(v.status), "request_harmful": v.request_harmful, "response_harmful": v.response_harmful,
            "request_score": v.request_score, "response_score": v.response_score, "reasoning": v.reasoning,
            "model_name": v.model.name, "model_version": v.model.version, "policy_version": v.policy_version,
            "decided_by": v.decided_by, "cache_hit": v.cache_hit, "error_code": v.error.code if v.error else None,
            "timings_ms": dict(v.timings_ms), "stages": [s.model_dump(mode="json") for s in v.stages],
            "produced_at": utc(v.produced_at)}


def _chat_event(row: Any) -> ChatEvent:
    return ChatEvent(event_id=row["event_id"], conversation_id=row["conversation_id"], tenant=row["tenant"],
                     created_at=utc(row["created_at"]), text=row["text"], response=row["response"],
                     images=[ImageRef(**image) for image in row["images"]])


def _event_at(row: Any) -> SourceRef | None:
    if row["source_topic"] is None:
        return None
    return SourceRef(topic=row["source_topic"], partition=row["source_partition"], offset=row["source_offset"])


def _verdict(v: Any, event: Any) -> Verdict:
    """The stored verdict as the model it was (what the page shows; the error message is not kept)."""
    status = VerdictStatus(v["status"])
    return Verdict.model_construct(
        event_id=v["event_id"], conversation_id=event["conversation_id"], tenant=event["tenant"], status=status,
        request_harmful=v["request_harmful"], response_harmful=v["response_harmful"],
        request_score=v["request_score"], response_score=v["response_score"], reasoning=v["reasoning"],
        model=ModelRef(name=v["model_name"], version=v["model_version"]), policy_version=v["policy_version"],
        decided_by=v["decided_by"], cache_hit=v["cache_hit"], timings_ms=v["timings_ms"],
        stages=[StageVerdict(**s) for s in v["stages"]], produced_at=utc(v["produced_at"]),
        error=ErrorInfo(code=v["error_code"], message="") if v["error_code"] else None,
        source=SourceRef(topic=event["source_topic"], partition=event["source_partition"],
                         offset=event["source_offset"]) if event["source_topic"] else None,
    )


def _audit_label(r: Any) -> AuditLabel:
    verdict = (SourceRef(topic=r["topic"], partition=r["partition"], offset=r["offset"])
               if r["topic"] is not None else None)
    event = (SourceRef(topic=r["source_topic"], partition=r["source_partition"], offset=r["source_offset"])
             if r["source_topic"] is not None else None)
    return AuditLabel(event_id=r["event_id"], request_harmful=r["request_harmful"],
                      response_harmful=r["response_harmful"], labeller=r["reviewer"],
                      labelled_at=utc(r["labelled_at"]), note=r["note"], verdict=verdict, event=event,
                      random_sample=r["random_sample"])
