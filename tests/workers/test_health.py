"""/healthz, /readyz and /metrics of a running worker, on a loopback port; several workers on one host."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from runtime.cli_errors import Exit
from runtime.health import PORT_SETTING, HealthPortInUse, HealthServer
from runtime.logs import configure_logging
from tests.conftest import running_worker, verdicts_for
from tests.factories import event
from tests.workers.test_crash_recovery import settings_env
from topics.io import produce_events
from workers.settings import WorkerSettings

GUARDSTREAM = Path(sys.executable).with_name("guardstream")


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port something else listens on (another worker's health server, say)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


async def test_health_readiness_and_metrics_are_served(settings: WorkerSettings, lite_guard) -> None:
    settings.observability.health_enabled = True
    settings.observability.health_port = 0
    await produce_events(settings.kafka.bootstrap_servers, f"{settings.kafka.topic_prefix}chat.events",
                         [event("Tell me a fun fact about octopuses.")])
    async with running_worker(settings, lite_guard) as worker, aiohttp.ClientSession() as http:
        await verdicts_for(settings, 1)
        base = f"http://127.0.0.1:{worker.health.port}"
        async with http.get(f"{base}/healthz") as response:
            assert response.status == 200
        async with http.get(f"{base}/readyz") as response:
            assert response.status == 200 and (await response.json())["ready"] is True
        async with http.get(f"{base}/metrics") as response:
            body = await response.text()
        assert 'guardstream_verdicts_total{request_harmful="False",status="ok"} 1.0' in body
        assert "guardstream_events_in_total 1.0" in body
        worker.stop()
        async with http.get(f"{base}/readyz") as response:
            assert response.status == 503


async def test_a_worker_that_cannot_reach_its_broker_fails_with_the_broker_error(settings: WorkerSettings,
                                                                                 lite_guard) -> None:
    from aiokafka.errors import KafkaConnectionError

    from topics.local_broker import free_loopback_port
    from workers.worker import Worker

    settings.kafka.bootstrap_servers = f"127.0.0.1:{free_loopback_port()}"  # nothing listens there
    worker = Worker(settings, backend=lite_guard)
    with pytest.raises(KafkaConnectionError):
        await worker.run()
    assert not worker.ready


async def test_a_taken_health_port_is_one_typed_error_that_names_the_setting(taken_port: int) -> None:
    server = HealthServer("127.0.0.1", taken_port, CollectorRegistry(), lambda: True)
    with pytest.raises(HealthPortInUse) as caught:
        await server.start()
    assert caught.value.exit_code == Exit.UNREACHABLE == 4
    message = str(caught.value)
    assert f"127.0.0.1:{taken_port} is in use" in message and PORT_SETTING in message and "0 to pick one" in message
    await server.stop()  # nothing left to clean up, and no error for it


async def test_a_second_worker_on_a_taken_health_port_stops_with_that_error(settings: WorkerSettings, lite_guard,
                                                                             taken_port: int) -> None:
    from workers.worker import Worker

    settings.observability.health_enabled = True
    settings.observability.health_port = taken_port
    worker = Worker(settings, backend=lite_guard)
    with pytest.raises(HealthPortInUse) as caught:
        await worker.run()
    assert caught.value.exit_code == 4 and not worker.ready


async def test_health_port_0_picks_a_free_port_and_the_worker_logs_it(settings: WorkerSettings, lite_guard,
                                                                      taken_port: int) -> None:
    settings.observability.health_enabled = True
    settings.observability.health_port = 0
    configure_logging("console", "info")  # an earlier test may have left the level at warning
    with capture_logs() as logs:
        async with running_worker(settings, lite_guard) as worker:
            assert worker.health is not None
            port = worker.health.port
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 200
    [started] = [line for line in logs if line["event"] == "worker_started"]
    assert started["health_port"] == port not in (0, taken_port)


@pytest.mark.slow
def test_guardstream_worker_on_a_taken_health_port_exits_4_with_one_line(settings: WorkerSettings,
                                                                         taken_port: int) -> None:
    settings.observability.health_enabled = True
    settings.observability.health_port = taken_port
    env = {**os.environ, **settings_env(settings), "GUARDSTREAM_OBSERVABILITY__LOG_LEVEL": "warning"}
    done = subprocess.run([str(GUARDSTREAM), "worker"], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 4, done.stderr
    assert done.stderr.splitlines() == [
        f"guardstream: the health port 127.0.0.1:{taken_port} is in use (another service on this host?); set "
        f"{PORT_SETTING} to a free port, or to 0 to pick one (the service logs the port it got)"]
