"""Fixtures for the browser tests: `dagster dev` on loopback, headless Chromium, artifacts.

- Chromium and its driver are Debian's (/usr/bin/chromium, /usr/bin/chromedriver), installed
  with apt-get the first time they are missing (Playwright's own browser download fails here):
  tests/support/chromium.py, shared with tests/approvals.
- `dagster dev -w workspace.yaml` runs the repo's code location the way `make ui` does, against
  a throw-away DAGSTER_HOME, outputs folder and warehouse, in its own process group so that
  teardown can end every process it started (webserver, daemon, code server, run workers).
- Screenshots (and, on failure, the page source) land in $FLOWSTONE_TEST_ARTIFACTS (default: a
  fresh temp folder), named after the test, and the folder is printed at the end of the run.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from support.chromium import chromium_ready_fixture, start_chromium
from support.net import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS_ENV = "FLOWSTONE_TEST_ARTIFACTS"
DAGSTER_START_TIMEOUT = 120.0
_saved_artifacts: list[Path] = []


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:80] or "page"


# --------------------------------------------------------------------------- artifacts


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """$FLOWSTONE_TEST_ARTIFACTS, or a temp folder that outlives the run (CI uploads it)."""
    configured = os.environ.get(ARTIFACTS_ENV)
    if configured:
        path = Path(configured).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
    else:
        path = Path(tempfile.mkdtemp(prefix="flowstone-ui-artifacts-"))
    print(f"\n[ui] artifacts (screenshots, page sources, dagster dev log): {path}")
    return path


def pytest_terminal_summary(terminalreporter) -> None:
    if _saved_artifacts:
        terminalreporter.write_sep("-", "browser test artifacts")
        for path in _saved_artifacts:
            terminalreporter.write_line(str(path))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item so fixtures can tell a failed test at teardown."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


# --------------------------------------------------------------------------- Chromium


chromium_ready = chromium_ready_fixture("ui")


class Page:
    """A Selenium driver plus the waits a person does implicitly: every wait names what it
    waits for, and a timeout reports the URL and saves a screenshot and the page source."""

    def __init__(self, driver: Any, artifacts: Path, test_name: str):
        self.driver = driver
        self.artifacts = artifacts
        self.test_name = _slug(test_name)

    def capture(self, label: str, source: bool = False) -> list[Path]:
        """Screenshot (and optionally page source) as ``<test>-<label>.png/.html``."""
        stem = self.artifacts / f"{self.test_name}-{_slug(label)}"
        saved = []
        png = stem.with_suffix(".png")
        if self.driver.save_screenshot(str(png)):
            saved.append(png)
        if source:
            html = stem.with_suffix(".html")
            html.write_text(self.driver.page_source, encoding="utf-8")
            saved.append(html)
        _saved_artifacts.extend(saved)
        return saved

    def wait(self, what: str, condition: Callable[[Any], Any], timeout: float = 30.0) -> Any:
        """``condition(driver)`` until truthy; on timeout an AssertionError naming ``what``."""
        from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        waiter = WebDriverWait(
            self.driver, timeout, poll_frequency=0.25,
            ignored_exceptions=(StaleElementReferenceException,),
        )  # fmt: skip
        try:
            return waiter.until(condition)
        except TimeoutException:
            url = self.driver.current_url
            saved = self.capture(f"timeout-{what.split(' (')[0]}", source=True)
            raise AssertionError(
                f"waited {timeout:.0f}s for {what} at {url}; saw: "
                f"{', '.join(str(p) for p in saved)}"
            ) from None

    def element(self, what: str, xpath: str, timeout: float = 30.0) -> Any:
        """The first visible element matching ``xpath``."""

        def visible(driver):
            for found in driver.find_elements("xpath", xpath):
                if found.is_displayed():
                    return found
            return None

        return self.wait(f"{what} ({xpath})", visible, timeout)

    def click(self, what: str, xpath: str, timeout: float = 30.0) -> Any:
        """Click the visible, enabled element; retry while something (a toast, an opening
        dialog, Dagster's first-visit prompt) covers it."""
        from selenium.common.exceptions import (
            ElementClickInterceptedException,
            ElementNotInteractableException,
        )

        def clicked(driver):
            for found in driver.find_elements("xpath", xpath):
                if not (found.is_displayed() and found.is_enabled()):
                    continue
                try:
                    found.click()
                except (ElementClickInterceptedException, ElementNotInteractableException):
                    dismiss_dagster_prompt(self)
                    return None
                return found
            return None

        return self.wait(f"{what} to be clickable ({xpath})", clicked, timeout)

    def text(self) -> str:
        return self.driver.find_element("tag name", "body").text


_PROMPT_SKIP = (
    "//*[normalize-space(text())='Join the Dagster community']"
    "/following::button[normalize-space(.)='Skip']"
)


def dismiss_dagster_prompt(page: Page) -> bool:
    """Close `dagster dev`'s "Join the Dagster community" dialog if it is up (it opens a
    second after the first page of a fresh instance and would swallow clicks)."""
    from selenium.common.exceptions import WebDriverException

    for button in page.driver.find_elements("xpath", _PROMPT_SKIP):
        if button.is_displayed():
            try:
                button.click()
            except WebDriverException:  # still animating in; the caller's wait retries
                return False
            return True
    return False


@pytest.fixture
def page(chromium_ready: str, artifacts_dir: Path, request, tmp_path: Path) -> Iterator[Page]:
    driver = start_chromium(chromium_ready, tmp_path / "chromium-profile", "1600,1000")
    page = Page(driver, artifacts_dir, request.node.name)
    try:
        yield page
    finally:
        call = getattr(request.node, "rep_call", None)
        if call is not None and call.failed:
            try:
                saved = page.capture("failure", source=True)
                print(f"\n[ui] {request.node.name} failed at {driver.current_url}; saved {saved}")
            except Exception as exc:  # the browser may be what broke; say so, keep the error
                print(f"\n[ui] could not capture the failed page: {exc!r}")
        driver.quit()


# --------------------------------------------------------------------------- dagster dev


class DagsterDev:
    """A running `dagster dev`: where it listens, its instance folder, its log."""

    def __init__(self, base_url: str, home: Path, outputs: Path, log_path: Path):
        self.base_url = base_url
        self.home = home
        self.outputs = outputs
        self.log_path = log_path

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        response = httpx.post(
            f"{self.base_url}/graphql",
            json={"query": query, "variables": variables or {}},
            timeout=30,
        )
        response.raise_for_status()
        body = response.json()
        assert not body.get("errors"), f"GraphQL errors from {self.base_url}: {body['errors']}"
        return body["data"]

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


_LOCATION_QUERY = """{ workspaceOrError { __typename ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } }
  ... on PythonError { message } } }"""


def _wait_until_loaded(proc: subprocess.Popen, dev: DagsterDev, timeout: float) -> None:
    """The webserver answers and the `flowstone` code location has loaded (or failed: then
    say why, from Dagster's own error)."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"`dagster dev` exited with {proc.returncode} before serving {dev.base_url}; "
                f"log {dev.log_path}:\n{dev.log_tail()}"
            )
        try:
            if httpx.get(f"{dev.base_url}/server_info", timeout=2).status_code == 200:
                entries = dev.graphql(_LOCATION_QUERY)["workspaceOrError"]["locationEntries"]
                flowstone = next((e for e in entries if e["name"] == "flowstone"), None)
                if flowstone and flowstone["loadStatus"] == "LOADED":
                    loaded = flowstone["locationOrLoadError"]
                    if loaded["__typename"] != "RepositoryLocation":
                        raise AssertionError(
                            f"code location flowstone failed to load in `dagster dev`: "
                            f"{loaded.get('message')}"
                        )
                    return
                last = f"locations {entries}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.5)
    raise AssertionError(
        f"`dagster dev` did not serve a loaded `flowstone` location at {dev.base_url} within "
        f"{timeout:.0f}s (last: {last}); log {dev.log_path}:\n{dev.log_tail()}"
    )


def _group_alive(pgid: int) -> list[psutil.Process]:
    alive = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                alive.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return alive


def _stop_group(proc: subprocess.Popen, grace: float = 20.0) -> str:
    """SIGINT to `dagster dev` (Ctrl-C: it tells its webserver and daemon to shut down), then
    SIGTERM to what is left of its process group (its code servers would otherwise linger
    until their heartbeat times out), SIGKILL after a few seconds. Returns how it ended."""
    pgid = proc.pid
    how = []
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=grace)
            how.append(f"dagster dev exited on SIGINT ({proc.returncode})")
        except subprocess.TimeoutExpired:
            how.append(f"dagster dev ignored SIGINT for {grace:.0f}s")
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        left = _group_alive(pgid)
        if not left:
            break
        how.append(f"{sig.name} to {len(left)} processes left in its group")
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _group_alive(pgid):
            time.sleep(0.1)
    if proc.poll() is None:
        proc.wait(timeout=5)
    left = _group_alive(pgid)
    assert not left, f"processes of `dagster dev` survived SIGKILL: {[p.pid for p in left]}"
    return "; ".join(how)


def _started_under(home: Path) -> list[psutil.Process]:
    """Processes whose environment names our throw-away DAGSTER_HOME: anything `dagster dev`
    started that escaped its process group."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("DAGSTER_HOME") == str(home):
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


@pytest.fixture(scope="module")
def dagster_dev(
    tmp_path_factory: pytest.TempPathFactory, artifacts_dir: Path
) -> Iterator[DagsterDev]:
    """`make ui` on a free loopback port with a throw-away instance, stopped at the end."""
    import dagster as dg

    from assets.pools import ensure_pool_limits

    root = tmp_path_factory.mktemp("dagster-dev")
    home, outputs = root / "dagster_home", root / "outputs"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "FLOWSTONE_OUTPUTS_DIR": str(outputs),
        "FLOWSTONE_WAREHOUSE": str(root / "warehouse" / "warehouse.duckdb"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    # Shared stores configured in the caller's shell must not receive the test's requests.
    for name in (
        "FLOWSTONE_APPROVALS_DB_URL",
        "FLOWSTONE_NOTIFICATIONS_DB_URL",
        "FLOWSTONE_APPROVALS_URL",
        "FLOWSTONE_PROJECT_ROOT",
    ):
        env.pop(name, None)
    (root / "warehouse").mkdir()

    # What `make ui` does before `dagster dev`: the warehouse pool gets its single slot.
    with dg.DagsterInstance.from_config(str(home)) as instance:
        ensure_pool_limits(instance)

    port = free_port()
    dev = DagsterDev(
        f"http://127.0.0.1:{port}", home, outputs, artifacts_dir / f"dagster-dev-{port}.log"
    )
    _saved_artifacts.append(dev.log_path)
    command = [
        str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml",
        "-h", "127.0.0.1", "-p", str(port),
    ]  # fmt: skip
    started = time.monotonic()
    with dev.log_path.open("wb") as log:
        proc = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    try:
        _wait_until_loaded(proc, dev, DAGSTER_START_TIMEOUT)
        print(f"\n[ui] dagster dev serving {dev.base_url} after {time.monotonic() - started:.1f}s")
        yield dev
    finally:
        stopping = time.monotonic()
        how = _stop_group(proc)
        print(f"\n[ui] stopped dagster dev in {time.monotonic() - stopping:.1f}s: {how}")
        escaped = _started_under(home)
        for leftover in escaped:
            leftover.kill()
        assert not escaped, (
            f"processes started by `dagster dev` outlived its process group: "
            f"{[(p.pid, ' '.join(p.cmdline())) for p in escaped]}"
        )


class DagsterUI:
    """A browser page on a running `dagster dev`."""

    def __init__(self, page: Page, dev: DagsterDev):
        self.page = page
        self.dev = dev

    def open(self, path: str) -> None:
        """Load a UI route; on a fresh instance wait for the first-visit prompt and skip it
        (`dagster dev` on 127.0.0.1 shows "Join the Dagster community" once per instance, a
        second after the first page; Skip records that on the instance)."""
        self.page.driver.get(f"{self.dev.base_url}{path}")
        if self.dev.graphql("{ shouldShowNux }")["shouldShowNux"]:
            self.page.click("the community prompt's Skip button", _PROMPT_SKIP, timeout=20)
            self.page.wait(
                "the community prompt to close",
                lambda d: not any(b.is_displayed() for b in d.find_elements("xpath", _PROMPT_SKIP)),
                timeout=10,
            )


@pytest.fixture
def dagster_ui(page: Page, dagster_dev: DagsterDev) -> DagsterUI:
    return DagsterUI(page, dagster_dev)
