"""The systems FlowStone evaluates by default: the local baselines, plus whatever other
packages (the LLM systems) contribute."""

from __future__ import annotations

from flowstone.systems.base import SystemRegistry
from flowstone.systems.baselines import baseline_systems


def default_systems() -> SystemRegistry:
    return SystemRegistry(baseline_systems())
