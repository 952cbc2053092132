"""What every service (worker, trainer, console) shares to run as a process: its logging set up from its
observability settings, its health server, and a stop on SIGTERM/SIGINT. A service is an object with
`run()` (returns once stopped, after its own bounded shutdown) and `stop()`."""

from __future__ import annotations

import asyncio
import signal
from typing import Protocol

from workers.logs import configure_logging
from workers.settings import ObservabilitySettings


class Service(Protocol):
    async def run(self) -> None: ...

    def stop(self) -> None: ...


def run_service(service: Service, observability: ObservabilitySettings) -> None:
    """Run `service` in this process until it stops or a signal asks it to."""
    configure_logging(observability.log_format, observability.log_level)
    asyncio.run(_until_signalled(service))


async def _until_signalled(service: Service) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop)
    await service.run()
