"""A gate from outside the baking package that the recipe search applies to each candidate.

Why: ``recipe: auto`` keeps the fastest recipe that passes the bake's quality gates, and the
task-suite gate (non-inferiority on evaluation suites) belongs to the evaluation, which the
baking package must not import. The Dagster wiring builds the gate and hands it in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flowstone.baking.artifacts import Artifact


@dataclass(frozen=True)
class ExtraGate:
    """``check(artifact) -> (passed, description)``; ``identity`` names the gate's settings in
    the search cache's key, so another gate never reuses a choice made without it."""

    identity: str
    check: Callable[[Artifact], tuple[bool, str]]
