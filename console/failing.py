"""A console loop's failures in a row against what it depends on (the broker, the review store).

Each failure is counted by its type; the loop waits a backoff that grows with the streak before it tries
again (an outage of any length is waited out, never ended on), and /readyz names the loop, the streak and
its last error until the loop succeeds again.
"""

from __future__ import annotations

from prometheus_client import Counter

from runtime.backoff import backoff_s


class FailureStreak:
    def __init__(self, part: str, meanwhile: str, counter: Counter, base_s: float, max_s: float) -> None:
        self.part = part
        self.meanwhile = meanwhile  # what waits while the streak lasts, for the readiness reason
        self.counter = counter
        self.base_s = base_s
        self.max_s = max_s
        self.count = 0
        self.last_error = ""

    def failed(self, exc: BaseException) -> float:
        """Count one more failure; the wait before the next try."""
        self.count += 1
        self.last_error = type(exc).__name__
        self.counter.labels(self.last_error).inc()
        return backoff_s(self.count, self.base_s, self.max_s)

    def ended(self) -> None:
        self.count = 0

    @property
    def problem(self) -> str | None:
        if not self.count:
            return None
        return f"{self.part}: {self.count} failures in a row, the last {self.last_error}; {self.meanwhile}"
