"""Which of a service's dependencies is failing now, as the service itself has seen it (the worker, the trainer
and the console each keep one).

Each path that talks to a dependency reports what happened: a failure (with the exception that says why) or a
success, which clears it. /readyz lists what is failing and `guardstream_dependency_up{dependency=...}` is 0 for
it until it answers again. A failing dependency the worker answers without (the cache) makes it degraded, not
unready: its answers are still right, only slower.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiokafka.errors import KafkaError
from prometheus_client import Gauge

REDIS = "redis"
OBJECT_STORAGE = "object_storage"
GUARD_BACKEND = "guard_backend"
BROKER = "broker"
OPTIONAL = frozenset({REDIS})  # answers go on without it


@dataclass
class _Failure:
    error: str
    since: float = field(default_factory=time.monotonic)
    count: int = 1


class DependencyState:
    def __init__(self, up: Gauge) -> None:
        self._up = up
        self._failing: dict[str, _Failure] = {}

    def failed(self, dependency: str, error: BaseException) -> None:
        why = f"{type(error).__name__}: {' '.join(str(error).split())}"[:300]
        found = self._failing.get(dependency)
        if found is None:
            self._failing[dependency] = _Failure(why)
        else:
            found.error, found.count = why, found.count + 1
        self._up.labels(dependency).set(0)

    def answered(self, dependency: str) -> None:
        self._failing.pop(dependency, None)
        self._up.labels(dependency).set(1)

    def is_failing(self, dependency: str) -> bool:
        return dependency in self._failing

    def problems(self, optional: bool) -> list[str]:
        """The failing dependencies the worker cannot do without (or, `optional`, those it can), each with
        how long, how often and the last error."""
        now = time.monotonic()
        return [f"{name} failing for {now - f.since:.0f} s ({f.count} errors, last {f.error})"
                for name, f in sorted(self._failing.items()) if (name in OPTIONAL) == optional]


async def watch_brokers(ask: Callable[[], Awaitable[object]], state: DependencyState, interval_s: float) -> None:
    """Ask the brokers something (`ask`: a metadata request) every `interval_s`, for at most that long, and
    record whether they answered: a cut broker shows on /readyz even while no event needs it."""
    while True:
        try:
            await asyncio.wait_for(ask(), interval_s)
        except (KafkaError, TimeoutError, OSError) as exc:
            state.failed(BROKER, exc)
        else:
            state.answered(BROKER)
        await asyncio.sleep(interval_s)
