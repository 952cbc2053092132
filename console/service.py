"""`guardstream console`: the review store, the verdict intake, the label publisher, the web pages and the
health server, run together until stopped (on the runtime every service shares)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import structlog
import uvicorn

from console.auth import Access
from console.intake import EventReader, VerdictIntake
from console.metrics import ConsoleMetrics
from console.migrate import upgrade
from console.outbox import LabelPublisher
from console.settings import ConsoleSettings
from console.store import ReviewStore, make_engine
from console.thumbnails import Thumbnails
from console.web import Parts, create_app
from runtime.dependency_state import watch_brokers
from runtime.health import HealthServer
from workers.fetch import ImageFetcher

log = structlog.get_logger("guardstream.console")


class WebServer(uvicorn.Server):
    """uvicorn without signal handling of its own: the shared runtime's handlers stop the whole console."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ConsoleService:
    def __init__(self, settings: ConsoleSettings, metrics: ConsoleMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or ConsoleMetrics()
        self.store = ReviewStore(make_engine(settings.database_url.get_secret_value(), settings.database_timeout_s),
                                 undo_window_s=settings.review.undo_window_s, claim_s=settings.review.claim_s,
                                 double_review_rate=settings.sampling.double_review_rate)
        self.access = Access(settings.access)
        self.events = EventReader(settings, self.metrics)  # the intake's own: a report never holds it
        self.reports = EventReader(settings, self.metrics, budget_s=settings.report_timeout_s)
        self.intake = VerdictIntake(settings, self.store, self.metrics, self.events)
        self.publisher = LabelPublisher(settings, self.store, self.metrics)
        self.fetcher = ImageFetcher(settings.fetch)
        self.parts = Parts(settings, self.store, self.access, self.metrics,
                           Thumbnails(self.fetcher, settings.review.thumbnail_px,
                                      settings.review.thumbnail_cache_bytes), self.reports, self.publisher)
        self.server = WebServer(uvicorn.Config(
            create_app(self.parts), host=settings.host, port=settings.port, log_config=None, access_log=False,
            lifespan="off", proxy_headers=bool(settings.forwarded_allow_ips),
            forwarded_allow_ips=settings.forwarded_allow_ips or None))
        self.health: HealthServer | None = None
        self.port: int | None = None
        self.started = asyncio.Event()
        self._stop = asyncio.Event()

    @property
    def address(self) -> str:
        return f"http://{self.settings.host}:{self.port}/"

    @property
    def ready(self) -> bool:
        return self.started.is_set() and self.intake.assigned.is_set() and not self.problems()

    def problems(self) -> list[str]:
        """Why the console is not doing its work now (/readyz): a loop failing against the broker or the store, or
        the broker not answering (an idle consumer or a producer waiting on it raises nothing)."""
        streaks = (self.intake.failures.problem, self.publisher.failures.problem)
        found = [problem for problem in streaks if problem is not None]
        return found + self.metrics.dependencies.problems(optional=False)

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        if self.settings.migrate_on_start:
            await asyncio.to_thread(upgrade, self.store.engine)
        obs = self.settings.observability
        if obs.health_enabled:
            self.health = HealthServer(obs.health_host, obs.health_port, self.metrics.registry, lambda: self.ready,
                                       self.problems)
            await self.health.start()
        await self.events.start()
        await self.reports.start()
        brokers = asyncio.create_task(watch_brokers(self.events.reader.ask_brokers, self.metrics.dependencies,
                                                    self.settings.kafka.broker_check_interval_s), name="broker-watch")
        tasks = [asyncio.create_task(self.intake.run(), name="intake"),
                 asyncio.create_task(self.publisher.run(), name="publisher"),
                 asyncio.create_task(self.server.serve(), name="web")]
        try:
            while not self.server.started and not any(t.done() for t in tasks):
                await asyncio.sleep(0.05)  # uvicorn says it is listening only through this flag
            for task in tasks:
                if task.done():
                    task.result()
            self.port = self.server.servers[0].sockets[0].getsockname()[1]
            self.started.set()
            log.info("console listening", address=self.address, reviewers=len(self.settings.access.reviewers))
            stopped = asyncio.create_task(self._stop.wait())
            done, _ = await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in done - {stopped}:
                task.result()  # a part that ended on its own ends the console, with its error
        finally:
            brokers.cancel()
            self.intake.stop()
            self.publisher.stop()
            self.server.should_exit = True
            for task in tasks:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, 30)
            await asyncio.gather(brokers, return_exceptions=True)
            await self.events.stop()
            await self.reports.stop()
            await self.fetcher.close()
            if self.health:
                await self.health.stop()
            self.access.close()
            self.store.close()
