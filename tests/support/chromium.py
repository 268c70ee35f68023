"""Headless Chromium for the browser tests (tests/approvals and tests/ui), kept once.

Chromium and its driver are Debian's (/usr/bin/chromium, /usr/bin/chromedriver), installed with
apt-get the first time they are missing (Playwright's own browser download fails here). Both
browser suites had a copy of the install step, of the ``chromium_ready`` fixture and of the
flags the driver is started with.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def ensure_chromium(who: str) -> str | None:
    """Install Debian's chromium + chromium-driver once; return a skip reason if impossible.

    ``who`` names the suite in the line printed after an install (``[who] installed ...``)."""
    if os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER):
        return None
    apt = shutil.which("apt-get")
    if apt is None:
        return "chromium is missing and apt-get is not available to install it"
    if os.geteuid() != 0:
        return "chromium is missing and installing it with apt-get needs root"
    started = time.monotonic()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        [apt, "update"],
        [apt, "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"],
    ):
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            return f"`{' '.join(command)}` failed ({done.returncode}): {done.stderr[-500:]}"
    print(f"\n[{who}] installed chromium + chromium-driver with apt in "
          f"{time.monotonic() - started:.0f}s")  # fmt: skip
    return None


def chromium_ready_fixture(who: str):
    """A session fixture ``chromium_ready``: the chromium binary's path, or a skip with the
    reason it cannot be installed. In a conftest: ``chromium_ready = chromium_ready_fixture(...)``."""

    @pytest.fixture(scope="session", name="chromium_ready")
    def chromium_ready() -> str:
        reason = ensure_chromium(who)
        if reason:
            pytest.skip(reason)
        return CHROMIUM

    return chromium_ready


def browser_fixture(window_size: str):
    """A test fixture ``browser``: a headless driver (``start_chromium``) on the session's
    ``chromium_ready`` binary with a profile in the test's temp folder, quit afterwards. In a
    test module: ``browser = browser_fixture("1200,900")``."""

    @pytest.fixture(name="browser")
    def browser(chromium_ready: str, tmp_path: Path) -> Iterator[Any]:
        driver = start_chromium(chromium_ready, tmp_path / "chromium-profile", window_size)
        try:
            yield driver
        finally:
            driver.quit()

    return browser


def start_chromium(binary: str, profile_dir: Path, window_size: str) -> Any:
    """A headless Selenium Chrome driver on ``binary`` with its own profile folder, a 30 s page
    load timeout and ``window_size`` ("width,height"); the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (
        "--headless",
        "--no-sandbox",  # we run as root in a container
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile_dir}",
        f"--window-size={window_size}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    return driver
