"""What the bake steps' retry policy takes for a passing failure."""

import pytest

from flowstone.baking.errors import BakeError
from flowstone.faults import InjectedFault
from flowstone.transient import is_transient


@pytest.mark.parametrize(
    "error",
    [
        ConnectionResetError("reset"),
        TimeoutError("slow"),
        InjectedFault("soak"),
        BlockingIOError("again"),
    ],  # fmt: skip
)
def test_passing_failures_are_transient(error):
    assert is_transient(error)


@pytest.mark.parametrize(
    "error",
    [
        BakeError("m", "source_model", "corrupt"),
        ValueError("bad config"),
        KeyError("x"),
        FileNotFoundError("gone"),
    ],  # fmt: skip
)
def test_failures_that_would_fail_again_are_not(error):
    assert not is_transient(error)


def test_a_failure_raised_from_a_passing_one_counts():
    try:
        try:
            raise ConnectionRefusedError("store down")
        except ConnectionRefusedError as inner:
            raise RuntimeError("write failed") from inner
    except RuntimeError as outer:
        assert is_transient(outer)
    looped = RuntimeError("a")
    looped.__context__ = RuntimeError("b")
    looped.__context__.__context__ = looped  # a cycle ends the walk
    assert not is_transient(looped)
