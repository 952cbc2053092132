"""One rule for every wait between retries (fetches, guard batches, produces, polls, the release watcher)."""

from __future__ import annotations

import math

_MAX_DOUBLINGS = 60  # past this the cap has long been reached; 2.0**n of a larger n would overflow a float


def backoff_s(failures: int, base_s: float, max_s: float = math.inf) -> float:
    """The wait after the `failures`-th failure in a row: `base_s`, doubling each time, capped at `max_s`.

    >>> [backoff_s(n, 0.5, 30) for n in (1, 2, 3, 7, 10_000)]
    [0.5, 1.0, 2.0, 30, 30]
    """
    return min(max_s, base_s * 2.0 ** min(max(0, failures - 1), _MAX_DOUBLINGS))
