"""Task supervision: the worker's background tasks (answering a group of records, fetching an event's images,
storing a batch's results, retiring a model), kept until they end and cancelled at shutdown.

Tasks answer their records' failures themselves; one that still raised is logged and counted, and the
offsets it left unanswered are remembered, since their partitions stop committing: /readyz reports them
until they are answered or their partitions are revoked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any

import structlog
from aiokafka import ConsumerRecord, TopicPartition

from workers.commit import OffsetTracker
from workers.metrics import WorkerMetrics

log = structlog.get_logger("guardstream.worker")


class TaskSupervisor:
    def __init__(self, tracker: OffsetTracker[TopicPartition], metrics: WorkerMetrics) -> None:
        self.tracker = tracker
        self.metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()
        self._stalled_by_failures: set[tuple[TopicPartition, int]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None], records: Sequence[ConsumerRecord[bytes, bytes]] = ()) -> None:
        """Run `coro` as a task of its own; `records` are those it answers (none for the worker's own tasks)."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._reap(done, records))

    def stalled(self) -> int:
        """How many offsets failed tasks left unanswered that are still ours and still unanswered."""
        self._stalled_by_failures = {(tp, o) for tp, o in self._stalled_by_failures if self.tracker.is_unanswered(tp, o)}
        return len(self._stalled_by_failures)

    async def cancel_all(self) -> None:
        """Cancel every task still running and wait for them to end."""
        pending = set(self._tasks)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def _reap(self, task: asyncio.Task[None], records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        """A task's end. Tasks answer their records' failures themselves; one that still raised is logged and
        counted, and if it left offsets unanswered, their partitions stop committing and /readyz says so."""
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        self.metrics.task_failures.labels("record" if records else "worker").inc()
        places = [(TopicPartition(r.topic, r.partition), r.offset) for r in records]
        stalled = [place for place in places if self.tracker.is_unanswered(*place)]
        self._stalled_by_failures.update(stalled)
        where = {"partition": records[0].partition, "offset": records[0].offset, "records": len(records)} if records else {}
        log.error("task_failed", **where, offsets_stalled=len(stalled), exc_info=task.exception())
