"""Reading a topic from the beginning in tests, until a count is reached or time runs out."""

from __future__ import annotations

import time

from aiokafka import AIOKafkaConsumer, ConsumerRecord


class NotEnoughRecords(AssertionError):
    pass


async def read_topic(
    bootstrap_servers: str, topic: str, count: int, timeout_s: float = 60, settle_s: float = 0.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """At least `count` records (then `settle_s` more seconds of whatever else arrives)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap_servers, group_id=None,
                                auto_offset_reset="earliest")
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < count:
            if time.monotonic() > deadline:
                raise NotEnoughRecords(f"{topic}: {len(records)} of {count} records after {timeout_s}s")
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
        settle_until = time.monotonic() + settle_s
        while time.monotonic() < settle_until:
            for batch in (await consumer.getmany(timeout_ms=100)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()
