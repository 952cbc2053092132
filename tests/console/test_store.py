"""The review store on the real PostgreSQL (and the SQLite default): intake, the queue, labels and their
outbox, undo, reports, and what the quality page reads."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from console.migrate import current, downgrade, head, upgrade
from console.sampling import Reason
from console.store import LabelRefused, ReviewStore, make_engine
from console.tables import metadata
from schemas.events import SourceRef, StageVerdict
from tests.console.conftest import NOW, add, chat, incoming, verdict

LATER = NOW + timedelta(seconds=11)  # past the 10 s undo window


def test_migrations_create_exactly_the_tables_the_code_uses_and_go_back_down(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    upgrade(engine)
    assert current(engine) == head() == "0001"
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    assert differences == []
    assert {"labels_one_live", "labels_to_publish"} <= {i["name"] for i in inspect(engine).get_indexes("labels")}
    assert "queue_items_open" in {i["name"] for i in inspect(engine).get_indexes("queue_items")}
    downgrade(engine, "base")
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    upgrade(engine)
    assert current(engine) == "0001"
    engine.dispose()


def test_replicas_starting_together_migrate_an_empty_postgresql_database_once(empty_postgres: str) -> None:
    """Several consoles starting at once each run the migration (`console migrate`, as at start): one migrates,
    the others wait for it and find the schema up to date."""
    env = {**os.environ, "GUARDSTREAM_DATABASE_URL": empty_postgres}
    replicas = [subprocess.Popen([sys.executable, "-m", "guardstream", "console", "migrate"], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outcomes = [(p.wait(timeout=120), p.stderr.read()) for p in replicas]  # type: ignore[union-attr]
    assert [code for code, _ in outcomes] == [0, 0, 0], outcomes
    engine = make_engine(empty_postgres)
    assert current(engine) == head()
    engine.dispose()


def test_a_sampled_verdict_queues_its_event_once_and_later_verdicts_join_it(store: ReviewStore) -> None:
    event = chat("e1", "how do I pick a lock?")
    first = verdict("e1", harmful=True, score=0.6)
    assert add(store, event, first, offset=5, reasons=[Reason.NEAR_THRESHOLD]) == 1
    assert add(store, event, first, offset=5, reasons=[Reason.NEAR_THRESHOLD]) == 0  # delivered twice: stored once
    # judged again (a replay, another model): no rule fires, but the event is queued, so the verdict is kept
    store.add([incoming(verdict("e1", model="2"), 9, [])], {}, NOW)
    # an unsampled verdict of an unqueued event is not stored
    assert store.add([incoming(verdict("e2"), 10, [])], {"e2": (chat("e2"), None)}, NOW) == 0
    assert store.events_with_items(["e1", "e2"]) == {"e1"}
    item = store.item(store.next_item("alice", NOW))
    assert item is not None and item.event.text == "how do I pick a lock?"
    assert [v.verdict.model.version for v in item.verdicts] == ["1", "2"]
    assert [v.at.offset for v in item.verdicts] == [5, 9]
    assert item.reasons == ["near_threshold"]


def test_stages_error_codes_and_timings_come_back_as_they_were_stored(store: ReviewStore) -> None:
    stages = [StageVerdict(name="lite", request_harmful=False, request_score=0.4),
              StageVerdict(name="transformers", request_harmful=True)]
    add(store, chat("e1"), verdict("e1", harmful=True, stages=stages), 1, [Reason.DISAGREEMENT, Reason.ESCALATED])
    add(store, chat("e2", images=2), verdict("e2", error="image_not_found"), 2, [Reason.ERROR])
    first = store.item(1)
    assert first is not None and first.verdicts[0].verdict.stages == stages
    assert first.verdicts[0].verdict.timings_ms == {"guard": 12.5}
    assert first.reasons == ["disagreement", "escalated"]
    second = store.item(2)
    assert second is not None and second.verdicts[0].verdict.error.code == "image_not_found"
    assert [i.uri for i in second.event.images] == ["file:///img/e2-0.png", "file:///img/e2-1.png"]


def test_the_queue_serves_reports_and_errors_first_and_each_item_to_one_reviewer(store: ReviewStore) -> None:
    add(store, chat("random"), verdict("random"), 1, [Reason.RANDOM], NOW)
    add(store, chat("near"), verdict("near"), 2, [Reason.NEAR_THRESHOLD], NOW + timedelta(seconds=1))
    add(store, chat("error"), verdict("error", error="backend_failed"), 3, [Reason.ERROR], NOW + timedelta(seconds=2))
    assert store.report("random", "platform-a", "user says it is spam", NOW) is True
    assert store.report("unknown", "platform-a", "", NOW) is False
    order = [store.item(store.next_item(who, NOW)).event.event_id for who in ("a", "b", "c")]  # type: ignore[union-attr]
    assert order == ["random", "error", "near"]  # reported first, then the error, each claimed by one reviewer
    assert store.next_item("d", NOW) is None
    assert store.next_item("d", NOW + timedelta(seconds=61)) is not None  # a claim runs out
    assert store.item(1).reasons == ["reported", "random"]  # type: ignore[union-attr]


def test_a_label_waits_out_the_undo_window_then_is_published_once(store: ReviewStore) -> None:
    add(store, chat("e1", response="Sure, here is how."), verdict("e1", response_harmful=False), 7, [Reason.RANDOM])
    with pytest.raises(LabelRefused, match="response"):
        store.label(1, "alice", True, None, "", NOW)
    store.label(1, "alice", True, True, "gives instructions", NOW)
    with pytest.raises(LabelRefused, match="already labelled"):
        store.label(1, "alice", False, False, "", NOW)
    assert store.claim_due_labels(NOW + timedelta(seconds=5)) == []
    due = store.claim_due_labels(LATER)
    assert len(due) == 1
    label = due[0].label
    assert (label.event_id, label.labeller, label.request_harmful, label.response_harmful, label.note) == (
        "e1", "alice", True, True, "gives instructions")
    assert label.verdict == SourceRef(topic="moderation.verdicts", partition=0, offset=7)
    assert label.event == SourceRef(topic="chat.events", partition=0, offset=0)
    assert store.claim_due_labels(LATER) == []  # claimed
    store.published([due[0].id], LATER)
    assert store.claim_due_labels(LATER + timedelta(hours=1)) == []  # published: never again
    assert store.next_item("alice", LATER) is None and store.item(1).done  # type: ignore[union-attr]


def test_a_failed_publication_or_a_dead_publisher_leaves_the_label_to_be_sent_again(store: ReviewStore) -> None:
    add(store, chat("e1"), verdict("e1"), 1, [Reason.RANDOM])
    store.label(1, "alice", False, None, "", NOW)
    first = store.claim_due_labels(LATER)
    store.release([d.id for d in first])
    assert [d.id for d in store.claim_due_labels(LATER)] == [d.id for d in first]
    assert store.claim_due_labels(LATER + timedelta(seconds=30)) == []
    assert len(store.claim_due_labels(LATER + timedelta(seconds=61))) == 1  # a stale claim is taken over


def test_undo_withdraws_an_unpublished_label_and_supersedes_a_published_one(store: ReviewStore) -> None:
    add(store, chat("e1"), verdict("e1"), 1, [Reason.RANDOM])
    add(store, chat("e2"), verdict("e2"), 2, [Reason.RANDOM])
    store.label(1, "alice", True, None, "", NOW)
    undone = store.undo_last("alice", NOW + timedelta(seconds=2))
    assert undone is not None and undone.item_id == 1 and undone.withdrawn
    assert store.claim_due_labels(LATER) == []  # withdrawn: never published
    assert store.next_item("alice", NOW) == 1  # back to the reviewer who undid it
    store.label(1, "alice", False, None, "", NOW + timedelta(seconds=3))
    due = store.claim_due_labels(LATER + timedelta(seconds=3))
    assert [d.label.request_harmful for d in due] == [False]
    store.published([d.id for d in due], LATER)
    undone = store.undo_last("alice", LATER + timedelta(seconds=1))
    assert undone is not None and not undone.withdrawn
    assert store.item(1).done is False  # type: ignore[union-attr]
    store.label(1, "alice", True, None, "on second thought", LATER + timedelta(seconds=2))
    again = store.claim_due_labels(LATER + timedelta(seconds=20))
    assert [(d.label.request_harmful, d.label.note) for d in again] == [(True, "on second thought")]
    assert again[0].label.labelled_at > due[0].label.labelled_at  # the later label wins in the trainer
    assert store.undo_last("bob", NOW) is None


def test_two_reviewers_who_disagree_are_both_kept_and_counted(store: ReviewStore) -> None:
    store.double_review_rate = 1.0
    add(store, chat("e1"), verdict("e1"), 1, [Reason.RANDOM])
    store.label(1, "alice", True, None, "", NOW)
    assert store.item(1).done is False  # type: ignore[union-attr]
    assert store.next_item("bob", NOW) == 1
    store.label(1, "bob", False, None, "not harmful to me", NOW)
    item = store.item(1)
    assert item is not None and item.done and item.disputed
    assert [(x.reviewer, x.request_harmful) for x in item.live_labels] == [("alice", True), ("bob", False)]
    assert store.agreement_pairs()["request"] == [(True, False)]
    assert store.queue_stats(NOW).disputed == [1]


def test_skipped_items_are_not_offered_again_to_who_skipped_them(store: ReviewStore) -> None:
    add(store, chat("e1"), verdict("e1"), 1, [Reason.RANDOM])
    assert store.next_item("alice", NOW) == 1
    store.skip(1, "alice", NOW)
    assert store.next_item("alice", NOW) is None
    assert store.next_item("bob", NOW) == 1


def test_quality_reads_only_the_random_sample_and_the_latest_label(store: ReviewStore) -> None:
    add(store, chat("r1", images=1), verdict("r1", harmful=True), 1, [Reason.RANDOM])
    add(store, chat("r2", response="ok"), verdict("r2", harmful=False, response_harmful=False), 2, [Reason.RANDOM])
    add(store, chat("n1"), verdict("n1", harmful=True), 3, [Reason.NEAR_THRESHOLD])
    add(store, chat("x1"), verdict("x1", error="backend_failed"), 4, [Reason.RANDOM, Reason.ERROR])
    store.label(1, "alice", False, None, "", NOW)
    store.label(1, "bob", True, None, "", NOW + timedelta(seconds=1))  # the latest label of r1
    store.label(2, "alice", False, True, "", NOW)
    store.label(3, "alice", False, None, "", NOW)  # not random: not in the estimate
    store.label(4, "alice", True, None, "", NOW)  # an error verdict predicts nothing
    judged = sorted((j.task, j.modality, j.predicted, j.truth) for j in store.judged())
    assert judged == [("request", "image", True, True), ("request", "text", False, False),
                      ("response", "text", False, True)]


def test_stats_count_the_open_queue_and_its_age(store: ReviewStore) -> None:
    add(store, chat("e1"), verdict("e1"), 1, [Reason.RANDOM, Reason.NEAR_THRESHOLD], NOW)
    add(store, chat("e2"), verdict("e2"), 2, [Reason.ERROR], NOW + timedelta(seconds=30))
    store.label(2, "alice", True, None, "", NOW)
    stats = store.queue_stats(NOW + timedelta(seconds=100))
    assert (stats.open, stats.done, stats.labels, stats.oldest_open_s) == (1, 1, 1, 100.0)
    assert stats.by_reason == {"near_threshold": 1, "random": 1}
    assert store.open_items(NOW + timedelta(seconds=100)) == (1, 100.0)


def test_two_reviewers_asking_at_once_get_different_items(store: ReviewStore) -> None:
    for n in range(20):
        add(store, chat(f"e{n}"), verdict(f"e{n}"), n, [Reason.RANDOM])
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda who: store.next_item(f"r{who}", NOW), range(8)))
    assert None not in got and len(set(got)) == 8


def test_random_items_are_served_first_come_whatever_else_they_are(store: ReviewStore) -> None:
    add(store, chat("r-plain"), verdict("r-plain"), 1, [Reason.RANDOM], NOW)
    add(store, chat("r-hard"), verdict("r-hard"), 2, [Reason.RANDOM, Reason.ERROR], NOW + timedelta(seconds=1))
    add(store, chat("hard"), verdict("hard"), 3, [Reason.ERROR], NOW + timedelta(seconds=2))
    order = [store.item(store.next_item(who, NOW)).event.event_id for who in ("a", "b", "c")]  # type: ignore[union-attr]
    assert order == ["hard", "r-plain", "r-hard"]


def test_a_report_on_a_reviewed_event_asks_for_one_more_review(store: ReviewStore) -> None:
    add(store, chat("e1"), verdict("e1"), 1, [Reason.NEAR_THRESHOLD])
    store.label(1, "alice", False, None, "", NOW)
    assert store.item(1).done  # type: ignore[union-attr]
    assert store.report("e1", "platform-a", "still offensive", NOW)
    item = store.item(1)
    assert item is not None and not item.done and item.reviews_wanted == 2 and item.reasons[0] == "reported"
    assert store.next_item("bob", NOW) == 1


def test_times_are_kept_in_utc_whatever_zone_they_came_in(store: ReviewStore) -> None:
    paris = timezone(timedelta(hours=1))
    event = chat("e1").model_copy(update={"created_at": datetime(2026, 11, 30, 13, 0, tzinfo=paris)})
    add(store, event, verdict("e1", produced_at=datetime(2026, 11, 30, 13, 0, 5, tzinfo=paris)), 1, [Reason.RANDOM])
    item = store.item(1)
    assert item is not None and item.event.created_at == datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    assert item.event.created_at.tzinfo == UTC
    assert item.verdicts[0].verdict.produced_at == datetime(2026, 11, 30, 12, 0, 5, tzinfo=UTC)


def test_a_label_says_whether_its_event_was_chosen_by_the_random_sample(store: ReviewStore) -> None:
    """The trainer's gate judges the random-sample part of its held-out labels on its own: each published label
    says whether the uniform random rule chose its event, also when that rule fired after a report queued it."""
    add(store, chat("random"), verdict("random"), 1, [Reason.RANDOM])
    add(store, chat("unsure"), verdict("unsure", score=0.6), 2, [Reason.NEAR_THRESHOLD])
    add(store, chat("reported"), verdict("reported"), 3, [Reason.REPORTED])
    add(store, chat("reported"), verdict("reported", model="2"), 4, [Reason.RANDOM])  # its next verdict: sampled
    for item_id in (1, 2, 3):
        store.label(item_id, "alice", True, None, "", NOW)
    due = store.claim_due_labels(LATER)
    assert {d.label.event_id: d.label.random_sample for d in due} == {"random": True, "unsure": False,
                                                                      "reported": True}
    assert store.item(3).random_sample  # type: ignore[union-attr]  # the quality page counts it too
