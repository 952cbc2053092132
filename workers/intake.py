"""Step 1: poll, fairly across partitions.

aiokafka's getmany() drains one partition's prefetched chunk (up to max_partition_fetch_bytes, thousands
of small events) before it returns a record of the next, so under a backlog one partition is answered
while the others wait, and their commit points stand still. Here each poll asks every unpaused
partition for its share of `max_records` first (starting from a different partition each time), then
hands the rest of the budget round to whoever still has records; only when no partition has anything
prefetched does it wait, up to `timeout_ms`, for the first records to arrive.

A paused partition is never named in a poll: aiokafka drops a paused partition's prefetched records when a
poll walks over them, and then fetches nothing for the others until the partition it still buffers is
read, so the partition that happened to be buffered when the worker resumed ran ahead of the rest.
"""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

Records = list[ConsumerRecord[bytes, bytes]]


class FairPoller:
    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self.consumer = consumer
        self._turn = 0

    async def poll(self, max_records: int, timeout_ms: int) -> Records:
        partitions = self._rotation()
        if not partitions:
            if self.consumer.assignment():  # all paused: nothing to read, and their buffers are kept
                return []
            # none assigned yet (the group is joining): the plain call waits for the assignment
            return _flat(await self.consumer.getmany(timeout_ms=timeout_ms, max_records=max_records))
        share = max(1, max_records // len(partitions))
        taken: Records = []
        for budget in (share, max_records):  # first each partition's share, then the rest to whoever has more
            for tp in partitions:
                room = min(budget, max_records - len(taken))
                if room <= 0:
                    return taken
                taken.extend(_flat(await self.consumer.getmany(tp, timeout_ms=0, max_records=room)))
        if taken or timeout_ms == 0:
            return taken
        return _flat(await self.consumer.getmany(*partitions, timeout_ms=timeout_ms, max_records=share))

    def _rotation(self) -> list[TopicPartition]:
        partitions = sorted(self.consumer.assignment() - self.consumer.paused())
        if not partitions:
            return []
        self._turn = (self._turn + 1) % len(partitions)
        return partitions[self._turn:] + partitions[:self._turn]


def _flat(polled: dict[TopicPartition, Records]) -> Records:
    return [record for batch in polled.values() for record in batch]
