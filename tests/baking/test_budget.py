"""The host memory budget: reservations across processes, waiting, and reclaiming the share
of a process that died."""

import subprocess
import sys

import pytest

from flowstone.baking.budget import MemoryBudget, estimate_mb
from flowstone.baking.errors import BakeError

HOLD = """
import sys, time
from flowstone.baking.budget import MemoryBudget
with MemoryBudget(sys.argv[1], 1000).reserve("holder", float(sys.argv[2])):
    print("ready", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def _holder(path: str, mb: float, seconds: float) -> subprocess.Popen:
    """Another process holding ``mb`` for ``seconds``; returns once it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, path, str(mb), str(seconds)],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_second_reservation_waits_for_the_first(tmp_path):
    path = str(tmp_path / "budget.sqlite")
    holder = _holder(path, 700, 1.5)
    budget = MemoryBudget(path, 1000)
    assert budget.reserved_mb() == 700
    with budget.reserve("second", 500, poll=0.05) as waited:
        assert waited > 0.3 and budget.reserved_mb() == 500  # the holder is gone by now
    holder.wait(10)
    assert budget.reserved_mb() == 0


def test_a_killed_holder_does_not_keep_its_share(tmp_path):
    path = str(tmp_path / "budget.sqlite")
    holder = _holder(path, 900, 600)
    holder.kill()
    holder.wait(10)
    with MemoryBudget(path, 1000).reserve("next", 900, timeout=5) as waited:
        assert waited == 0


def test_too_big_for_the_whole_budget_and_timeouts(tmp_path):
    budget = MemoryBudget(tmp_path / "b.sqlite", 1000)
    too_big = r"model 'huge' \[memory_budget\]: needs an estimated 2000 MB"
    with pytest.raises(BakeError, match=too_big), budget.reserve("huge", 2000):
        pass
    with budget.reserve("a", 800), pytest.raises(BakeError, match="waited 0 s for 300 MB"), \
            budget.reserve("b", 300, timeout=0.2, poll=0.05):  # fmt: skip
        pass
    assert estimate_mb(100 * 2**20) == pytest.approx(1000.0)
    assert estimate_mb(1, configured=42) == 42
