"""Reviewer tokens: stored only hashed, checked in constant time, refused in settings when given in clear."""

from __future__ import annotations

from http.cookies import SimpleCookie

import pytest
from pydantic import ValidationError
from starlette.responses import Response
from typer.testing import CliRunner

from console.auth import SESSION_COOKIE, Access, NotSignedIn
from console.checks import CheckLimiter, LockedOut, SignInThrottle, TooManyChecks
from console.passwords import hash_token, is_hash, new_token, verify
from console.settings import AccessSettings, ConsoleSettings
from guardstream.cli import app


def test_a_hash_verifies_its_token_only_and_is_salted() -> None:
    token = new_token()
    first, second = hash_token(token), hash_token(token)
    assert first != second and is_hash(first) and token not in first
    assert verify(token, first) and verify(token, second)
    assert not verify(token + "x", first) and not verify("", first)
    assert not verify(token, "scrypt$16384$8$1$AAAA$!!!!") and not verify(token, token)


def test_settings_refuse_a_token_given_in_clear_and_never_show_the_secret() -> None:
    with pytest.raises(ValidationError, match="not a hash"):
        AccessSettings(reviewers={"alice": "hunter2"})
    settings = ConsoleSettings(access={"reviewers": {"alice": hash_token("t")}, "session_secret": "s3cr3t-value"},
                               database_url="postgresql+psycopg://console:db-password@127.0.0.1/review")
    shown = repr(settings) + str(settings.model_dump())
    assert "s3cr3t-value" not in shown and "db-password" not in shown


async def test_access_knows_reviewers_and_reporters_by_their_tokens() -> None:
    access = Access(AccessSettings(reviewers={"alice": hash_token("a-token")},
                                   reporters={"platform": hash_token("r-token")}))
    here = "127.0.0.1"
    assert await access.check_reviewer("alice", "a-token", here)
    assert not await access.check_reviewer("alice", "r-token", here)
    assert not await access.check_reviewer("bob", "a-token", here)
    assert not await access.check_reviewer("bob", "a-token", here)  # timed by the last check, without scrypt
    assert await access.check_reporter("Bearer platform:r-token", here) == "platform"
    assert await access.check_reporter("Bearer platform:a-token", here) is None
    assert await access.check_reporter("platform:r-token", here) is None
    assert await access.check_reporter(None, here) is None
    access.close()


def test_the_cli_hashes_a_token_and_refuses_to_start_without_reviewers(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    hashed = runner.invoke(app, ["console", "hash-token"], input="my-token\n")
    assert hashed.exit_code == 0 and verify("my-token", hashed.stdout.strip())
    made = runner.invoke(app, ["console", "hash-token", "--generate"])
    token, digest = (line.split(":", 1)[1].strip() for line in made.stdout.splitlines())
    assert verify(token, digest)
    monkeypatch.delenv("GUARDSTREAM_ACCESS__REVIEWERS", raising=False)
    refused = runner.invoke(app, ["console"])
    assert refused.exit_code == 2 and "no reviewers" in refused.output


def test_repeated_failed_sign_ins_lock_that_reviewer_and_address_out_for_a_while() -> None:
    now = [0.0]
    throttle = SignInThrottle(max_failures=3, lockout_s=60, clock=lambda: now[0])
    alice, other_address = ("alice", "127.0.0.1"), ("alice", "127.0.0.2")
    for _ in range(3):
        throttle.attempt(alice)  # counted before its token is checked: a failure unless it succeeds
        now[0] += 1
    with pytest.raises(LockedOut) as locked:
        throttle.attempt(alice)
    assert locked.value.retry_after == "57"  # the first attempt is a minute old at 60
    throttle.attempt(other_address)
    now[0] = 60.5  # the first failure is a minute old: one more try
    throttle.attempt(alice)
    with pytest.raises(LockedOut):
        throttle.attempt(alice)
    throttle.succeeded(("bob", "127.0.0.1"))
    now[0] = 200
    throttle.succeeded(alice)
    throttle.succeeded(other_address)
    assert not throttle._attempts  # noqa: SLF001 - nothing kept for a reviewer who signed in


def test_an_attempt_whose_token_was_never_checked_is_given_back() -> None:
    throttle = SignInThrottle(max_failures=1, lockout_s=60, clock=lambda: 0.0)
    stamp = throttle.attempt(("alice", "127.0.0.1"))
    throttle.release(("alice", "127.0.0.1"), stamp)
    throttle.attempt(("alice", "127.0.0.1"))


def test_the_throttle_forgets_the_oldest_addresses_first() -> None:
    throttle = SignInThrottle(max_failures=1, lockout_s=60, clock=lambda: 0.0)
    throttle.MAX_KEYS = 3
    for n in range(5):
        throttle.attempt((f"r{n}", "127.0.0.1"))
    for kept in ("r4", "r3", "r2"):
        with pytest.raises(LockedOut):
            throttle.attempt((kept, "127.0.0.1"))
    throttle.attempt(("r0", "127.0.0.1"))  # forgotten: it may try again


def test_checks_are_limited_per_client_and_in_total_and_refill_with_time() -> None:
    now = [0.0]
    limiter = CheckLimiter(AccessSettings(client_checks_per_s=1.0, client_check_burst=2, checks_per_s=2.0,
                                          check_burst=3), clock=lambda: now[0])
    limiter.admit("a")
    limiter.admit("a")
    with pytest.raises(TooManyChecks) as mine:
        limiter.admit("a")
    assert mine.value.retry_after_s == pytest.approx(1.0)
    limiter.admit("b")
    with pytest.raises(TooManyChecks) as total:
        limiter.admit("c")  # a client's first check, but all of them together are at the limit
    assert total.value.retry_after_s == pytest.approx(0.5)
    now[0] = 0.5
    limiter.admit("c")
    with pytest.raises(TooManyChecks):
        limiter.admit("a")  # a refused check took nothing: "a" gets its next one at 1.0
    now[0] = 1.0
    limiter.admit("a")


def test_a_new_token_signs_out_the_sessions_of_the_old_one() -> None:
    secret = "the-same-secret"
    before = Access(AccessSettings(reviewers={"alice": hash_token("old")}, session_secret=secret))
    response = Response()
    before.start_session(response, "alice")
    cookie = SimpleCookie(response.headers["set-cookie"])[SESSION_COOKIE].value
    assert before.session(cookie).reviewer == "alice"
    same = Access(AccessSettings(reviewers=before.settings.reviewers, session_secret=secret))
    assert same.session(cookie).reviewer == "alice"  # a restart with the same settings keeps sessions
    after = Access(AccessSettings(reviewers={"alice": hash_token("new")}, session_secret=secret))
    with pytest.raises(NotSignedIn):
        after.session(cookie)
    removed = Access(AccessSettings(reviewers={"bob": hash_token("b")}, session_secret=secret))
    with pytest.raises(NotSignedIn):
        removed.session(cookie)
