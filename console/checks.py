"""Token checks with bounded cost: scrypt takes 16 MiB and tens of milliseconds, and anyone can ask for one
(a sign-in form, a report's bearer token).

    CheckRefused             answered 429 with Retry-After, before any scrypt runs
    ├── LockedOut            this reviewer id failed too often from this address (SignInThrottle)
    └── TooManyChecks        this address, or all clients together, asked for too many checks (CheckLimiter)

scrypt runs on a few threads of its own (`hash_threads`), never on the thread pool that serves pages, so a
flood of checks can only wait for itself. Used from the event loop only: each check-and-record below runs
without an await in between, so concurrent requests cannot both pass a limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from console.passwords import verify
from console.settings import AccessSettings

Clock = Callable[[], float]


class CheckRefused(Exception):
    """A token check refused before it ran; `reason` is the log's code, `retry_after_s` the Retry-After."""

    reason = "refused"
    message = "too many attempts: try again later"

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(self.message)
        self.retry_after_s = retry_after_s

    @property
    def retry_after(self) -> str:
        return str(max(1, math.ceil(self.retry_after_s)))


class LockedOut(CheckRefused):
    reason = "locked_out"
    message = "too many failed sign-ins: try again later"


class TooManyChecks(CheckRefused):
    reason = "too_many_checks"
    message = "too many token checks right now: try again in a few seconds"


class TokenBucket:
    """`rate_per_s` checks per second, up to `burst` at once."""

    def __init__(self, rate_per_s: float, burst: int, now: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = float(burst)
        self._at = now

    def wait_s(self, now: float) -> float:
        """How long until a check may run: 0 if one may run now."""
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate_per_s)
        self._at = now
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate_per_s

    def take(self) -> None:
        self._tokens -= 1


class CheckLimiter:
    """Token checks per client address and in total. A refused check takes nothing from either budget.
    Bounded: the addresses seen longest ago are forgotten first (the total still holds)."""

    MAX_CLIENTS = 10_000

    def __init__(self, settings: AccessSettings, clock: Clock = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self._total = TokenBucket(settings.checks_per_s, settings.check_burst, clock())
        self._clients: OrderedDict[str, TokenBucket] = OrderedDict()

    def admit(self, client: str) -> None:
        """Count one check for `client`; TooManyChecks if its share or the total is spent."""
        now = self.clock()
        mine = self._client(client, now)
        wait_s = max(mine.wait_s(now), self._total.wait_s(now))
        if wait_s > 0:
            raise TooManyChecks(wait_s)
        mine.take()
        self._total.take()

    def _client(self, client: str, now: float) -> TokenBucket:
        bucket = self._clients.get(client)
        if bucket is None:
            bucket = self._clients[client] = TokenBucket(self.settings.client_checks_per_s,
                                                         self.settings.client_check_burst, now)
            while len(self._clients) > self.MAX_CLIENTS:
                self._clients.popitem(last=False)
        self._clients.move_to_end(client)
        return bucket


class SignInThrottle:
    """Sign-in attempts per (reviewer id, client address): an attempt is recorded before its token is checked
    and kept unless it succeeds, so after `max_failures` within `lockout_s` (however many run at once) that
    pair is refused until the oldest of them is `lockout_s` old. Bounded: the oldest pairs are forgotten first."""

    MAX_KEYS = 10_000

    def __init__(self, max_failures: int, lockout_s: float, clock: Clock = time.monotonic) -> None:
        self.max_failures = max_failures
        self.lockout_s = lockout_s
        self.clock = clock
        self._attempts: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()

    def attempt(self, key: tuple[str, str]) -> float:
        """Record an attempt and return its stamp (for `release`); LockedOut if `key` has no attempt left."""
        now = self.clock()
        attempts = self._recent(key, now)
        if len(attempts) >= self.max_failures:
            raise LockedOut(attempts[0] + self.lockout_s - now)
        attempts.append(now)
        self._attempts.move_to_end(key)
        while len(self._attempts) > self.MAX_KEYS:
            self._attempts.popitem(last=False)
        return now

    def release(self, key: tuple[str, str], stamp: float) -> None:
        """Give back an attempt whose token was never checked."""
        attempts = self._attempts.get(key)
        if attempts is not None and stamp in attempts:
            attempts.remove(stamp)

    def succeeded(self, key: tuple[str, str]) -> None:
        self._attempts.pop(key, None)

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        attempts = self._attempts.setdefault(key, deque())
        while attempts and attempts[0] <= now - self.lockout_s:
            attempts.popleft()
        return attempts


class TokenChecker:
    """Whether a token is the one a stored hash was made from, at a bounded cost.

    A token that verified once is remembered (by a keyed digest, least recently used dropped first), so a
    reporter sending many reports pays scrypt once and is not held back by a flood of others. An unknown id
    costs no scrypt: its answer waits as long as recent checks took, so that timing does not tell which ids
    exist; it also takes its share of the limits, so a 429 does not tell either."""

    MAX_REMEMBERED = 1_024
    SMOOTHING = 0.2  # weight of the newest check in the typical check time

    def __init__(self, settings: AccessSettings, limiter: CheckLimiter) -> None:
        self.limiter = limiter
        self._threads = ThreadPoolExecutor(settings.hash_threads, thread_name_prefix="guardstream-scrypt")
        self._key = secrets.token_bytes(32)
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._typical_s: float | None = None

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def holds(self, hashed: str | None, token: str, client: str) -> bool:
        """Whether `token` matches `hashed` (None: the id is unknown); TooManyChecks past the limits."""
        if hashed is not None and self._remembered(hashed, token):
            return True
        self.limiter.admit(client)
        if hashed is None:
            await self._as_long_as_a_check(token)
            return False
        if not await self._scrypt(hashed, token):
            return False
        self._remember(hashed, token)
        return True

    async def _as_long_as_a_check(self, token: str) -> None:
        """An unknown id's answer: no scrypt (once one has been timed), but as long as one takes."""
        if self._typical_s is None:
            await self._scrypt(_DUMMY_HASH, token)
        else:
            await asyncio.sleep(self._typical_s)

    async def _scrypt(self, hashed: str, token: str) -> bool:
        started = time.monotonic()
        matches = await asyncio.get_running_loop().run_in_executor(self._threads, verify, token, hashed)
        took_s = time.monotonic() - started  # waiting for a thread included: an unknown id waits as long
        self._typical_s = took_s if self._typical_s is None else (
            self._typical_s + self.SMOOTHING * (took_s - self._typical_s))
        return matches

    def _digest(self, hashed: str, token: str) -> bytes:
        return hmac.new(self._key, f"{hashed}\0{token}".encode(), hashlib.sha256).digest()

    def _remembered(self, hashed: str, token: str) -> bool:
        digest = self._digest(hashed, token)
        if digest not in self._verified:
            return False
        self._verified.move_to_end(digest)
        return True

    def _remember(self, hashed: str, token: str) -> None:
        self._verified[self._digest(hashed, token)] = None
        while len(self._verified) > self.MAX_REMEMBERED:
            self._verified.popitem(last=False)


_DUMMY_HASH = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
