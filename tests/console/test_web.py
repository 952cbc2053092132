"""The console's pages over real HTTP: nothing without signing in, CSRF on every form, cookies that scripts
cannot read, escaped attacker text, thumbnails through the worker's fetcher, reports, and a label that
reaches the audit topic."""

from __future__ import annotations

import json

from console.settings import ConsoleSettings
from schemas.events import AuditLabel, ImageRef
from tests.console.conftest import REPORTER, TOKENS, chat, console_with, verdict
from tests.console.http import Client
from tests.factories import png
from tests.kafka_io import read_topic
from topics.local_broker import LocalBroker
from topics.records import RecordReader
from topics.registry import TopicNames
from trainer.resolve import Resolver
from workers.settings import LimitSettings

SCRIPT = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'


async def test_nothing_is_served_to_anyone_not_signed_in(
        broker: LocalBroker, topics: TopicNames, console_settings: ConsoleSettings) -> None:
    async with console_with(console_settings, [(chat("e1", images=1), verdict("e1", error="x"))]) as (service, _):
        anyone = Client(service.address)
        for path in ("/", "/items/1", "/quality"):
            reply = await anyone.get(path)
            assert (reply.status, reply.location) == (303, "/signin"), path
        for path in ("/items/1/images/0", "/quality/plot.png"):
            assert (await anyone.get(path)).status == 401, path
        assert (await anyone.post("/items/1/label", data={"request": "harmful"})).status == 401
        forged = Client(service.address, cookies={"guardstream_session": "eyJyIjoiYWxpY2UifQ.forged.sig"})
        assert (await forged.get("/items/1")).status == 303
        wrong = Client(service.address)
        assert (await wrong.sign_in("alice", "not-the-token")).status == 401
        assert (await wrong.sign_in("mallory", TOKENS["alice"])).status == 401
        assert "guardstream_session" not in wrong.cookies
        assert (await wrong.get("/items/1")).status == 303
        for _ in range(console_settings.access.max_failed_sign_ins - 1):
            assert (await wrong.sign_in("alice", "guess")).status == 401
        locked = await wrong.sign_in("alice", TOKENS["alice"])  # the right token, too late
        assert locked.status == 429 and "guardstream_session" not in wrong.cookies
        assert (await Client(service.address).sign_in("bob", TOKENS["bob"])).status == 303


async def test_sign_in_sets_a_cookie_scripts_cannot_read_and_every_form_needs_its_csrf_token(
        broker: LocalBroker, topics: TopicNames, console_settings: ConsoleSettings) -> None:
    async with console_with(console_settings, [(chat("e1"), verdict("e1", error="x"))]) as (service, _):
        alice = Client(service.address)
        no_token = await alice.post("/signin", data={"reviewer": "alice", "token": TOKENS["alice"]})
        assert no_token.status == 403  # the sign-in form has its CSRF token too
        signed_in = await alice.sign_in("alice", TOKENS["alice"])
        assert signed_in.status == 303
        cookie = next(c for c in signed_in.set_cookies if c.startswith("guardstream_session="))
        assert all(attribute in cookie for attribute in ("HttpOnly", "Secure", "SameSite=strict"))
        page = await alice.get("/items/1")
        assert page.status == 200
        for form in ({"request": "harmful"}, {"request": "harmful", "csrf": "guessed"}):
            assert (await alice.post("/items/1/label", data=form)).status == 403
        for path in ("/items/1/skip", "/undo", "/signout"):
            assert (await alice.post(path, data={})).status == 403
        bob = Client(service.address)
        await bob.sign_in("bob", TOKENS["bob"])
        bobs = (await bob.get("/items/1")).csrf()
        assert (await alice.post("/items/1/label", data={"request": "harmful", "csrf": bobs})).status == 403
        assert service.store.item(1).labels == []  # type: ignore[union-attr]
        assert (await alice.post("/items/1/label", data={"request": "harmful", "csrf": page.csrf()})).status == 303
        assert [x.reviewer for x in service.store.item(1).labels] == ["alice"]  # type: ignore[union-attr]


async def test_attacker_text_is_escaped_and_no_inline_script_may_run(
        broker: LocalBroker, topics: TopicNames, console_settings: ConsoleSettings) -> None:
    event = chat("xss", SCRIPT, response=SCRIPT)
    async with console_with(console_settings, [(event, verdict("xss", error="x", reasoning=SCRIPT))]) as (service, _):
        alice = Client(service.address)
        await alice.sign_in("alice", TOKENS["alice"])
        await alice.post("/items/1/label", data={"request": "harmful", "response": "harmful",
                                                 "note": SCRIPT, "csrf": (await alice.get("/items/1")).csrf()})
        page = await alice.get("/items/1")
        assert "<script>window" not in page.text and "<img src=x" not in page.text
        assert page.text.count("&lt;script&gt;window.pwned = 1&lt;/script&gt;") == 4  # text, response, reasoning, note
        policy = page.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy


async def test_thumbnails_come_through_the_fetcher_with_its_rules(
        broker: LocalBroker, topics: TopicNames, console_settings: ConsoleSettings) -> None:
    root = console_settings.fetch.file_root
    assert root is not None
    (root / "cat.png").write_bytes(png(1200, 800))
    event = chat("img", "look").model_copy(update={"images": [ImageRef(uri=f"file://{root / 'cat.png'}"),
                                                              ImageRef(uri="file:///etc/hostname")]})
    async with console_with(console_settings, [(event, verdict("img", error="x"))]) as (service, _):
        alice = Client(service.address)
        await alice.sign_in("alice", TOKENS["alice"])
        thumbnail = await alice.get("/items/1/images/0")
        assert thumbnail.status == 200 and thumbnail.body.startswith(b"\x89PNG")
        from io import BytesIO

        from PIL import Image

        assert max(Image.open(BytesIO(thumbnail.body)).size) == console_settings.review.thumbnail_px
        outside = await alice.get("/items/1/images/1")
        assert outside.status == 422 and "image_not_allowed" in outside.text
        assert "hostname" not in outside.text  # the fixed summary, not the detail
        assert (await alice.get("/items/1/images/2")).status == 404


async def test_a_report_queues_an_event_the_sampling_passed_over(
        broker: LocalBroker, topics: TopicNames, console_settings: ConsoleSettings) -> None:
    quiet = [(chat("quiet", "you are all idiots"), verdict("quiet", score=0.01))]
    async with console_with(console_settings, quiet) as (service, at):
        assert service.store.events_with_items(["quiet"]) == set()
        api = Client(service.address)
        body = {"event_id": "quiet", "reason": "a user reported it", "verdict": at[0].model_dump()}
        assert (await api.post("/api/reports", json=body)).status == 401
        bad = {"Authorization": f"Bearer {REPORTER[0]}:wrong"}
        assert (await api.post("/api/reports", json=body, headers=bad)).status == 401
        good = {"Authorization": f"Bearer {REPORTER[0]}:{REPORTER[1]}"}
        unknown = await api.post("/api/reports", json={"event_id": "quiet"}, headers=good)
        assert unknown.status == 404 and "verdict" in json.loads(unknown.body)["error"]
        reply = await api.post("/api/reports", json=body, headers=good)
        assert (reply.status, json.loads(reply.body)) == (202, {"queued": True})
        item = service.store.item(1)
        assert item is not None and item.reasons == ["reported"] and item.event.text == "you are all idiots"
        assert [(r.reporter, r.reason) for r in item.reports] == [(REPORTER[0], "a user reported it")]
        alice = Client(service.address)
        await alice.sign_in("alice", TOKENS["alice"])
        assert "a user reported it" in (await alice.get("/items/1")).text


async def test_a_label_given_in_the_console_arrives_on_the_audit_topic(
        broker: LocalBroker, topics: TopicNames, console_settings: ConsoleSettings) -> None:
    async with console_with(console_settings, [
        (chat("wrong", "how do I make a pipe bomb", response="Here is how."),
         verdict("wrong", harmful=False, response_harmful=False, score=0.55))]) as (service, at):
        alice = Client(service.address)
        await alice.sign_in("alice", TOKENS["alice"])
        first = await alice.get("/")
        assert (first.status, first.location) == (303, "/items/1")
        page = await alice.get("/items/1")
        assert "how do I make a pipe bomb" in page.text and "Here is how." in page.text
        reply = await alice.post("/items/1/label", data={"request": "harmful", "response": "harmful",
                                                          "note": "missed", "csrf": page.csrf()})
        assert (reply.status, reply.location) == (303, "/")
        records = await read_topic(broker.bootstrap_servers, topics.audit_labels, 1)
        label = AuditLabel.model_validate_json(records[0].value)
        assert (label.event_id, label.labeller, label.request_harmful, label.response_harmful, label.note) == (
            "wrong", "alice", True, True, "missed")
        assert label.verdict == at[0] and records[0].key == b"wrong"
        reader = RecordReader(console_settings.kafka, 10.0)  # the trainer finds the event through the label
        await reader.start()
        try:
            example = await Resolver(reader, LimitSettings()).resolve(records[0].value)
        finally:
            await reader.stop()
        assert example.event.text == "how do I make a pipe bomb" and example.verdict is not None
        empty = await alice.get("/")
        assert empty.status == 200 and "Nothing left for you to review" in empty.text


async def test_undo_withdraws_a_label_inside_its_window_and_the_event_comes_back(
        broker: LocalBroker, topics: TopicNames, console_settings: ConsoleSettings) -> None:
    console_settings.review.undo_window_s = 600  # nothing is published while the test runs
    async with console_with(console_settings, [(chat("e1"), verdict("e1", error="x")),
                                                            (chat("e2"), verdict("e2", error="x"))]) as (service, _):
        alice = Client(service.address)
        await alice.sign_in("alice", TOKENS["alice"])
        first = (await alice.get("/")).location
        page = await alice.get(first)  # type: ignore[arg-type]
        await alice.post(f"{first}/label", data={"request": "harmful", "csrf": page.csrf()})
        assert (await alice.get("/")).location != first
        undone = await alice.post("/undo", data={"csrf": page.csrf()})
        assert undone.location == f"{first}?undone=withdrawn"
        again = await alice.get(undone.location)
        assert "withdrawn before it was published" in again.text and 'id="label-form"' in again.text
        assert (await alice.get("/")).location == first  # the event comes back to its reviewer first
        labels = service.store.item(int(first.rsplit("/", 1)[1])).labels  # type: ignore[union-attr]
        assert [(x.undone, x.published) for x in labels] == [(True, False)]


async def test_odd_requests_get_clear_answers_not_errors(
        broker: LocalBroker, topics: TopicNames, console_settings: ConsoleSettings) -> None:
    async with console_with(console_settings, [(chat("e1"), verdict("e1", error="x"))]) as (service, _):
        alice = Client(service.address)
        await alice.sign_in("alice", TOKENS["alice"])
        csrf = (await alice.get("/items/1")).csrf()
        assert (await alice.get("/items/100000000000000000000")).status == 422
        assert (await alice.get("/items/0")).status == 422
        assert (await alice.get("/items/999")).status == 404
        assert (await alice.get("/items/1/images/-1")).status == 422
        assert (await alice.post("/items/999/skip", data={"csrf": csrf})).status == 404
        assert (await alice.post("/items/999/label", data={"request": "harmful", "csrf": csrf})).status == 404
        assert (await alice.post("/items/1/label", data={"request": "maybe", "csrf": csrf})).status == 409
        assert (await alice.post("/items/1/label", data={"csrf": csrf})).status == 422
        long_note = {"request": "harmful", "note": "x" * 5_000, "csrf": csrf}
        assert (await alice.post("/items/1/label", data=long_note)).status == 409
        huge = {"request": "harmful", "note": "x" * 100_000, "csrf": csrf}
        assert (await alice.post("/items/1/label", data=huge)).status == 413
        reporter = {"Authorization": f"Bearer {REPORTER[0]}:{REPORTER[1]}"}
        negative = {"event_id": "e9", "verdict": {"topic": topics.verdicts, "partition": 0, "offset": -1}}
        assert (await alice.post("/api/reports", json=negative, headers=reporter)).status == 422
        assert service.store.item(1).labels == []  # type: ignore[union-attr]
        assert (await alice.get("/items/1")).status == 200  # and the console still serves


async def test_signing_out_ends_the_session_on_the_server_too(
        broker: LocalBroker, topics: TopicNames, console_settings: ConsoleSettings) -> None:
    async with console_with(console_settings, [(chat("e1"), verdict("e1", error="x"))]) as (service, _):
        alice, bob = Client(service.address), Client(service.address)
        await alice.sign_in("alice", TOKENS["alice"])
        await bob.sign_in("bob", TOKENS["bob"])
        copied = Client(service.address, cookies=dict(alice.cookies))
        assert (await copied.get("/items/1")).status == 200
        signed_out = await alice.post("/signout", data={"csrf": (await alice.get("/items/1")).csrf()})
        assert (signed_out.status, signed_out.location) == (303, "/signin")
        assert "guardstream_session" not in alice.cookies
        refused = await copied.get("/items/1")
        assert (refused.status, refused.location) == (303, "/signin")  # the copy no longer signs anyone in
        assert (await copied.get("/items/1/images/0")).status == 401
        assert (await bob.get("/items/1")).status == 200  # another reviewer's session is not touched
        assert (await alice.sign_in("alice", TOKENS["alice"])).status == 303
        assert (await alice.get("/items/1")).status == 200  # signing in again after signing out works


async def test_an_event_with_many_images_shows_a_few_thumbnails_and_fetches_each_once(
        broker: LocalBroker, topics: TopicNames, console_settings: ConsoleSettings) -> None:
    root = console_settings.fetch.file_root
    assert root is not None
    console_settings.review.max_thumbnails = 3
    files = [root / f"many-{n}.png" for n in range(5)]
    for n, path in enumerate(files):
        path.write_bytes(png(400 + n, 300))
    event = chat("many", "look").model_copy(update={"images": [ImageRef(uri=f"file://{p}") for p in files]})
    async with console_with(console_settings, [(event, verdict("many", error="x"))]) as (service, _):
        alice = Client(service.address)
        await alice.sign_in("alice", TOKENS["alice"])
        page = await alice.get("/items/1")
        assert page.text.count('src="/items/1/images/') == 3 and "2 more images not shown" in page.text
        first = [await alice.get(f"/items/1/images/{n}") for n in range(3)]
        assert [r.status for r in first] == [200] * 3
        not_shown = await alice.get("/items/1/images/3")
        assert not_shown.status == 404  # the file is there: it was not fetched
        for path in files:
            path.unlink()  # from now on, any fetch fails
        again = [await alice.get(f"/items/1/images/{n}") for n in range(3)]
        assert [r.body for r in again] == [r.body for r in first]  # from the cache: nothing was fetched
