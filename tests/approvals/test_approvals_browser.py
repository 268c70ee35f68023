"""The approvals page in headless Chromium (Debian's chromium + chromium-driver via Selenium)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowstone.approvals.links import ALL_REQUESTS, LinkSigner
from flowstone.approvals.machine import ApprovalPolicy, State
from flowstone.approvals.store import ApprovalStore
from flowstone.approvals.web import make_server, serve_in_thread

pytestmark = pytest.mark.slow


@pytest.fixture
def browser(chromium_ready: str, tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium_ready
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1200,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_click_approve_in_chromium(browser, store_url: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    store = ApprovalStore(store_url)
    policy = ApprovalPolicy(approvers={"*": ["alice"]})
    request = store.open_request(
        "promoted_system", "qa|tuned", "v7", {"exact_match": 0.93, "cases": 40}, policy
    ).request
    other = store.open_request("promoted_system", "qa|base", "v2", {}, policy).request
    signer = LinkSigner("browser-test-secret", ttl_seconds=600)
    server = make_server(store, signer, "127.0.0.1", 0)
    serve_in_thread(server)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        browser.get(signer.url(base, ALL_REQUESTS))
        card = browser.find_element(By.ID, f"request-{request.id}")
        assert "0.93" in card.text and "qa|tuned" in card.text
        assert browser.find_element(By.ID, f"request-{other.id}")

        browser.find_element(By.ID, f"by-{request.id}").send_keys("alice")
        browser.find_element(By.ID, f"comment-{request.id}").send_keys("clean win")
        browser.find_element(By.ID, f"approve-{request.id}").click()
        message = WebDriverWait(browser, 15).until(
            ec.presence_of_element_located((By.ID, "message"))
        )
        assert "approved by alice" in message.text
        shot = tmp_path / "approvals-after-approve.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 1000

        decided = store.get(request.id)
        assert decided.state == State.APPROVED and decided.decided_by == "alice"
        assert decided.comment == "clean win"
        assert store.get(other.id).state == State.PENDING
        # The decided request has left the pending list; the other one is still there.
        assert not browser.find_elements(By.ID, f"request-{request.id}")
        assert browser.find_elements(By.ID, f"request-{other.id}")

        # A tampered link shows the refusal, not the list.
        browser.get(signer.url(base, ALL_REQUESTS)[:-3] + "xyz")
        assert "does not match" in browser.find_element(By.ID, "error").text
    finally:
        server.shutdown()
        server.server_close()
