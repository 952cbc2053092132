"""/healthz, /readyz and /metrics of a running worker, on a loopback port."""

from __future__ import annotations

import aiohttp
import pytest

from tests.conftest import running_worker, verdicts_for
from tests.factories import event
from topics.io import produce_events
from workers.settings import WorkerSettings


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
