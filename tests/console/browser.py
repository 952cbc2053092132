"""Debian's Chromium, headless, driven through Debian's chromedriver with Selenium (nothing is downloaded:
both paths are given, so Selenium Manager is not asked)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = Path(__file__).resolve().parents[1] / "out" / "console"
# the flags a closed network needs: no background connections, no component updates, no sign-in sync
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--window-size=1400,1100")


@contextmanager
def chromium() -> Iterator[WebDriver]:
    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), "`make test` installs Debian's chromium and chromium-driver"
    with tempfile.TemporaryDirectory(prefix="guardstream-chromium-") as profile:
        options = Options()
        options.binary_location = str(CHROMIUM)
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
        driver.set_page_load_timeout(30)
        try:
            yield driver
        finally:
            driver.quit()


def press(driver: WebDriver, keys: str) -> None:
    """Keys typed on the page itself (not into a field), as a reviewer does."""
    ActionChains(driver).send_keys(keys).perform()


def waiting(driver: WebDriver, timeout_s: float = 30) -> WebDriverWait:
    """A wait that looks again when the page was replaced under it (a form sent, a redirect followed)."""
    return WebDriverWait(driver, timeout_s, ignored_exceptions=(StaleElementReferenceException,))


def wait_for(driver: WebDriver, css: str, timeout_s: float = 30) -> object:
    return waiting(driver, timeout_s).until(lambda d: d.find_elements(By.CSS_SELECTOR, css) or None)


def sign_in(driver: WebDriver, address: str, reviewer: str, token: str) -> None:
    driver.get(address)
    wait_for(driver, "#reviewer-id")
    driver.find_element(By.ID, "reviewer-id").send_keys(reviewer)
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "signin").click()
    waiting(driver).until(lambda d: "/signin" not in d.current_url)


def screenshot(driver: WebDriver, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    driver.save_screenshot(str(path))
    return path
