"""Reading topics and a group's offsets in tests.

A reader waits for what a test expects (a count, every event id), then, when the test claims that
nothing more comes (exactly one answer per event), keeps reading until the topic has been quiet for
`settle_s`, so a late duplicate is seen instead of cut off.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

Records = list[ConsumerRecord[bytes, bytes]]

QUIET_S = 1.5  # how long a topic stays silent before a test concludes that nothing more is coming


class NotEnoughRecords(AssertionError):
    pass


async def read_until(
    bootstrap_servers: str, topic: str, done: Callable[[Records], bool], timeout_s: float = 60,
    settle_s: float = 0.0, what: str = "",
) -> Records:
    """The topic's records from the beginning, once `done(records)` holds and no record has arrived for
    `settle_s` seconds; NotEnoughRecords if that takes longer than `timeout_s`."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap_servers, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    records: Records = []
    deadline = time.monotonic() + timeout_s
    last_arrival = time.monotonic()
    try:
        while not (done(records) and time.monotonic() - last_arrival >= settle_s):
            if time.monotonic() > deadline:
                state = "never went quiet" if done(records) else f"{what or 'condition'} not met"
                raise NotEnoughRecords(f"{topic}: {state} with {len(records)} records after {timeout_s}s")
            for batch in (await consumer.getmany(timeout_ms=50)).values():
                if batch:
                    records.extend(batch)
                    last_arrival = time.monotonic()
        return records
    finally:
        await consumer.stop()


async def read_topic(
    bootstrap_servers: str, topic: str, count: int, timeout_s: float = 60, settle_s: float = 0.0
) -> Records:
    """At least `count` records (and, with `settle_s`, everything else until the topic is quiet)."""
    return await read_until(bootstrap_servers, topic, lambda records: len(records) >= count, timeout_s, settle_s,
                            what=f"{count} records")


def partition_ends(records: Records, partitions: int) -> dict[int, int]:
    """One past the last record of each partition among `records` (0 for a partition with none). Read from
    the records because the local broker's ListOffsets answers the last batch's base offset plus one."""
    ends = dict.fromkeys(range(partitions), 0)
    for record in records:
        ends[record.partition] = max(ends[record.partition], record.offset + 1)
    return ends


async def committed_offsets(bootstrap_servers: str, group_id: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offset of each partition (0 where it committed none)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=group_id, enable_auto_commit=False)
    await consumer.start()
    try:
        out = {}
        for p in range(partitions):
            offset = await consumer.committed(TopicPartition(topic, p))
            out[p] = offset if offset is not None else 0
        return out
    finally:
        await consumer.stop()
