"""Sign-in, sessions and CSRF.

A session is a signed cookie (itsdangerous, HttpOnly, SameSite=Strict, Secure unless turned off) holding the
reviewer's id and the session's CSRF token. Every form carries that token, and every POST is refused
without it; the sign-in form's token lives in a signed pre-session cookie of its own. Nothing is served
unsigned: a page without a valid session redirects to the sign-in page, an image or API call gets 401.

Signing out ends every session of that reviewer on the server too: the time they signed out is kept, and a
session issued before it is refused, so a copied cookie stops working. That time is kept in this process's
memory: one console process, and a restart forgets it (with a random `session_secret`, the default, a
restart signs everyone out anyway; with a fixed one, a session signed out before the restart works again
until it expires).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.responses import Response

from console.checks import CheckLimiter, CheckRefused, SignInThrottle, TokenChecker
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


class Access:
    def __init__(self, settings: AccessSettings) -> None:
        self.settings = settings
        self.throttle = SignInThrottle(settings.max_failed_sign_ins, settings.lockout_s)
        self.checker = TokenChecker(settings, CheckLimiter(settings))
        secret = settings.session_secret.get_secret_value() if settings.session_secret else secrets.token_hex(32)
        self._secret = secret.encode()
        self._sessions = URLSafeTimedSerializer(secret, salt="guardstream-console-session")
        self._signin = URLSafeTimedSerializer(secret, salt="guardstream-console-signin")
        self._signed_out: dict[str, float] = {}  # reviewer → when they last signed out (wall clock)

    def close(self) -> None:
        self.checker.close()

    # -- reviewers ------------------------------------------------------------------------------------------

    async def check_reviewer(self, reviewer: str, token: str, client: str) -> bool:
        """Whether `token` is `reviewer`'s. CheckRefused (LockedOut, TooManyChecks) if it may not be checked:
        the attempt counts before the check runs, and is given back only if the check is refused."""
        key = (reviewer, client)
        stamp = self.throttle.attempt(key)
        try:
            holds = await self.checker.holds(self.settings.reviewers.get(reviewer), token, client)
        except CheckRefused:
            self.throttle.release(key, stamp)
            raise
        if holds:
            self.throttle.succeeded(key)
        return holds

    async def check_reporter(self, authorization: str | None, client: str) -> str | None:
        """The reporter a bearer token belongs to (reporter id and token as `id:token`), or None;
        TooManyChecks if it may not be checked now."""
        if not authorization or not authorization.startswith("Bearer "):
            return None
        reporter, _, token = authorization.removeprefix("Bearer ").partition(":")
        return reporter if await self.checker.holds(self.settings.reporters.get(reporter), token, client) else None

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
        if not isinstance(data.get("t"), float) or data["t"] <= self._signed_out.get(data["r"], 0.0):
            raise NotSignedIn()  # and one who signed out since
        return Session(reviewer=data["r"], csrf=data["c"])

    def start_session(self, response: Response, reviewer: str) -> None:
        # after the last sign-out even if the wall clock stepped back since: the new session must be valid
        issued = max(time.time(), self._signed_out.get(reviewer, 0.0) + 0.001)
        value = self._sessions.dumps({"r": reviewer, "c": secrets.token_urlsafe(24), "h": self._fingerprint(reviewer),
                                      "t": issued})
        self._set(response, SESSION_COOKIE, value, self.settings.session_max_age_s)
        response.delete_cookie(SIGNIN_COOKIE, path="/")

    def end_session(self, response: Response, session: Session) -> None:
        """Sign `session`'s reviewer out: this cookie and every copy of it, on every device."""
        self._signed_out[session.reviewer] = max(time.time(), self._signed_out.get(session.reviewer, 0.0))
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

