"""Token checks under load, over real HTTP against a running console: a flood of wrong sign-ins and reports
does not slow a signed-in reviewer's pages, scrypt work is bounded per client and in total (429 with
Retry-After beyond it), and concurrent wrong guesses cannot get past the sign-in throttle together."""

from __future__ import annotations

import asyncio
import json

from console.settings import ConsoleSettings
from tests.console.conftest import REPORTER, TOKENS, chat, console_with, verdict
from tests.console.http import Client, Reply
from tests.waiting import wait_until
from topics.local_broker import LocalBroker
from topics.registry import TopicNames

FLOOD = 100
WRONG_REPORT = {"Authorization": f"Bearer {REPORTER[0]}:not-the-token"}
RIGHT_REPORT = {"Authorization": f"Bearer {REPORTER[0]}:{REPORTER[1]}"}
A_REPORT = {"event_id": "never-seen"}  # the token is checked first: a right one gets 404, a wrong one 401


def without_limits(settings: ConsoleSettings) -> None:
    """Rate limits far above the flood, so that every wrong token of it is checked with scrypt."""
    access = settings.access
    access.checks_per_s = access.client_checks_per_s = 10_000.0
    access.check_burst = access.client_check_burst = 10_000


def from_address(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


async def test_a_flood_of_wrong_tokens_does_not_hold_up_a_signed_in_reviewers_pages(
        broker: LocalBroker, topics: TopicNames, console_settings: ConsoleSettings) -> None:
    without_limits(console_settings)
    async with console_with(console_settings, [(chat("e1"), verdict("e1", error="x"))]) as (service, _):
        alice = Client(service.address)
        assert (await alice.sign_in("alice", TOKENS["alice"])).status == 303
        answered: list[int] = []
        signed_in: list[int] = []

        async def wrong_report() -> None:
            reply = await Client(service.address).post("/api/reports", json=A_REPORT, headers=WRONG_REPORT)
            answered.append(reply.status)

        async def unknown_sign_in(n: int) -> None:
            signed_in.append((await Client(service.address).sign_in(f"nobody-{n}", "guess")).status)

        flood = [asyncio.create_task(wrong_report()) for _ in range(FLOOD)]
        flood += [asyncio.create_task(unknown_sign_in(n)) for n in range(FLOOD)]
        try:
            await wait_until(lambda: answered and len(signed_in) == FLOOD, 120,
                             "the unknown ids refused, and the first wrong report")
            before = len(answered)
            pages = [await alice.get("/items/1") for _ in range(5)]
            during = len(answered) - before
        finally:
            await asyncio.gather(*flood)
        assert [page.status for page in pages] == [200] * 5
        assert during < (FLOOD - before) / 4, f"the pages waited for {during} of {FLOOD - before} scrypt checks"
        assert answered == [401] * FLOOD and signed_in == [401] * FLOOD  # every wrong token checked, and refused


async def test_token_checks_beyond_a_clients_share_or_the_total_are_refused_before_scrypt(
        broker: LocalBroker, topics: TopicNames, console_settings: ConsoleSettings) -> None:
    console_settings.forwarded_allow_ips = "127.0.0.1"  # each test client's address is its X-Forwarded-For
    access = console_settings.access
    access.client_check_burst, access.client_checks_per_s = 3, 0.001
    access.check_burst, access.checks_per_s = 7, 0.001
    async with console_with(console_settings, []) as (service, _):
        api = Client(service.address)
        trusted = {**RIGHT_REPORT, **from_address("10.0.0.99")}
        assert (await api.post("/api/reports", json=A_REPORT, headers=trusted)).status == 404
        flood = await asyncio.gather(*[api.post("/api/reports", json=A_REPORT,
                                                headers={**WRONG_REPORT, **from_address("10.0.0.1")})
                                       for _ in range(10)])
        assert sorted(r.status for r in flood) == [401] * 3 + [429] * 7  # the client's share: 3
        assert all(retry_after(r) >= 1 for r in flood if r.status == 429)
        late = await sign_in_from(service.address, "10.0.0.1", "bob")
        assert late.status == 429  # the right token, refused before it was looked at: the client's share is spent
        others = [await api.post("/api/reports", json=A_REPORT, headers={**WRONG_REPORT, **from_address(f"10.0.1.{n}")})
                  for n in range(5)]
        assert [r.status for r in others] == [401, 401, 401, 429, 429]  # 1 + 3 + 3 = 7 checks in all
        assert "try again" in json.loads(others[-1].body)["error"] and retry_after(others[-1]) >= 1
        refused = await sign_in_from(service.address, "10.0.2.1", "alice")
        assert refused.status == 429 and retry_after(refused) >= 1  # a new client, but the total is spent
        again = await api.post("/api/reports", json=A_REPORT, headers=trusted)
        assert again.status == 404  # a token checked before is known without scrypt, however busy the console


async def test_concurrent_wrong_guesses_cannot_pass_the_sign_in_throttle_together(
        broker: LocalBroker, topics: TopicNames, console_settings: ConsoleSettings) -> None:
    without_limits(console_settings)
    limit = console_settings.access.max_failed_sign_ins
    async with console_with(console_settings, []) as (service, _):
        async def guess(n: int) -> Reply:
            return await Client(service.address).sign_in("alice", f"guess-{n}")

        replies = await asyncio.gather(*[guess(n) for n in range(40)])
        statuses = sorted(r.status for r in replies)
        assert statuses == [401] * limit + [429] * (40 - limit), statuses  # only `limit` reached the token check
        locked = [r for r in replies if r.status == 429]
        assert all("too many failed sign-ins" in r.text and retry_after(r) >= 1 for r in locked)
        assert (await Client(service.address).sign_in("alice", TOKENS["alice"])).status == 429


async def sign_in_from(base: str, address: str, reviewer: str) -> Reply:
    client = Client(base)
    form = await client.get("/signin")
    return await client.post("/signin", data={"reviewer": reviewer, "token": TOKENS[reviewer], "csrf": form.csrf()},
                             headers=from_address(address))


def retry_after(reply: Reply) -> int:
    return int(reply.headers.get("Retry-After", "0"))
