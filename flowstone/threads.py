"""How torch's OpenMP threads wait for work in a long command, and how a measurement undoes it.

OpenMP threads (torch's intra-op pool on Linux) spin for a while before they sleep. On a
machine shared with other busy processes (a 2-core laptop running tests, a CI box) the spinning
takes the cores the work itself needs: encoding the demo's sentences with 2 torch threads took
2-4x the wall time and 2.5-3.5x the CPU time of the same work with passive waiting there (on an
idle machine spinning is somewhat faster). So the demo asks for passive waiting, before torch
loads and unless the user chose a policy, for itself and the processes it starts. A bake
profile measures latency and throughput, which the policy changes: its measuring processes call
:func:`restore_user_policy` so the figures are those of the user's own environment.
"""

from __future__ import annotations

import os

POLICY_ENV = "OMP_WAIT_POLICY"
# Set beside OMP_WAIT_POLICY when FlowStone chose it (not the user), for the child processes.
CHOSEN_ENV = "FLOWSTONE_CHOSE_OMP_WAIT_POLICY"


def wait_passively() -> bool:
    """Passive OpenMP waiting for torch loaded from now on, in this process and those it
    starts, unless ``OMP_WAIT_POLICY`` is set already. Returns whether it set it."""
    if os.environ.get(POLICY_ENV):
        return False
    os.environ[POLICY_ENV] = "PASSIVE"
    os.environ[CHOSEN_ENV] = "1"
    return True


def restore_user_policy() -> None:
    """In a process that measures, before it imports torch: drop the policy FlowStone chose
    for its parent (a policy the user set stays)."""
    if os.environ.pop(CHOSEN_ENV, None):
        os.environ.pop(POLICY_ENV, None)
