"""Step 8: which offsets may be committed.

Invariant: for every partition, the committed offset is never greater than the offset of any
record that was polled but not yet answered (a verdict or a dead letter produced and acknowledged).
Records complete out of order, so the commit point is the lowest unanswered offset, or one past the
highest polled offset when everything polled is answered. A crash therefore repeats work, never skips it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

P = TypeVar("P")


@dataclass
class PartitionProgress:
    unanswered: set[int] = field(default_factory=set)
    next_offset: int | None = None  # one past the highest offset polled
    committed: int | None = None

    def commit_point(self) -> int | None:
        if self.next_offset is None:
            return None
        return min(self.unanswered) if self.unanswered else self.next_offset


class OffsetTracker(Generic[P]):
    """Tracks polled and answered offsets per partition; P is the partition handle (TopicPartition)."""

    def __init__(self) -> None:
        self._partitions: dict[P, PartitionProgress] = {}
        self._unanswered = 0  # over all partitions, kept as offsets come and go (read on every answer)

    def polled(self, partition: P, offset: int) -> None:
        progress = self._partitions.setdefault(partition, PartitionProgress())
        if offset not in progress.unanswered:
            progress.unanswered.add(offset)
            self._unanswered += 1
        if progress.next_offset is None or offset + 1 > progress.next_offset:
            progress.next_offset = offset + 1

    def answered(self, partition: P, offset: int) -> None:
        progress = self._partitions.get(partition)
        if progress is not None and offset in progress.unanswered:  # a revoked partition's are no longer ours
            progress.unanswered.discard(offset)
            self._unanswered -= 1

    def is_unanswered(self, partition: P, offset: int) -> bool:
        progress = self._partitions.get(partition)
        return progress is not None and offset in progress.unanswered

    def unanswered_count(self, partitions: Iterable[P] | None = None) -> int:
        if partitions is None:
            return self._unanswered
        return sum(len(self._partitions[p].unanswered) for p in partitions if p in self._partitions)

    def to_commit(self, partitions: Iterable[P] | None = None) -> dict[P, int]:
        """Commit points that moved since the last `committed()` call."""
        keys = list(self._partitions) if partitions is None else list(partitions)
        out: dict[P, int] = {}
        for p in keys:
            progress = self._partitions.get(p)
            point = progress.commit_point() if progress else None
            if point is not None and point != progress.committed:  # type: ignore[union-attr]
                out[p] = point
        return out

    def committed(self, points: dict[P, int]) -> None:
        for p, offset in points.items():
            if p in self._partitions:
                self._partitions[p].committed = offset

    def forget(self, partitions: Iterable[P]) -> None:
        for p in partitions:
            progress = self._partitions.pop(p, None)
            if progress is not None:
                self._unanswered -= len(progress.unanswered)
