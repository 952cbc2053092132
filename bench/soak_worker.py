"""`guardstream worker` as the soak and the kill runs start it: a process of its own, configured by
GUARDSTREAM_* alone, started through the same runtime (dependency check, logging, health server, signals).

Two additions, both for measuring:
- `GUARDSTREAM_GUARD__BACKEND=zero-cost` serves `DigestGuard`, a backend that answers at once with labels
  taken from a digest of the text (and of the response), so the pipeline alone is measured, and verdicts
  that must agree (a repeat's, a re-answer's after a crash) can be told apart from verdicts that merely agree
  because everything is "unharmful". Any other name loads that backend as the worker does.
- Its metrics carry `soak_in_flight_peak_events`, the highest value the in-flight gauge was ever set to (a
  scrape sees the gauge only when it happens to look), and `soak_startup_mark_seconds{mark}`, the wall-clock
  time each start-up step ended (`imported`, `dependencies_checked`, `backend_loaded`), so a restart's time
  can be split into imports, model loading and joining the group.

Run as `python -m bench.soak_worker` from the repository's root.
"""

from __future__ import annotations

import time

IMPORTS_STARTED = time.time()

import hashlib  # noqa: E402  (the marks time the imports below)
from typing import Any  # noqa: E402

from prometheus_client import Gauge  # noqa: E402

from runtime.service import load_settings, start_service  # noqa: E402
from workers.dependencies import service_dependencies  # noqa: E402
from workers.guard.base import GuardOutcome, GuardRequest, GuardResult  # noqa: E402
from workers.guard.registry import load_backend  # noqa: E402
from workers.metrics import WorkerMetrics  # noqa: E402
from workers.settings import WorkerSettings  # noqa: E402
from workers.worker import Worker  # noqa: E402

ZERO_COST = "zero-cost"
IN_FLIGHT_PEAK = "soak_in_flight_peak_events"
STARTUP_MARK = "soak_startup_mark_seconds"


def digest_bit(text: str) -> bool:
    """A label that depends on the text alone: the low bit of its SHA-256."""
    return bool(hashlib.sha256(text.encode()).digest()[-1] & 1)


class DigestGuard:
    """Answers at once; the labels are a function of the text (and of the response), never of timing."""

    name = ZERO_COST

    async def moderate(self, requests: list[GuardRequest]) -> list[GuardOutcome]:
        return [GuardResult(request_harmful=digest_bit(r.text),
                            response_harmful=None if r.response is None else digest_bit(r.response),
                            reasoning="zero-cost: labels from the text's digest", decided_by=self.name)
                for r in requests]

    async def close(self) -> None:
        return None


class PeakGauge:
    """The in-flight gauge, and beside it the highest value it was ever set to."""

    def __init__(self, gauge: Gauge, peak: Gauge) -> None:
        self._gauge = gauge
        self._peak = peak
        self._highest = 0.0

    def set(self, value: float) -> None:
        self._gauge.set(value)
        if value > self._highest:
            self._highest = value
            self._peak.set(value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gauge, name)


def soak_metrics() -> tuple[WorkerMetrics, Gauge]:
    metrics = WorkerMetrics()
    peak = Gauge(IN_FLIGHT_PEAK, "Highest number of events in flight so far", registry=metrics.registry)
    metrics.in_flight = PeakGauge(metrics.in_flight, peak)  # type: ignore[assignment]
    marks = Gauge(STARTUP_MARK, "Wall-clock time each start-up step ended", ["mark"], registry=metrics.registry)
    marks.labels("imports_started").set(IMPORTS_STARTED)
    marks.labels("imported").set(time.time())
    return metrics, marks


def build_worker(settings: WorkerSettings, metrics: WorkerMetrics, marks: Gauge) -> Worker:
    """After the dependency check, as `guardstream worker` does: load the backend (timed), then the worker."""
    marks.labels("dependencies_checked").set(time.time())
    backend = DigestGuard() if settings.guard.backend == ZERO_COST else load_backend(settings.guard)
    marks.labels("backend_loaded").set(time.time())
    return Worker(settings, backend=backend, metrics=metrics)


def main() -> None:
    settings = load_settings(WorkerSettings)
    metrics, marks = soak_metrics()
    start_service(lambda: build_worker(settings, metrics, marks), settings,
                  service_dependencies(settings.kafka, settings.cache, settings.fetch))


if __name__ == "__main__":
    main()
