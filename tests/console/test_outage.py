"""The console through a review store that stops answering for longer than the label publisher's poll and the
intake's retry: a PostgreSQL database that refuses connections, a SQLite file whose write lock another process
holds. The console keeps running, says why it is not ready while it lasts, and afterwards publishes every label
and stores every verdict that waited."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
from pydantic import SecretStr

from console.service import ConsoleService
from console.settings import ConsoleSettings
from schemas.events import AuditLabel
from tests.console.conftest import POSTGRES_ADMIN, chat, publish_judged, running_console, verdict
from tests.console.health import readyz
from tests.kafka_io import read_until
from tests.waiting import wait_until
from topics.io import produce_raw
from topics.local_broker import LocalBroker
from topics.registry import TopicNames

POLLS_OUTLASTED = 3  # failed publication rounds in a row the outage must last


@contextmanager
def postgres_refusing(url: str) -> Iterator[None]:
    """The database refuses new connections and its open ones are cut, until the block ends."""
    database = url.rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))
        try:
            yield
        finally:
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')


@contextmanager
def sqlite_write_locked(url: str) -> Iterator[None]:
    """Another process's transaction holds the SQLite file's write lock until the block ends."""
    holder = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        yield
        holder.execute("ROLLBACK")
    finally:
        holder.close()


def _metric(service: ConsoleService, name: str, **labels: str) -> float:
    return service.metrics.registry.get_sample_value(name, labels) or 0.0


def _failures(service: ConsoleService, name: str, errors: tuple[str, ...]) -> float:
    return sum(_metric(service, name, error=error) for error in errors)


async def outlast_polls_then_catch_up(settings: ConsoleSettings, broker: LocalBroker, topics: TopicNames,
                                      outage: Any, errors: tuple[str, ...] = ("OperationalError",)) -> None:
    """A label given before the outage falls due during it, and a verdict arrives during it: the console keeps
    running, /readyz is 503 with both reasons, and once the store answers again both are handled. A record that
    can never be stored, read again with the poll at every failed try, is counted once. `errors`: the error
    types the outage may fail the loops with."""
    settings.review.undo_window_s = 1.0
    settings.backoff_base_s, settings.backoff_max_s = 0.2, 1.0
    async with running_console(settings) as service:  # which re-raises the error of a console that ended
        await publish_judged(broker.bootstrap_servers, topics, [(chat("before"), verdict("before", error="x"))])
        await wait_until(lambda: service.intake.seen >= 1, 60, "the first verdict stored")
        item = service.store.item_of("before")
        assert item is not None
        service.store.label(item.id, "alice", True, None, "given before the outage", datetime.now(UTC))
        with outage:
            await produce_raw(broker.bootstrap_servers, topics.verdicts, [(None, b"not a verdict")])
            await publish_judged(broker.bootstrap_servers, topics, [(chat("during"), verdict("during", error="x"))])
            await wait_until(lambda: _failures(service, "guardstream_console_label_publish_errors_total",
                                               errors) >= POLLS_OUTLASTED
                             and _failures(service, "guardstream_console_intake_errors_total", errors) >= 2,
                             60, "both loops failed repeatedly")
            status, body = await readyz(service)  # answered: the console still runs
            assert status == 503 and not body["ready"]
            reasons = " ".join(body["problems"])
            assert "label publisher" in reasons and "verdict intake" in reasons
            assert any(error in reasons for error in errors)
            assert _metric(service, "guardstream_console_labels_published_total") == 0
        await wait_until(lambda: _metric(service, "guardstream_console_labels_published_total") >= 1
                         and service.store.events_with_items(["during"]) == {"during"}, 60,
                         "the label published and the verdict stored")
        records = await read_until(broker.bootstrap_servers, topics.audit_labels, lambda rs: len(rs) >= 1,
                                   settle_s=1.0)
        assert [AuditLabel.model_validate_json(r.value).note for r in records] == ["given before the outage"]
        assert _metric(service, "guardstream_console_verdicts_undecodable_total") == 1
        assert _metric(service, "guardstream_console_verdicts_total") == 3  # each record read counted once
        await wait_until(lambda: service.ready, 30, "ready again")
        assert (await readyz(service))[0] == 200


async def test_the_console_outlasts_a_postgresql_outage_longer_than_its_polls_and_loses_nothing(
        broker: LocalBroker, topics: TopicNames, console_settings: ConsoleSettings, empty_postgres: str) -> None:
    console_settings.database_url = SecretStr(empty_postgres)
    await outlast_polls_then_catch_up(console_settings, broker, topics, postgres_refusing(empty_postgres))


async def test_the_console_outlasts_a_sqlite_write_lock_held_longer_than_its_polls_and_loses_nothing(
        broker: LocalBroker, topics: TopicNames, console_settings: ConsoleSettings) -> None:
    console_settings.database_timeout_s = 0.5  # how long a statement waits for the lock before it fails
    url = console_settings.database_url.get_secret_value()
    await outlast_polls_then_catch_up(console_settings, broker, topics, sqlite_write_locked(url))
