"""The approvals page in headless Chromium (Debian's chromium + chromium-driver via Selenium)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.approvals_page import serve_approvals_page
from support.chromium import browser_fixture

from flowstone.approvals.links import ALL_REQUESTS, LinkSigner
from flowstone.approvals.machine import ApprovalPolicy, State
from flowstone.approvals.store import ApprovalStore

pytestmark = pytest.mark.slow


browser = browser_fixture("1200,900")


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
    with serve_approvals_page(store, signer) as base:
        # The link a notification carries for alice: it names her, the page says so.
        browser.get(signer.url(base, ALL_REQUESTS, "alice"))
        assert "You are alice" in browser.find_element(By.ID, "whoami").text
        card = browser.find_element(By.ID, f"request-{request.id}")
        assert "0.93" in card.text and "qa|tuned" in card.text
        assert browser.find_element(By.ID, f"request-{other.id}")

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
