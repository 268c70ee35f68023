"""The viewer in headless Chromium (Debian's chromium + chromium-driver via Selenium): open a
suite, compare every system on one qa case, filter the case list; screenshots as artifacts."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.chromium import browser_fixture

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


browser = browser_fixture("1360,1000")


def capture(driver, artifacts: Path, label: str) -> Path:
    """A full-page screenshot: the window grows to the page's height first."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1360, max(700, min(int(height) + 40, 4000)))
    path = artifacts / f"viewer-{label}.png"
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 5000, path
    return path


def test_compare_systems_on_a_case_and_filter(browser, viewer_url, viewer_data, artifacts_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, 20)
    browser.get(viewer_url + "/")
    browser.find_element(By.LINK_TEXT, "qa").click()  # the overview's link to the suite
    wait.until(ec.presence_of_element_located((By.ID, "means")))
    means = browser.find_element(By.ID, "means")
    for system in viewer_data.systems:
        assert system in means.text
    assert browser.find_elements(By.CSS_SELECTOR, "#means td.fail"), "no failing cell marked"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#trend svg")) == 3
    capture(browser, artifacts_dir, "suite-qa")

    # One qa case, every system side by side with its scores.
    browser.find_element(By.CSS_SELECTOR, "#case-links a[href$='/cases/qa-1']").click()
    outputs = wait.until(ec.presence_of_element_located((By.ID, "outputs")))
    assert browser.find_element(By.ID, "expected").text == "colour 1"
    rows = outputs.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert [r.find_element(By.TAG_NAME, "td").text for r in rows] == list(viewer_data.systems)
    echo = browser.find_element(By.ID, "output-echo").text
    assert "What colour is item 1?" in echo
    capture(browser, artifacts_dir, "case-qa-1")

    # The case list, filtered in the form: tag "hard", failing exact match for lead-1.
    browser.find_element(By.LINK_TEXT, "cases").click()
    wait.until(ec.presence_of_element_located((By.ID, "filters")))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#cases tbody tr")) == 5
    Select(browser.find_element(By.ID, "tag")).select_by_value("hard")  # submits on change
    wait.until(ec.url_contains("tag=hard"))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#cases tbody tr")) == 3)
    Select(browser.find_element(By.ID, "metric")).select_by_value("rouge1")
    wait.until(ec.url_contains("metric=rouge1"))
    browser.find_element(By.ID, "disagree").click()
    wait.until(ec.url_contains("disagree=1"))
    summary = browser.find_element(By.ID, "summary").text
    assert "tagged 'hard'" in summary and "systems disagree on rouge1" in summary
    ids = [r.get_attribute("id") for r in browser.find_elements(By.CSS_SELECTOR, "#cases tbody tr")]
    assert ids == ["case-qa-0", "case-qa-2", "case-qa-4"]
    failing = browser.find_elements(By.CSS_SELECTOR, "#cases td.fail")
    assert failing and all(cell.text.startswith("✗") for cell in failing)
    capture(browser, artifacts_dir, "cases-filtered")

    # The filtered list is a link: opening it again gives the same rows.
    browser.get(browser.current_url)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#cases tbody tr")) == 3

    browser.get(f"{viewer_url}/models/{viewer_data.model}")
    wait.until(ec.presence_of_element_located((By.ID, "chart")))
    assert browser.execute_script("return document.getElementById('chart').naturalWidth") > 100
    capture(browser, artifacts_dir, "model")
    browser.get(f"{viewer_url}/suites/qa/systems/tunable/diff")
    assert "regressed" in browser.find_element(By.ID, "changes").text
    first = browser.find_element(By.CSS_SELECTOR, "#case-changes tbody tr")
    assert "newly failing" in first.text
    assert first.find_element(By.CSS_SELECTOR, ".output-diff ins").text == "unrelated"
    capture(browser, artifacts_dir, "diff")
    Select(browser.find_element(By.ID, "diff-show")).select_by_value("newly_failing")  # submits
    wait.until(ec.url_contains("show=newly_failing"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#case-changes tbody tr")) == 5
    browser.find_element(By.LINK_TEXT, "tunable").click()  # the breadcrumb to the partition
    wait.until(ec.presence_of_element_located((By.ID, "metrics")))
    assert browser.find_elements(By.CSS_SELECTOR, "#system-cases td.fail")
    capture(browser, artifacts_dir, "partition-qa-tunable")
