"""The console with PostgreSQL, and then the broker, behind a fault proxy: a store that hangs or resets its
connections for longer than the label publisher's poll and the intake's retry, a broker cut mid-stream while
verdicts come in and labels go out, and a store that fails between a label's send and its mark. No verdict is
lost or stored twice, no label lost or published twice, the same console recovers, and /readyz says why while
it lasts. (A PostgreSQL refusing connections and a SQLite write lock are test_outage.py's.)"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from pydantic import SecretStr

from console.service import ConsoleService
from console.settings import ConsoleSettings
from runtime.dependency_state import BROKER
from schemas.events import AuditLabel, ChatEvent, Verdict
from tests.conftest import PARTITIONS, ProxiedBroker
from tests.console.conftest import chat, publish_judged, running_console, verdict
from tests.console.health import readyz
from tests.console.test_outage import outlast_polls_then_catch_up
from tests.fault_proxy import FaultProxy, fault_proxy
from tests.kafka_io import read_until
from tests.waiting import wait_until
from topics.admin import create_topics
from topics.local_broker import LocalBroker
from topics.registry import TopicNames, topic_specs
from topics.settings import KafkaSettings

SESSION_TIMEOUT_MS = 2000
CUT_S = 1.5 * SESSION_TIMEOUT_MS / 1000  # a cut outlasts the session timeout and many polls and checks


@pytest.fixture
def postgres_proxy(console_settings: ConsoleSettings, empty_postgres: str) -> Iterator[FaultProxy]:
    """The console's review store on PostgreSQL, reached through a fault proxy."""
    with fault_proxy(empty_postgres) as proxy:
        console_settings.database_url = SecretStr(empty_postgres.replace("127.0.0.1:5432", proxy.address))
        console_settings.database_timeout_s = 1.0  # a new connection's connect timeout
        console_settings.database_call_timeout_s = 1.0
        yield proxy


@pytest.mark.parametrize(("fault", "errors"), [("reset", ("OperationalError",)),
                                               ("blackhole", ("StoreNotAnswering", "OperationalError"))])
async def test_a_postgresql_that_hangs_or_resets_longer_than_the_polls_loses_nothing(
        broker: LocalBroker, topics: TopicNames, console_settings: ConsoleSettings, postgres_proxy: FaultProxy,
        fault: str, errors: tuple[str, ...]) -> None:
    await outlast_polls_then_catch_up(console_settings, broker, topics, postgres_proxy.fault(fault), errors)


def on_proxied_broker(settings: ConsoleSettings, proxied: ProxiedBroker, topics: TopicNames) -> None:
    settings.kafka = KafkaSettings(bootstrap_servers=proxied.bootstrap_servers, topic_prefix=topics.prefix,
                                   client_id="guardstream-console", session_timeout_ms=SESSION_TIMEOUT_MS,
                                   heartbeat_interval_ms=300, fetch_max_wait_ms=100, broker_check_interval_s=0.5)
    settings.group_id = f"console-{topics.prefix}"
    settings.backoff_base_s, settings.backoff_max_s = 0.2, 1.0


def judged(tag: str, n: int) -> list[tuple[ChatEvent, Verdict]]:
    return [(chat(f"{tag}-{i}"), verdict(f"{tag}-{i}", error="x")) for i in range(n)]  # errors: all queued


def label_all(service: ConsoleService, tag: str, n: int) -> None:
    for i in range(n):
        item = service.store.item_of(f"{tag}-{i}")
        assert item is not None, f"{tag}-{i} is queued"
        service.store.label(item.id, "alice", True, None, f"{tag}-{i}", datetime.now(UTC))


def metric(service: ConsoleService, name: str, **labels: str) -> float:
    return service.metrics.registry.get_sample_value(name, labels) or 0.0


def verdicts_stored(service: ConsoleService, event_id: str) -> int:
    item = service.store.item_of(event_id)
    return len(item.verdicts) if item is not None else 0


async def published_labels(bootstrap: str, topics: TopicNames, count: int) -> Counter[str]:
    """Each label's note, with how many times it is on the audit topic, once the topic has gone quiet."""
    records = await read_until(bootstrap, topics.audit_labels, lambda rs: len(rs) >= count, 60, settle_s=1.5)
    return Counter(AuditLabel.model_validate_json(r.value).note for r in records)


async def cut_mid_stream(service: ConsoleService, proxied: ProxiedBroker, topics: TopicNames, fault: str) -> None:
    """Verdicts read and in flight, labels falling due inside a cut that outlasts the session timeout; /readyz
    says why during it."""
    read = service.intake.seen
    await publish_judged(proxied.bootstrap_servers, topics, judged(f"{fault}-due", 4))
    await wait_until(lambda: service.intake.seen >= read + 4, 30, "verdicts read before the cut")
    await publish_judged(proxied.bootstrap_servers, topics, judged(f"{fault}-in-flight", 4))  # read, or not, at the cut
    with proxied.proxy.fault(fault):
        label_all(service, f"{fault}-due", 4)  # due after the 0.3 s undo window: inside the cut
        cut_at = time.monotonic()
        await wait_until(lambda: time.monotonic() - cut_at > CUT_S and not service.ready, 30,
                         "the cut outlasting the session timeout")
        status, body = await readyz(service)
        assert metric(service, "guardstream_dependency_up", dependency=BROKER) == 0
    assert status == 503 and any(p.startswith(f"{BROKER} failing") for p in body["problems"]), body
    await wait_until(lambda: service.intake.seen >= read + 8, 30, "every verdict read after the cut")
    label_all(service, f"{fault}-in-flight", 4)


async def test_broker_cuts_mid_stream_lose_no_verdict_or_label_and_readiness_says_why(
        proxied_broker: ProxiedBroker, console_settings: ConsoleSettings) -> None:
    """A refused broker, then a hung one, each while verdicts are read and labels fall due; one console throughout."""
    topics = TopicNames(f"t-{uuid.uuid4().hex[:10]}.")
    await create_topics(proxied_broker.bootstrap_servers, topic_specs(topics, partitions=PARTITIONS))
    on_proxied_broker(console_settings, proxied_broker, topics)
    faults = ("refuse", "blackhole")
    async with running_console(console_settings) as service:
        for fault in faults:
            await cut_mid_stream(service, proxied_broker, topics, fault)
        labels = await published_labels(proxied_broker.bootstrap_servers, topics, 8 * len(faults))
        await wait_until(lambda: service.ready, 30, "ready again, without a restart")
        stored = {event_id: verdicts_stored(service, event_id)
                  for event_id in (f"{fault}-{kind}-{i}" for fault in faults for kind in ("due", "in-flight")
                                   for i in range(4))}
    assert set(labels) == set(stored) and set(labels.values()) == {1}, "each label published once"
    assert set(stored.values()) == {1}, "each verdict stored once"
    assert metric(service, "guardstream_console_verdicts_total") == len(stored)
    assert metric(service, "guardstream_console_labels_published_total") == len(stored)


def label_row(url: str) -> tuple[datetime | None, datetime | None]:
    """(publishing_since, published_at) of the store's one label, read straight from PostgreSQL."""
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as connection:
        row = connection.execute("SELECT publishing_since, published_at FROM labels").fetchone()
    return (row[0], row[1]) if row else (None, None)


async def test_a_label_sent_while_the_store_fails_is_marked_after_it_and_never_sent_again(
        proxied_broker: ProxiedBroker, console_settings: ConsoleSettings, empty_postgres: str,
        postgres_proxy: FaultProxy) -> None:
    """The store stops answering between the broker's acknowledgement of a label and the label's mark: the
    label is marked once the store is back, instead of waiting out its claim to be sent a second time."""
    topics = TopicNames(f"t-{uuid.uuid4().hex[:10]}.")
    bootstrap = proxied_broker.bootstrap_servers
    await create_topics(bootstrap, topic_specs(topics, partitions=PARTITIONS))
    on_proxied_broker(console_settings, proxied_broker, topics)
    async with running_console(console_settings) as service:
        await publish_judged(bootstrap, topics, judged("one", 1))
        await wait_until(lambda: service.intake.seen >= 1, 30, "the verdict stored")
        with proxied_broker.proxy.fault("delay", 0.5):  # the label's send takes seconds
            label_all(service, "one", 1)
            await wait_until(lambda: label_row(empty_postgres)[0] is not None, 10, "the label claimed")
            with postgres_proxy.fault("reset"):
                await wait_until(lambda: metric(service, "guardstream_console_labels_published_total") >= 1
                                 and sum(metric(service, "guardstream_console_label_publish_errors_total", error=e)
                                         for e in ("OperationalError", "StoreNotAnswering")) >= 3, 30,
                                 "the label acknowledged, and its mark failed through several rounds")
                assert label_row(empty_postgres)[1] is None
        await wait_until(lambda: label_row(empty_postgres)[1] is not None, 10,
                         "the label marked published once the store answers (not sent again after its claim)")
        labels = await published_labels(bootstrap, topics, 1)
    assert labels == {"one-0": 1}
    assert metric(service, "guardstream_console_labels_published_total") == 1
