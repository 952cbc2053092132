"""Fixtures of the console's tests: a review store on the machine's PostgreSQL (a database of their own,
dropped at the end) or on a SQLite file, and builders of verdicts and events."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from aiokafka import AIOKafkaProducer
from pydantic import SecretStr
from sqlalchemy import text

from console.migrate import upgrade
from console.passwords import hash_token
from console.sampling import Reason
from console.service import ConsoleService
from console.settings import AccessSettings, ConsoleSettings, ReviewSettings, SamplingSettings
from console.store import Incoming, ReviewStore, make_engine
from console.tables import metadata
from runtime.settings import ObservabilitySettings
from schemas.events import ChatEvent, ErrorInfo, ImageRef, ModelRef, SourceRef, StageVerdict, Verdict, VerdictStatus
from tests.waiting import wait_until
from topics.local_broker import LocalBroker
from topics.registry import TopicNames
from topics.settings import KafkaSettings
from workers.settings import FetchSettings

POSTGRES_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@contextmanager
def new_database() -> Iterator[str]:
    """A database of its own on the machine's PostgreSQL, dropped afterwards; its SQLAlchemy URL."""
    name = f"guardstream_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with new_database() as url:
        yield url


@pytest.fixture
def empty_postgres() -> Iterator[str]:
    with new_database() as url:
        yield url


@pytest.fixture(scope="session")
def migrated_postgres(postgres_url: str) -> str:
    engine = make_engine(postgres_url)
    upgrade(engine)
    engine.dispose()
    return postgres_url


def empty_store(url: str, **options: float) -> ReviewStore:
    store = ReviewStore(make_engine(url), **options)  # type: ignore[arg-type]
    with store.engine.begin() as c:
        if store.engine.dialect.name == "postgresql":
            names = ", ".join(t.name for t in metadata.sorted_tables)
            c.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    return store


@pytest.fixture(params=["postgresql", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReviewStore]:
    """An empty, migrated store with a 10 s undo window, on PostgreSQL and on SQLite."""
    if request.param == "postgresql":
        url = request.getfixturevalue("migrated_postgres")
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'review.db'}"
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
    store = empty_store(url, undo_window_s=10.0, claim_s=60.0)
    yield store
    store.close()


def chat(event_id: str, text: str = "hello", *, response: str | None = None, images: int = 0) -> ChatEvent:
    return ChatEvent(event_id=event_id, conversation_id=f"c-{event_id}", text=text, response=response,
                     images=[ImageRef(uri=f"file:///img/{event_id}-{i}.png") for i in range(images)])


def verdict(event_id: str, *, harmful: bool = False, response_harmful: bool | None = None, score: float = 0.2,
            error: str | None = None, model: str = "1", at: int = 0, stages: list[StageVerdict] | None = None,
            produced_at: datetime = NOW, reasoning: str | None = None) -> Verdict:
    common = {"event_id": event_id, "conversation_id": f"c-{event_id}", "tenant": "default",
              "model": ModelRef(name="guardstream-lite", version=model), "policy_version": "1",
              "produced_at": produced_at, "source": SourceRef(topic="chat.events", partition=0, offset=at),
              "stages": stages or [], "timings_ms": {"guard": 12.5}}
    if error:
        return Verdict(**common, status=VerdictStatus.ERROR, error=ErrorInfo(code=error, message="not moderated"),
                       reasoning="not moderated" if reasoning is None else reasoning)
    return Verdict(**common, status=VerdictStatus.OK, request_harmful=harmful, response_harmful=response_harmful,
                   request_score=score, reasoning="the request asks for nothing harmful" if reasoning is None else reasoning)


def incoming(v: Verdict, offset: int, reasons: list[Reason]) -> Incoming:
    return Incoming(v, SourceRef(topic="moderation.verdicts", partition=0, offset=offset), reasons)


def add(store: ReviewStore, event: ChatEvent, v: Verdict, offset: int, reasons: list[Reason],
        now: datetime = NOW) -> int:
    return store.add([incoming(v, offset, reasons)], {event.event_id: (event, v.source)}, now)


# -- a running console on the local broker -------------------------------------------------------------------

TOKENS = {"alice": "alice-token-7f3a", "bob": "bob-token-91c2"}
REPORTER = ("platform-a", "reporter-token-55d0")


@pytest.fixture(scope="session")
def token_hashes() -> dict[str, str]:
    return {who: hash_token(token) for who, token in [*TOKENS.items(), REPORTER]}


@pytest.fixture
def console_settings(broker: LocalBroker, topics: TopicNames, token_hashes: dict[str, str],
                     tmp_path: Path) -> ConsoleSettings:
    return ConsoleSettings(
        kafka=KafkaSettings(bootstrap_servers=broker.bootstrap_servers, topic_prefix=topics.prefix,
                            client_id="guardstream-console", session_timeout_ms=6000, heartbeat_interval_ms=500),
        group_id=f"console-{topics.prefix}",
        database_url=SecretStr(f"sqlite:///{tmp_path / 'review.db'}"),
        port=0,
        sampling=SamplingSettings(random_rate=0.0, near_threshold=0.05),
        review=ReviewSettings(undo_window_s=0.3),
        access=AccessSettings(reviewers={who: token_hashes[who] for who in TOKENS},
                              reporters={REPORTER[0]: token_hashes[REPORTER[0]]}),
        fetch=FetchSettings(file_root=tmp_path, timeout_s=2.0, backoff_base_s=0.01),
        observability=ObservabilitySettings(health_port=0),
        resolve_timeout_s=5.0,
    )


@asynccontextmanager
async def running_console(settings: ConsoleSettings) -> AsyncIterator[ConsoleService]:
    service = ConsoleService(settings)
    runner = asyncio.create_task(service.run())
    try:
        await wait_until(lambda: service.ready or runner.done(), 60, "the console started and was assigned")
        if runner.done():
            runner.result()
        yield service
    finally:
        service.stop()
        await asyncio.wait_for(runner, 60)


@asynccontextmanager
async def console_with(settings: ConsoleSettings, judged: list[tuple[ChatEvent, Verdict]]
                       ) -> AsyncIterator[tuple[ConsoleService, list[SourceRef]]]:
    """`judged` published on the settings' broker and topics, then a console that has read all of it; the
    console, and the verdicts' coordinates."""
    at = await publish_judged(settings.kafka.bootstrap_servers, TopicNames(settings.kafka.topic_prefix), judged)
    async with running_console(settings) as service:
        await wait_until(lambda: service.intake.seen >= len(judged), 60, "every verdict read")
        yield service, at


async def publish_judged(bootstrap: str, topics: TopicNames, judged: list[tuple[ChatEvent, Verdict]],
                         tamper: Callable[[str], str] = str) -> list[SourceRef]:
    """Each event on the events topic, then its verdict (whose `source` is set to where the event landed) on the
    verdicts topic, as a worker would (its JSON passed through `tamper`); the verdicts' coordinates."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        at: list[SourceRef] = []
        for event, v in judged:
            placed = await producer.send_and_wait(topics.events, event.model_dump_json().encode(),
                                                  key=event.event_id.encode())
            source = SourceRef(topic=placed.topic, partition=placed.partition, offset=placed.offset)
            answer = v.model_copy(update={"source": source})
            done = await producer.send_and_wait(topics.verdicts, tamper(answer.model_dump_json()).encode(),
                                                key=event.event_id.encode())
            at.append(SourceRef(topic=done.topic, partition=done.partition, offset=done.offset))
        return at
    finally:
        await producer.stop()
