"""The review store's tables (SQLAlchemy Core). The migrations in `console/migrations` create them; a test
checks that the two agree."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData()

events = Table(
    "events", metadata,
    Column("event_id", String(256), primary_key=True),
    Column("conversation_id", String(256), nullable=False),
    Column("tenant", String(256), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("text", Text, nullable=False),
    Column("response", Text, nullable=True),
    Column("images", JSON, nullable=False),  # the event's ImageRefs, as JSON
    Column("modality", String(8), nullable=False),  # text | image
    Column("source_topic", String(256), nullable=True),
    Column("source_partition", Integer, nullable=True),
    Column("source_offset", BigInteger, nullable=True),
)

verdicts = Table(
    "verdicts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(256), ForeignKey("events.event_id"), nullable=False, index=True),
    Column("topic", String(256), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("request_harmful", Boolean, nullable=True),
    Column("response_harmful", Boolean, nullable=True),
    Column("request_score", Float, nullable=True),
    Column("response_score", Float, nullable=True),
    Column("reasoning", Text, nullable=False),
    Column("model_name", Text, nullable=False),
    Column("model_version", Text, nullable=False),
    Column("policy_version", Text, nullable=False),
    Column("decided_by", Text, nullable=True),
    Column("cache_hit", Boolean, nullable=False),
    Column("error_code", String(64), nullable=True),
    Column("timings_ms", JSON, nullable=False),
    Column("stages", JSON, nullable=False),
    Column("produced_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("topic", "partition", "offset", name="verdicts_at_coordinates"),
)

items = Table(
    "queue_items", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(256), ForeignKey("events.event_id"), nullable=False, unique=True),
    Column("reasons", JSON, nullable=False),
    Column("priority", Integer, nullable=False),
    Column("random_sample", Boolean, nullable=False),
    Column("reviews_wanted", Integer, nullable=False),
    Column("enqueued_at", DateTime(timezone=True), nullable=False),
    Column("done_at", DateTime(timezone=True), nullable=True),
    Column("claimed_by", String(256), nullable=True),
    Column("claimed_until", DateTime(timezone=True), nullable=True),
    Index("queue_items_open", "done_at", "priority", "enqueued_at"),
    Index("queue_items_random", "random_sample", "done_at"),
)

labels = Table(
    "labels", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("item_id", Integer, ForeignKey("queue_items.id"), nullable=False),
    Column("event_id", String(256), nullable=False),
    Column("reviewer", String(256), nullable=False),
    Column("request_harmful", Boolean, nullable=False),
    Column("response_harmful", Boolean, nullable=True),
    Column("note", Text, nullable=False),
    Column("labelled_at", DateTime(timezone=True), nullable=False),
    Column("verdict_id", Integer, ForeignKey("verdicts.id"), nullable=True),
    Column("publish_after", DateTime(timezone=True), nullable=False),
    Column("publishing_since", DateTime(timezone=True), nullable=True),
    Column("published_at", DateTime(timezone=True), nullable=True),
    Column("undone_at", DateTime(timezone=True), nullable=True),
    Index("labels_of_item", "item_id"),
    Index("labels_by_reviewer", "reviewer", "labelled_at"),
    Index("labels_to_publish", "published_at", "publish_after"),
    # one live label per reviewer and item: a double submit is refused, an undone label makes room
    Index("labels_one_live", "item_id", "reviewer", unique=True, postgresql_where=text("undone_at IS NULL"),
          sqlite_where=text("undone_at IS NULL")),
)

skips = Table(
    "skips", metadata,
    Column("item_id", Integer, ForeignKey("queue_items.id"), primary_key=True),
    Column("reviewer", String(256), primary_key=True),
    Column("skipped_at", DateTime(timezone=True), nullable=False),
)

reports = Table(
    "reports", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(256), nullable=False, index=True),
    Column("reporter", String(256), nullable=False),
    Column("reason", Text, nullable=False),
    Column("reported_at", DateTime(timezone=True), nullable=False),
)
