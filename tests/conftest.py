"""Test-wide isolation: every test session gets its own Dagster instance, outputs folder and
warehouse, so tests never touch the repo's .dagster_home or outputs/.

It also puts the tests/ folder on sys.path (once, first in the session), so that every test
folder imports the shared helpers in tests/support as ``support.<module>``: the run uses
--import-mode=importlib, which adds nothing to sys.path.
"""

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from support.net import free_port  # noqa: E402

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="flowstone-tests-"))
os.environ.setdefault("DAGSTER_HOME", str(_SESSION_DIR / "dagster_home"))
os.environ.setdefault("FLOWSTONE_OUTPUTS_DIR", str(_SESSION_DIR / "outputs"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Runs would otherwise start the host's shared pool server on their first embedding metric, in
# DAGSTER_HOME (the repo's own under `make test`), and leave it running for its idle timeout.
# Tests score in-process unless they opt in (monkeypatch.setenv("FLOWSTONE_POOL", "on") with
# DAGSTER_HOME in their tmp dir; see tests/workers/test_workers_autostart.py).
os.environ["FLOWSTONE_POOL"] = "off"
Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
(Path(os.environ["DAGSTER_HOME"]) / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")

REPO_ROOT = TESTS_DIR.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer  # moto's S3 in server mode, on loopback

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


_exit_status: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the process right after pytest's summary.

    duckdb 2.0's nanobind bindings print a "leaked functions" report during interpreter
    teardown, after pytest's closing line; CI reads that closing line, so we leave before the
    teardown with pytest's own exit status.
    """
    import sys

    if _exit_status and os.environ.get("FLOWSTONE_TESTS_FAST_EXIT", "1") == "1":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[-1])
