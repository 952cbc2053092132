"""/healthz, /readyz and /metrics of a running worker, on a loopback port."""

from __future__ import annotations

import aiohttp

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
