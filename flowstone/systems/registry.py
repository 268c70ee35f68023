"""The systems FlowStone evaluates: the local baselines, plus the prompt-template LLM systems
of systems.yaml that can run here.

An LLM system whose provider key is missing is left out of the partitions (and listed in
``skipped`` with the reason) rather than given partitions that can only fail; setting the key
and reloading the code location adds its partitions.
"""

from __future__ import annotations

import logging

from flowstone.systems.base import SystemRegistry
from flowstone.systems.baselines import baseline_systems

log = logging.getLogger(__name__)


def default_systems() -> SystemRegistry:
    from flowstone.systems.config import (
        load_classifier_systems,
        load_llm_systems,
        load_retrieval_systems,
    )

    registry = SystemRegistry(
        [*baseline_systems(), *load_retrieval_systems(), *load_classifier_systems()]
    )
    for system in load_llm_systems():
        reason = system.unavailable_reason()
        if reason:
            registry.skipped[system.name] = reason
            log.info("LLM system %s is not evaluated here: %s", system.name, reason)
        else:
            registry.register(system)
    return registry
