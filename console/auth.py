"""Sign-in, sessions and CSRF.

A session is a signed cookie (itsdangerous, HttpOnly, SameSite=Strict, Secure unless turned off) holding the
reviewer's id and the session's CSRF token. Every form carries that token, and every POST is refused
without it; the sign-in form's token lives in a signed pre-session cookie of its own. Nothing is served
unsigned: a page without a valid session redirects to the sign-in page, an image or API call gets 401.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.responses import Response

from console.passwords import verify
from console.settings import AccessSettings

SESSION_COOKIE = "guardstream_session"
SIGNIN_COOKIE = "guardstream_signin"


@dataclass(frozen=True)
class Session:
    reviewer: str
    csrf: str


class NotSignedIn(Exception):
    """No valid session: pages redirect to the sign-in page, images and the API answer 401."""


class CsrfRefused(Exception):
    """A form posted without this session's CSRF token."""


class SignInThrottle:
    """Failed sign-ins per (reviewer id, client address): after `max_failures` within `lockout_s`, that pair is
    refused until the oldest of them is `lockout_s` old. Bounded: the oldest pairs are forgotten first."""

    MAX_KEYS = 10_000

    def __init__(self, max_failures: int, lockout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.lockout_s = lockout_s
        self.clock = clock
        self._failures: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()

    def blocked(self, key: tuple[str, str]) -> bool:
        failures = self._recent(key)
        return failures is not None and len(failures) >= self.max_failures

    def failed(self, key: tuple[str, str]) -> None:
        failures = self._recent(key)
        if failures is None:
            failures = self._failures[key] = deque(maxlen=self.max_failures)
        failures.append(self.clock())
        self._failures.move_to_end(key)
        while len(self._failures) > self.MAX_KEYS:
            self._failures.popitem(last=False)

    def succeeded(self, key: tuple[str, str]) -> None:
        self._failures.pop(key, None)

    def _recent(self, key: tuple[str, str]) -> deque[float] | None:
        failures = self._failures.get(key)
        if failures is None:
            return None
        while failures and failures[0] <= self.clock() - self.lockout_s:
            failures.popleft()
        return failures


class Access:
    def __init__(self, settings: AccessSettings) -> None:
        self.settings = settings
        self.throttle = SignInThrottle(settings.max_failed_sign_ins, settings.lockout_s)
        secret = settings.session_secret.get_secret_value() if settings.session_secret else secrets.token_hex(32)
        self._secret = secret.encode()
        self._hashing = threading.BoundedSemaphore(4)
        self._sessions = URLSafeTimedSerializer(secret, salt="guardstream-console-session")
        self._signin = URLSafeTimedSerializer(secret, salt="guardstream-console-signin")

    # -- reviewers ------------------------------------------------------------------------------------------

    def check_reviewer(self, reviewer: str, token: str) -> bool:
        return self._holds(self.settings.reviewers, reviewer, token)

    def check_reporter(self, authorization: str | None) -> str | None:
        """The reporter a bearer token belongs to (reporter id and token as `id:token`), or None."""
        if not authorization or not authorization.startswith("Bearer "):
            return None
        reporter, _, token = authorization.removeprefix("Bearer ").partition(":")
        return reporter if self._holds(self.settings.reporters, reporter, token) else None

    def _holds(self, hashes: dict[str, str], who: str, token: str) -> bool:
        """Whether `who` is in `hashes` and `token` is theirs. An unknown id is checked against a hash anyway,
        so the answer takes as long either way."""
        hashed = hashes.get(who)
        with self._hashing:  # scrypt takes 16 MiB and tens of ms: a few at a time, whatever the load
            return verify(token, hashed or _DUMMY_HASH) and hashed is not None

    def _fingerprint(self, reviewer: str) -> str:
        """Changes when the reviewer's token hash does: a new token signs out every session of the old one."""
        hashed = self.settings.reviewers.get(reviewer, "")
        return hmac.new(self._secret, hashed.encode(), hashlib.sha256).hexdigest()[:32]

    # -- cookies --------------------------------------------------------------------------------------------

    def session(self, cookie: str | None) -> Session:
        if not cookie:
            raise NotSignedIn()
        try:
            data = self._sessions.loads(cookie, max_age=self.settings.session_max_age_s)
        except BadSignature as exc:
            raise NotSignedIn() from exc
        if not isinstance(data, dict) or data.get("r") not in self.settings.reviewers:
            raise NotSignedIn()  # a reviewer removed from settings is signed out
        if not same_token(self._fingerprint(data["r"]), data.get("h")):
            raise NotSignedIn()  # and one whose token was replaced
        return Session(reviewer=data["r"], csrf=data["c"])

    def start_session(self, response: Response, reviewer: str) -> None:
        value = self._sessions.dumps({"r": reviewer, "c": secrets.token_urlsafe(24), "h": self._fingerprint(reviewer)})
        self._set(response, SESSION_COOKIE, value, self.settings.session_max_age_s)
        response.delete_cookie(SIGNIN_COOKIE, path="/")

    def end_session(self, response: Response) -> None:
        response.delete_cookie(SESSION_COOKIE, path="/")

    def signin_csrf(self, cookie: str | None) -> str | None:
        try:
            return self._signin.loads(cookie, max_age=3600) if cookie else None
        except BadSignature:
            return None

    def set_signin_csrf(self, response: Response, token: str) -> None:
        self._set(response, SIGNIN_COOKIE, self._signin.dumps(token), 3600)

    def _set(self, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="strict",
                            secure=self.settings.cookie_secure)


def same_token(expected: str | None, given: str | None) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))


_DUMMY_HASH = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
