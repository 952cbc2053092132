"""The one backoff rule: doubling from a base, capped, and still a number after any run of failures."""

from __future__ import annotations

import math

import pytest

from runtime.backoff import backoff_s


def test_the_wait_doubles_from_the_base_up_to_the_cap() -> None:
    assert [backoff_s(n, 0.1, 5.0) for n in (1, 2, 3, 4, 6, 7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 3.2, 5.0])
    assert backoff_s(0, 0.1, 5.0) == 0.1  # no failure yet counts as the first


@pytest.mark.parametrize("failures", [1_100, 10_000, 10**9])
def test_a_long_stall_still_waits_the_cap_instead_of_overflowing(failures: int) -> None:
    assert backoff_s(failures, 0.1, 5.0) == 5.0  # a produce refused for hours, a watcher failing for days
    assert math.isfinite(backoff_s(failures, 0.1))  # uncapped (callers bound their attempts): stops growing
