"""The console in a real browser (Debian's Chromium, headless): a new user's path through
`guardstream demo --console`, and attacker text that stays inert.

Screenshots go to tests/out/console/ (the README shows two of them)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from dataclasses import dataclass

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from console.settings import ConsoleSettings
from schemas.events import AuditLabel
from tests.console.browser import chromium, press, screenshot, sign_in, wait_for, waiting
from tests.console.conftest import TOKENS, chat, console_with, verdict
from tests.kafka_io import read_topic
from topics.local_broker import LocalBroker
from topics.registry import TopicNames

SCRIPT = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'


@dataclass
class Demo:
    process: asyncio.subprocess.Process
    address: str
    token: str
    labels_topic: str
    bootstrap: str
    output: list[str]


async def start_demo() -> Demo:
    """`guardstream demo --console` as a user runs it, read until it prints where to sign in."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "guardstream", "demo", "--events", "32", "--show", "4", "--console", "--console-port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env={**os.environ, "COLUMNS": "150"},
        start_new_session=True)  # a process group of its own, as a terminal gives it
    assert process.stdout is not None
    output: list[str] = []
    while not output or not output[-1].startswith("press Ctrl-C"):
        line = await asyncio.wait_for(process.stdout.readline(), 240)
        assert line, "the demo ended before it opened the console:\n" + "".join(output)
        output.append(line.decode())
    text = "".join(output)
    found = re.search(r"labels go to: (\S+) on (\S+)", text)
    assert found, text
    return Demo(process, re.search(r"^console: (\S+)", text, re.M).group(1),  # type: ignore[union-attr]
                re.search(r"^token: (\S+)", text, re.M).group(1), found.group(1), found.group(2), output)  # type: ignore[union-attr]


def label_by_keyboard(driver: WebDriver) -> tuple[str, bool | None, bool]:
    """Label the open item against its (latest) verdict, as a reviewer correcting a wrong verdict would, with
    the keys alone; the event id, what the verdict said, and what the reviewer said."""
    item = driver.find_element(By.ID, "item").get_attribute("data-item")
    event_id = driver.find_element(By.CSS_SELECTOR, "h1 code").text
    badges = driver.find_elements(By.CSS_SELECTOR, ".verdict:last-of-type p:first-child .badge")
    said = {"harmful": True, "unharmful": False}.get(badges[0].text) if badges else None
    harmful = not said if said is not None else True
    keys = "1" if harmful else "2"
    if driver.find_elements(By.ID, "response-harmful"):
        keys += "3" if harmful else "4"
    press(driver, keys)  # the form is sent once every part is chosen
    waiting(driver).until(
        lambda d: not d.find_elements(By.ID, "item") or d.find_element(By.ID, "item").get_attribute("data-item") != item)
    return event_id, said, harmful


def queue_labels(driver: WebDriver, address: str) -> tuple[int, int]:
    driver.get(address + "quality")
    wait_for(driver, "#queue-labels")
    labels = int(driver.find_element(By.ID, "queue-labels").text)
    judged = int(re.search(r"\((\d+) judged labels\)", driver.page_source).group(1))  # type: ignore[union-attr]
    return labels, judged


async def test_a_new_user_opens_the_demo_console_and_corrects_three_verdicts_by_keyboard() -> None:
    demo = await start_demo()
    try:
        with chromium() as driver:
            sign_in(driver, demo.address, "demo", demo.token)
            labels_before, judged_before = queue_labels(driver, demo.address)
            assert labels_before == 0
            driver.get(demo.address)
            given = []
            for n in range(3):
                wait_for(driver, "#item")
                screenshot(driver, f"review-{n + 1}.png")
                given.append(label_by_keyboard(driver))
            labels_after, judged_after = queue_labels(driver, demo.address)
            screenshot(driver, "quality.png")
            assert labels_after == 3
            assert judged_after > judged_before  # the random sample the quality page estimates from grew
        records = await read_topic(demo.bootstrap, demo.labels_topic, 3, timeout_s=60)
        labels = {AuditLabel.model_validate_json(r.value).event_id: AuditLabel.model_validate_json(r.value)
                  for r in records}
        assert set(labels) == {event_id for event_id, _, _ in given}
        for event_id, said, harmful in given:
            assert labels[event_id].labeller == "demo" and labels[event_id].request_harmful is harmful
            assert said is None or harmful is not said  # each corrects what its verdict said
            assert labels[event_id].verdict is not None and labels[event_id].event is not None
        assert any(said is not None for _, said, _ in given)  # at least one ok verdict was corrected
        # the demo shows the user each label as it arrives on the audit topic
        shown = [f"label on {demo.labels_topic}: event {event_id}: request" for event_id, _, _ in given]
        assert demo.process.stdout is not None
        while not all(any(line.startswith(s) for line in demo.output) for s in shown):
            line = await asyncio.wait_for(demo.process.stdout.readline(), 60)
            assert line, "the demo ended before it showed the labels:\n" + "".join(demo.output)
            demo.output.append(line.decode())
    finally:
        os.killpg(demo.process.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group gets it
        rest, _ = await asyncio.wait_for(demo.process.communicate(), 60)
    assert demo.process.returncode == 0, rest.decode()
    assert "Traceback" not in rest.decode() and "Connect call failed" not in rest.decode()  # a clean stop


async def test_a_script_in_an_event_stays_text_in_the_browser(
        broker: LocalBroker, topics: TopicNames, console_settings: ConsoleSettings) -> None:
    judged = [(chat("xss", SCRIPT, response=SCRIPT), verdict("xss", harmful=True, score=0.6, reasoning=SCRIPT))]
    async with console_with(console_settings, judged) as (service, _):

        def look() -> tuple[object, str, str]:
            with chromium() as driver:
                sign_in(driver, service.address, "alice", TOKENS["alice"])
                wait_for(driver, "#event-text")
                screenshot(driver, "script-event.png")
                return (driver.execute_script("return window.pwned"), driver.find_element(By.ID, "event-text").text,
                        driver.find_element(By.CSS_SELECTOR, ".reasoning").text)

        pwned, text, reasoning = await asyncio.to_thread(look)
    assert pwned is None
    assert text == SCRIPT and reasoning == SCRIPT  # shown as the text it is
