"""The commit rule, directly: the commit point never passes an unanswered offset."""

from __future__ import annotations

import random

from workers.commit import OffsetTracker


def test_out_of_order_answers_commit_only_the_contiguous_prefix() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    for offset in range(10, 15):
        tracker.polled("p0", offset)
    assert tracker.to_commit() == {"p0": 10}
    tracker.answered("p0", 12)
    tracker.answered("p0", 13)
    assert tracker.to_commit() == {"p0": 10}
    tracker.answered("p0", 10)
    assert tracker.to_commit() == {"p0": 11}
    tracker.answered("p0", 11)
    tracker.answered("p0", 14)
    assert tracker.to_commit() == {"p0": 15}


def test_a_commit_point_is_reported_once_until_it_moves() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.polled("p0", 0)
    tracker.answered("p0", 0)
    tracker.committed(tracker.to_commit())
    assert tracker.to_commit() == {}
    tracker.polled("p0", 1)
    assert tracker.to_commit() == {}  # 1 is unanswered: the point is still 1
    tracker.answered("p0", 1)
    assert tracker.to_commit() == {"p0": 2}


def test_revoked_partitions_are_forgotten_and_late_answers_ignored() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.polled("p0", 5)
    tracker.polled("p1", 7)
    tracker.forget(["p0"])
    tracker.answered("p0", 5)
    assert tracker.to_commit() == {"p1": 7}
    assert tracker.to_commit(["p0"]) == {}
    assert tracker.unanswered_count() == 1


def test_random_completion_orders_never_commit_past_an_unanswered_offset() -> None:
    rng = random.Random(7)
    for _ in range(200):
        tracker: OffsetTracker[int] = OffsetTracker()
        offsets = {p: list(range(rng.randint(1, 30))) for p in range(3)}
        pending = [(p, o) for p, os in offsets.items() for o in os]
        for p, o in pending:
            tracker.polled(p, o)
        rng.shuffle(pending)
        answered: set[tuple[int, int]] = set()
        for p, o in pending:
            tracker.answered(p, o)
            answered.add((p, o))
            for partition, point in tracker.to_commit().items():
                assert all((partition, below) in answered for below in range(point))
                assert point == len(offsets[partition]) or (partition, point) not in answered


def test_the_running_unanswered_count_matches_the_partitions() -> None:
    """unanswered_count() is kept as a running total (it is read on every answer): repeats, late answers
    and forgotten partitions must not move it away from the per-partition sets."""
    rng = random.Random(7)
    tracker: OffsetTracker[str] = OffsetTracker()
    for _ in range(3000):
        partition, offset = rng.choice(["p0", "p1", "p2"]), rng.randrange(40)
        step = rng.random()
        if step < 0.5:
            tracker.polled(partition, offset)  # a redelivery polls an offset twice
        elif step < 0.97:
            tracker.answered(partition, offset)  # answers for offsets never polled or already answered too
        else:
            tracker.forget([partition])
        assert tracker.unanswered_count() == tracker.unanswered_count(["p0", "p1", "p2"])
