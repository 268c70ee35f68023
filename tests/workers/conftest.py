"""Fixtures for the worker pool tests: real worker processes, isolated pid registries."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # so the parent can validate faulty_bridge

FAULTY = "faulty_bridge:FaultyBridge"


@pytest.fixture
def registry_dir(tmp_path: Path) -> Path:
    path = tmp_path / "workers"
    path.mkdir()
    return path


@pytest.fixture
def make_pool(registry_dir: Path):
    """Start pools that are always closed, with the faulty bridge importable in workers."""
    from flowstone.workers.pool import WorkerPool

    pools = []

    def make(**options):
        options.setdefault("registry_dir", registry_dir)
        options.setdefault("pythonpath", [str(HERE)])
        options.setdefault("health_interval_s", None)
        options.setdefault("start_timeout_s", 60)
        pool = WorkerPool(**options)
        pools.append(pool)
        return pool.start()

    yield make
    for pool in pools:
        pool.close()


@pytest.fixture
def short_tmp():
    """A short directory for Unix sockets (their paths are limited to 107 bytes)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fsw-", dir="/tmp") as path:
        yield Path(path)
