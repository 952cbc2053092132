"""Every service's health server: /healthz (the process is alive), /readyz (it takes traffic), /metrics
(Prometheus) and, for a service that has one, /status (what it is doing, as JSON).

Several services on one host each need their own port (`GUARDSTREAM_OBSERVABILITY__HEALTH_PORT`; 0 picks a
free one, which the service logs at start). A port already taken is `HealthPortInUse`: one line that says
which setting to change, not a traceback.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from runtime.cli_errors import Unreachable

PORT_SETTING = "GUARDSTREAM_OBSERVABILITY__HEALTH_PORT"


class HealthPortInUse(Unreachable):
    """The health server's address is taken (another worker on this host, most often)."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(f"the health port {host}:{port} is in use (another service on this host?); set {PORT_SETTING} "
                         "to a free port, or to 0 to pick one (the service logs the port it got)")
        self.host = host
        self.port = port


class HealthServer:
    def __init__(self, host: str, port: int, registry: CollectorRegistry, ready: Callable[[], bool],
                 problems: Callable[[], list[str]] = list, status: Callable[[], object] | None = None,
                 degraded: Callable[[], list[str]] = list) -> None:
        self.host = host
        self.port = port
        self._registry = registry
        self._ready = ready
        self._problems = problems
        self._status = status
        self._degraded = degraded  # what is failing that the service does without (still ready)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        if self._status is not None:
            app.router.add_get("/status", self._status_view)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            runner, self._runner = self._runner, None
            await runner.cleanup()
            if exc.errno == errno.EADDRINUSE:
                raise HealthPortInUse(self.host, self.port) from exc
            raise
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # the real port when 0 was asked

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        ready = self._ready()
        return web.json_response({"ready": ready, "problems": self._problems(), "degraded": self._degraded()},
                                 status=200 if ready else 503)

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _status_view(self, _: web.Request) -> web.Response:
        assert self._status is not None
        return web.json_response(self._status(), dumps=lambda data: json.dumps(data, default=str))
