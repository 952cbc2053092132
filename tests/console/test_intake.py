"""The console's intake against the local broker: which verdicts the sampling policy queues, that their
events are read at their coordinates, and that bad records are skipped, counted, and committed past."""

from __future__ import annotations

import asyncio
import re

import psycopg
from aiokafka import AIOKafkaProducer
from pydantic import SecretStr

from console.service import ConsoleService
from console.settings import ConsoleSettings
from schemas.events import ChatEvent, SourceRef, StageVerdict, Verdict
from tests.console.conftest import POSTGRES_ADMIN, REPORTER, chat, publish_judged, running_console, verdict
from tests.console.http import Client
from tests.waiting import wait_until
from topics.local_broker import LocalBroker
from topics.registry import TopicNames


def _metric(service: ConsoleService, name: str, **labels: str) -> float | None:
    return service.metrics.registry.get_sample_value(name, labels)


async def test_the_policy_queues_errors_near_threshold_and_disagreements_with_their_events(
        broker: LocalBroker, topics: TopicNames, console_settings: ConsoleSettings) -> None:
    disagreeing = [StageVerdict(name="lite", request_harmful=False, request_score=0.3),
                   StageVerdict(name="transformers", request_harmful=True)]
    agreeing = [StageVerdict(name="lite", request_harmful=True, request_score=0.7),
                StageVerdict(name="transformers", request_harmful=True)]
    judged = [
        (chat("err", "an image that could not be fetched", images=1), verdict("err", error="image_not_found")),
        (chat("near", "borderline"), verdict("near", harmful=True, score=0.6)),
        (chat("calm", "good morning"), verdict("calm", score=0.1)),
        (chat("split", "a cascade split"), verdict("split", harmful=True, score=None, stages=disagreeing)),
        (chat("esc", "a cascade agreed"), verdict("esc", harmful=True, score=None, stages=agreeing)),
    ]
    await publish_judged(broker.bootstrap_servers, topics, judged)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    await producer.start()
    await producer.send_and_wait(topics.verdicts, b"{not a verdict")
    # a verdict whose coordinates hold another event: never queued with the wrong text
    wrong = verdict("liar", score=0.6).model_copy(update={"source": SourceRef(topic=topics.events, partition=0,
                                                                              offset=0)})
    await producer.send_and_wait(topics.verdicts, wrong.model_dump_json().encode(), partition=0)
    await producer.stop()
    async with running_console(console_settings) as service:
        await wait_until(lambda: service.intake.seen >= len(judged) + 2, 60, "every verdict read")
        store = service.store
        queued = store.events_with_items([e.event_id for e, _ in judged] + ["liar"])
        assert queued == {"err", "near", "split", "esc"}
        items = {e.event_id: store.item_of(e.event_id) for e, _ in judged if store.item_of(e.event_id)}
        assert {event_id: item.reasons for event_id, item in items.items()} == {
            "err": ["error"], "near": ["near_threshold"], "split": ["disagreement", "escalated"], "esc": ["escalated"]}
        assert {event_id: item.event.text for event_id, item in items.items()} == {e.event_id: e.text for e, _ in
                                                                                   judged if e.event_id in items}
        assert _metric(service, "guardstream_console_verdicts_undecodable_total") == 1
        assert _metric(service, "guardstream_console_events_unreadable_total", reason="event_mismatch") == 1
        assert _metric(service, "guardstream_console_queued_total", reason="error") == 1


async def test_a_restarted_console_resumes_after_what_it_stored(
        broker: LocalBroker, topics: TopicNames, console_settings: ConsoleSettings) -> None:
    await publish_judged(broker.bootstrap_servers, topics, [(chat("a"), verdict("a", error="backend_failed"))])
    async with running_console(console_settings) as service:
        await wait_until(lambda: service.intake.seen >= 1, 60, "the first verdict read")
    await publish_judged(broker.bootstrap_servers, topics, [(chat("b"), verdict("b", error="backend_failed"))])
    async with running_console(console_settings) as service:
        await wait_until(lambda: service.intake.seen >= 1, 60, "the second verdict read")
        assert service.intake.seen == 1  # the first was committed: not read again
        assert service.store.events_with_items(["a", "b"]) == {"a", "b"}


async def test_on_postgresql_a_nul_is_kept_visible_and_a_record_the_database_refuses_is_skipped(
        broker: LocalBroker, topics: TopicNames, console_settings: ConsoleSettings, empty_postgres: str) -> None:
    console_settings.database_url = SecretStr(empty_postgres)
    await publish_judged(broker.bootstrap_servers, topics, [
        (chat("nul", "hi\x00there", response="ok\x00"), verdict("nul", error="x", reasoning="why\x00")),
        (chat("fine", "a fine event"), verdict("fine", error="x"))])
    await publish_judged(broker.bootstrap_servers, topics, [(chat("nan", "poison"), verdict("nan", error="x"))],
                         tamper=lambda v: v.replace('"guard":12.5', '"guard":NaN'))  # PostgreSQL's JSON has no NaN
    await publish_judged(broker.bootstrap_servers, topics, [(chat("after", "after the poison"),
                                                             verdict("after", error="x"))])
    async with running_console(console_settings) as service:
        await wait_until(lambda: service.intake.seen >= 4, 60, "every verdict read and committed")
        store = service.store
        assert store.events_with_items(["nul", "fine", "nan", "after"]) == {"nul", "fine", "after"}
        assert _metric(service, "guardstream_console_verdicts_refused_total") == 1
        nul = store.item_of("nul")
        assert nul is not None and (nul.event.text, nul.event.response) == ("hi\ufffdthere", "ok\ufffd")
        assert nul.verdicts[0].verdict.reasoning == "why\ufffd"


async def test_a_database_that_stops_answering_costs_no_verdict(
        broker: LocalBroker, topics: TopicNames, console_settings: ConsoleSettings, empty_postgres: str) -> None:
    console_settings.database_url = SecretStr(empty_postgres)
    database = empty_postgres.rsplit("/", 1)[1]
    async with running_console(console_settings) as service:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))
            await publish_judged(broker.bootstrap_servers, topics, [(chat("e1", "while the database was away"),
                                                                     verdict("e1", error="x"))])
            await wait_until(lambda: _metric(service, "guardstream_console_intake_errors_total", error="OperationalError"), 60,
                             "the intake noticed the database was gone")
            assert service.intake.seen == 0
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        await wait_until(lambda: service.intake.seen >= 1, 60, "the verdict read again and stored")
        item = service.store.item_of("e1")
        assert item is not None and item.event.text == "while the database was away"
        assert len(item.verdicts) == 1


async def test_a_verdict_whose_event_coordinates_cannot_be_sought_is_a_counted_skip_not_a_crash(
        broker: LocalBroker, topics: TopicNames, console_settings: ConsoleSettings) -> None:
    """A negative offset made aiokafka's seek raise ValueError in the intake: the console exited, and on
    restart read the same uncommitted poll and exited again."""
    async with running_console(console_settings) as service:
        await publish_judged(broker.bootstrap_servers, topics, [(chat("bad", "sought at -1"), verdict("bad", error="x"))],
                             tamper=lambda v: re.sub(r'"offset":\d+', '"offset":-1', v))
        await publish_judged(broker.bootstrap_servers, topics, [(chat("good", "after it"), verdict("good", error="x"))])
        await wait_until(lambda: service.intake.seen >= 2, 60, "both verdicts read and committed")
        assert service.store.events_with_items(["bad", "good"]) == {"good"}
        skipped = ((_metric(service, "guardstream_console_verdicts_undecodable_total") or 0)
                   + (_metric(service, "guardstream_console_events_unreadable_total", reason="bad_coordinates") or 0))
        assert skipped == 1
        assert service.ready
    async with running_console(console_settings) as service:  # a restart reads nothing of it again
        assert service.intake.seen == 0 and service.ready


async def test_reports_waiting_on_coordinates_that_never_resolve_do_not_delay_the_intake(
        broker: LocalBroker, topics: TopicNames, console_settings: ConsoleSettings) -> None:
    """Six reports naming an empty partition's next offset (inside no log: each read waits out the resolve
    timeout) held the reader the intake shared, one after another: a new verdict waited for all of them.
    The intake has its own reader now, and each report is answered within `report_timeout_s`."""
    console_settings.resolve_timeout_s = 5.0
    console_settings.report_timeout_s = 7.5  # one hanging read fits, a second one queued behind it does not
    reporter = {"Authorization": f"Bearer {REPORTER[0]}:{REPORTER[1]}"}
    nowhere = {"topic": topics.verdicts, "partition": 3, "offset": 0}  # nothing is ever produced there
    async with running_console(console_settings) as service:
        api = Client(service.address)
        reports = [asyncio.create_task(api.post("/api/reports", headers=reporter,
                                                json={"event_id": f"r{n}", "verdict": nowhere})) for n in range(6)]
        await wait_until(lambda: service.parts.events._lock.locked(), 30, "a report is reading")
        await publish_to_partition_0(broker, topics, chat("new", "a new verdict"), verdict("new", error="x"))
        await wait_until(lambda: service.store.events_with_items(["new"]) or all(r.done() for r in reports), 60,
                         "the new verdict queued")
        finished = _metric(service, "guardstream_console_events_unreadable_total", reason="record_missing")
        assert service.store.events_with_items(["new"]) == {"new"}
        assert not finished, "the intake waited for a report's read"
        replies = await asyncio.gather(*reports)
        assert sorted(r.status for r in replies) == [404, 503, 503, 503, 503, 503]


async def publish_to_partition_0(broker: LocalBroker, topics: TopicNames, event: ChatEvent, answer: Verdict) -> None:
    """`event` and its verdict on partition 0 of their topics (away from the partitions a test keeps empty)."""
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
    await producer.start()
    try:
        placed = await producer.send_and_wait(topics.events, event.model_dump_json().encode(), partition=0)
        source = SourceRef(topic=placed.topic, partition=placed.partition, offset=placed.offset)
        await producer.send_and_wait(topics.verdicts, answer.model_copy(update={"source": source})
                                     .model_dump_json().encode(), partition=0)
    finally:
        await producer.stop()
