"""Records as platforms publish them, compressed by librdkafka (confluent-kafka), are answered like any other."""

from __future__ import annotations

import asyncio
from collections import Counter

from confluent_kafka import KafkaError, Message, Producer

from schemas.events import ChatEvent, VerdictStatus
from tests.conftest import running_worker, verdicts_for
from tests.factories import BENIGN, event
from tests.kafka_io import QUIET_S
from tests.waiting import wait_until
from topics.registry import TopicNames
from workers.settings import WorkerSettings
from workers.worker import Worker

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
PER_CODEC = 6  # one key per codec: the events of a codec share a batch, so librdkafka compresses them together


def publish(bootstrap_servers: str, topic: str, codec: str, events: list[ChatEvent]) -> None:
    """Publish with librdkafka's producer and `compression.type`, waiting for every delivery report."""
    failures: list[KafkaError] = []

    def delivered(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            failures.append(error)

    producer = Producer({"bootstrap.servers": bootstrap_servers, "compression.type": codec, "linger.ms": 20})
    for e in events:
        producer.produce(topic, e.model_dump_json().encode(), key=e.conversation_id.encode(), on_delivery=delivered)
    assert producer.flush(30) == 0, f"{codec}: records still unsent after 30s"
    assert not failures, f"{codec}: {failures}"


def codec_errors(worker: Worker) -> float:
    value = worker.metrics.registry.get_sample_value("guardstream_poll_errors_total", {"error": "UnsupportedCodecError"})
    return value or 0


def verdicts_sent(worker: Worker) -> float:
    return sum(sample.value for metric in worker.metrics.verdicts_out.collect() for sample in metric.samples
               if sample.name.endswith("_total"))


async def test_events_compressed_with_every_librdkafka_codec_get_exactly_one_verdict(
    settings: WorkerSettings, lite_guard
) -> None:
    topic = TopicNames(settings.kafka.topic_prefix).events
    codec_of: dict[str, str] = {}
    for codec in CODECS:
        events = [event(f"{BENIGN[i % len(BENIGN)]} ({codec} {i})", conversation=f"conv-{codec}")
                  for i in range(PER_CODEC)]
        await asyncio.to_thread(publish, settings.kafka.bootstrap_servers, topic, codec, events)
        codec_of.update({e.event_id: codec for e in events})
    async with running_worker(settings, lite_guard) as worker:
        await wait_until(lambda: codec_errors(worker) or verdicts_sent(worker) >= len(codec_of), timeout_s=90,
                         what="every event answered, or a batch the consumer has no codec for")
        assert not codec_errors(worker), "the consumer met a compression codec it cannot read (aiokafka's codec extras)"
        verdicts = await verdicts_for(settings, len(codec_of), settle_s=QUIET_S)
    assert Counter(v.event_id for v in verdicts) == Counter(list(codec_of))
    assert Counter(codec_of[v.event_id] for v in verdicts) == dict.fromkeys(CODECS, PER_CODEC)
    assert all(v.status is VerdictStatus.OK for v in verdicts)
