"""The console's /readyz as its orchestrator sees it: answered only while the console runs (its health server
stops when the service ends), 503 with the reasons while a loop fails."""

from __future__ import annotations

from typing import Any

import aiohttp

from console.service import ConsoleService


async def readyz(service: ConsoleService) -> tuple[int, dict[str, Any]]:
    assert service.health is not None, "the health server is on (port 0 in the tests' settings)"
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{service.health.port}/readyz") as reply:
        return reply.status, await reply.json()
