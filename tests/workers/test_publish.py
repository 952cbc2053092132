"""Producing answers: every refusal of the broker is classified, retried or degraded, never dropped, and a
part of an answer the broker took is never sent again. Against the real broker; refusals are injected in
front of a real producer, because the local broker cannot be made to refuse on cue."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    RecordListTooLargeError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)
from aiokafka.partitioner import DefaultPartitioner

from schemas.events import DeadLetter, ModelRef, SourceRef, Verdict
from tests.factories import event
from tests.kafka_io import read_topic
from tests.waiting import wait_until
from topics.admin import create_topics
from topics.local_broker import LocalBroker
from topics.registry import TopicNames, topic_specs
from topics.settings import KafkaSettings
from workers.emit import ProduceFailure, Publisher, classify, cut, dead_letter, error_verdict
from workers.errors import ImageNotFound
from workers.metrics import WorkerMetrics
from workers.settings import LimitSettings


@pytest.mark.parametrize(
    ("error", "failure"),
    [
        (KafkaConnectionError(), ProduceFailure.TRANSIENT),
        (NotLeaderForPartitionError(), ProduceFailure.TRANSIENT),
        (KafkaTimeoutError(), ProduceFailure.TRANSIENT),
        (MessageSizeTooLargeError(), ProduceFailure.TOO_LARGE),
        (RecordListTooLargeError(), ProduceFailure.TOO_LARGE),
        (TopicAuthorizationFailedError(), ProduceFailure.PERMANENT),
        (UnknownTopicOrPartitionError(), ProduceFailure.PERMANENT),
    ],
)
def test_refusals_are_classified_by_what_a_retry_can_cure(error: KafkaError, failure: ProduceFailure) -> None:
    assert classify(error) is failure


class RefusingProducer(AIOKafkaProducer):  # type: ignore[misc]
    """A real producer that first refuses the sends to one topic with the given errors."""

    def __init__(self, topic: str, refusals: list[KafkaError], **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.refused_topic, self.refusals = topic, list(refusals)
        self.sent: list[str] = []

    async def send_and_wait(self, topic: str, value: bytes, **kwargs: object) -> object:
        if topic == self.refused_topic and self.refusals:
            raise self.refusals.pop(0)
        self.sent.append(topic)
        return await super().send_and_wait(topic, value, **kwargs)


def answer(names: TopicNames) -> tuple[Verdict, DeadLetter]:
    e = event("hello")
    error = ImageNotFound("s3://images/x.png: not found")
    verdict = error_verdict(e, error, ModelRef(name="m", version="1"), "1", {}).model_copy(
        update={"reasoning": "r" * 5_000})
    letter = dead_letter(SourceRef(topic=names.events, partition=0, offset=3), b"raw" * 10, error, e.event_id,
                         LimitSettings())
    return verdict, letter


async def publish_through(broker: LocalBroker, refusals: list[KafkaError], on: str) -> tuple[
        Publisher, RefusingProducer, TopicNames, asyncio.Task[None], Verdict, DeadLetter]:
    names = TopicNames(f"p-{uuid.uuid4().hex[:8]}.")
    topic = {"verdicts": names.verdicts, "dlq": names.dlq}[on]
    producer = RefusingProducer(topic, refusals, bootstrap_servers=broker.bootstrap_servers, acks="all")
    await producer.start()
    publisher = Publisher(producer, names, KafkaSettings(produce_backoff_max_s=0.2), WorkerMetrics())
    verdict, letter = answer(names)
    task = asyncio.create_task(publisher.publish(b"k", verdict, letter))
    return publisher, producer, names, task, verdict, letter


async def test_a_refused_verdict_never_sends_its_dead_letter_again(broker: LocalBroker) -> None:
    refusals: list[KafkaError] = [KafkaConnectionError(), NotLeaderForPartitionError()]
    publisher, producer, names, task, _, _ = await publish_through(broker, refusals, on="verdicts")
    await task
    await producer.stop()
    assert producer.sent == [names.dlq, names.verdicts]
    assert len(await read_topic(broker.bootstrap_servers, names.dlq, 1, settle_s=0.5)) == 1
    retries = publisher.metrics.registry.get_sample_value
    assert retries("guardstream_produce_retries_total", {"failure": "transient", "error": "KafkaConnectionError"}) == 1


async def test_a_permanent_refusal_stalls_visibly_and_the_answer_still_arrives(broker: LocalBroker) -> None:
    refusals: list[KafkaError] = [TopicAuthorizationFailedError()] * 4
    publisher, producer, names, task, verdict, _ = await publish_through(broker, refusals, on="verdicts")
    await wait_until(lambda: publisher.stalled == 1, what="the stall is reported")
    assert publisher.metrics.registry.get_sample_value("guardstream_produce_stalled") == 1
    await task  # once the broker takes it (the refusals run out), the stall clears
    await producer.stop()
    assert publisher.stalled == 0 and publisher.metrics.registry.get_sample_value("guardstream_produce_stalled") == 0
    [record] = await read_topic(broker.bootstrap_servers, names.verdicts, 1, settle_s=0.5)
    assert Verdict.model_validate_json(record.value).event_id == verdict.event_id


@pytest.mark.parametrize("on", ["verdicts", "dlq"])
async def test_a_record_too_large_is_sent_again_smaller_with_a_marker(broker: LocalBroker, on: str) -> None:
    publisher, producer, names, task, verdict, letter = await publish_through(broker, [MessageSizeTooLargeError()], on)
    await task
    await producer.stop()
    if on == "verdicts":
        [record] = await read_topic(broker.bootstrap_servers, names.verdicts, 1, settle_s=0.5)
        sent = Verdict.model_validate_json(record.value)
        assert sent.reasoning.startswith("r" * 1_000) and sent.reasoning.endswith("[cut: 4000 more characters]")
    else:
        [record] = await read_topic(broker.bootstrap_servers, names.dlq, 1, settle_s=0.5)
        sent = DeadLetter.model_validate_json(record.value)
        assert (sent.raw_value_b64, sent.raw_value_truncated, sent.raw_value_bytes) == ("", True, 30)
        assert (sent.reason, sent.source) == (letter.reason, letter.source)
    assert publisher.stalled == 0


class FirstSendRefused(AIOKafkaProducer):  # type: ignore[misc]
    """A real producer whose first send's delivery is refused by "the broker"."""

    def __init__(self, refusal: KafkaError | None, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.refusal = refusal

    async def send(self, topic: str, *args: object, **kwargs: object) -> asyncio.Future[object]:
        if self.refusal is None:
            return await super().send(topic, *args, **kwargs)
        failed: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        failed.set_exception(self.refusal)
        self.refusal = None
        return failed


def hello_verdicts(count: int, tag: str = "") -> list[Verdict]:
    return [error_verdict(event(f"hello {tag}{i}"), ImageNotFound("gone"), ModelRef(name="m", version="1"), "1", {})
            .model_copy(update={"reasoning": "r" * 1_500}) for i in range(count)]


@pytest.mark.parametrize("refusal", [None, NotLeaderForPartitionError(), MessageSizeTooLargeError()],
                         ids=["accepted", "refused", "too-large"])
async def test_answers_published_together_keep_their_keys_partition_and_arrive_once(
    broker: LocalBroker, refusal: KafkaError | None
) -> None:
    """publish_many hands every answer to the producer before it waits for any: each lands where its key
    puts it, a refused one is sent again on its own, none is lost or sent twice, and only the one refused
    as too large is made smaller."""
    names = TopicNames(f"p-{uuid.uuid4().hex[:8]}.")
    await create_topics(broker.bootstrap_servers, topic_specs(names, partitions=4))
    producer = FirstSendRefused(refusal, bootstrap_servers=broker.bootstrap_servers, acks="all")
    await producer.start()
    publisher = Publisher(producer, names, KafkaSettings(produce_backoff_max_s=0.2), WorkerMetrics())
    verdicts = hello_verdicts(40)
    keys = [f"conversation-{i % 13}".encode() for i in range(40)]
    errors = await publisher.publish_many([(key, v, None) for key, v in zip(keys, verdicts, strict=True)])
    await producer.stop()
    assert errors == [None] * 40
    records = await read_topic(broker.bootstrap_servers, names.verdicts, 40, settle_s=0.5)
    sent = {Verdict.model_validate_json(r.value).event_id: (r.key, r.partition, r.value) for r in records}
    assert len(records) == 40 and len(sent) == 40
    for n, (key, verdict) in enumerate(zip(keys, verdicts, strict=True)):
        got_key, partition, value = sent[verdict.event_id]
        assert (got_key, partition) == (key, DefaultPartitioner()(key, [0, 1, 2, 3], [0, 1, 2, 3]))
        shrunk = n == 0 and isinstance(refusal, MessageSizeTooLargeError)  # the first sent is the one refused
        assert Verdict.model_validate_json(value).reasoning == (cut("r" * 1_500, 1_000) if shrunk else "r" * 1_500)
    assert publisher.stalled == 0


async def test_many_groups_answering_at_once_are_all_delivered(broker: LocalBroker) -> None:
    """Hundreds of finished batches answer at the same moment (a zero-cost backend does this): every answer
    is taken, none times out waiting for the producer."""
    names = TopicNames(f"p-{uuid.uuid4().hex[:8]}.")
    await create_topics(broker.bootstrap_servers, topic_specs(names, partitions=4))
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all", request_timeout_ms=5_000)
    await producer.start()
    publisher = Publisher(producer, names, KafkaSettings(produce_backoff_max_s=0.2), WorkerMetrics())
    groups = [hello_verdicts(8, f"g{g}-") for g in range(300)]
    results = await asyncio.gather(*(publisher.publish_many([(f"c{i}".encode(), v, None) for i, v in enumerate(group)])
                                     for group in groups))
    await producer.stop()
    assert all(errors == [None] * 8 for errors in results)
    assert publisher.stalled == 0
    assert len(await read_topic(broker.bootstrap_servers, names.verdicts, 2_400, timeout_s=60, settle_s=0.5)) == 2_400
