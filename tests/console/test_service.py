"""`guardstream console` as a process: settings from the environment, health endpoints, and a clean stop on
SIGTERM (the shared runtime's handlers, not the web server's)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import aiohttp

from console.migrate import current, head
from console.passwords import hash_token
from console.store import make_engine
from tests.waiting import wait_until
from topics.local_broker import LocalBroker, free_loopback_port
from topics.registry import TopicNames


async def test_the_console_runs_from_its_settings_answers_health_checks_and_stops_on_sigterm(
        broker: LocalBroker, topics: TopicNames, empty_postgres: str) -> None:
    """On PostgreSQL, from an empty database: the console migrates it at start."""
    health, web = free_loopback_port(), free_loopback_port()
    env = {**os.environ, "GUARDSTREAM_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
           "GUARDSTREAM_KAFKA__TOPIC_PREFIX": topics.prefix, "GUARDSTREAM_GROUP_ID": f"c-{topics.prefix}",
           "GUARDSTREAM_DATABASE_URL": empty_postgres, "GUARDSTREAM_PORT": str(web),
           "GUARDSTREAM_OBSERVABILITY__HEALTH_PORT": str(health), "GUARDSTREAM_OBSERVABILITY__LOG_FORMAT": "json",
           "GUARDSTREAM_ACCESS__REVIEWERS": json.dumps({"alice": hash_token("t")}),
           "GUARDSTREAM_ACCESS__SESSION_SECRET": "a-secret-that-must-not-be-logged"}
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "guardstream", "console", env=env,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    ready = {"ready": False}

    async def probe() -> None:
        async with aiohttp.ClientSession() as session:
            while not ready["ready"] and process.returncode is None:
                try:
                    async with session.get(f"http://127.0.0.1:{health}/readyz") as reply:
                        ready["ready"] = reply.status == 200
                    async with session.get(f"http://127.0.0.1:{web}/signin") as reply:
                        ready["ready"] &= reply.status == 200
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)

    prober = asyncio.create_task(probe())
    try:
        await wait_until(lambda: ready["ready"] or process.returncode is not None, 60, "the console ready")
    finally:
        prober.cancel()
    process.send_signal(signal.SIGTERM)
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, output.decode()
    assert b"console listening" in output and b"a-secret-that-must-not-be-logged" not in output
    engine = make_engine(empty_postgres)
    assert current(engine) == head()
    engine.dispose()
