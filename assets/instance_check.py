"""``flowstone doctor``'s Dagster instance check: does the instance under DAGSTER_HOME open?

Why in the wiring: only Dagster can say whether it accepts dagster.yaml and reaches its
storage, and the core imports no Dagster. The checks that need no Dagster and the wording of
every outcome are in ``flowstone.ops.checks.instance``; this module adds the part that opens
the instance, and the ``flowstone`` command registers it with the doctor's runner.
"""

from __future__ import annotations

from flowstone.ops.checks.instance import (
    config_rejected,
    inspect_instance,
    instance_answered,
    storage_unreachable,
)
from flowstone.ops.checks.result import CheckResult


def check_instance() -> CheckResult:
    """DAGSTER_HOME exists, its dagster.yaml parses and is valid, and its storage answers."""
    setup = inspect_instance()
    if isinstance(setup, CheckResult):
        return setup
    # Imported here: the `flowstone` command registers this check on every start, and its
    # other sub-commands should not pay for importing Dagster.
    import dagster as dg

    try:
        instance = dg.DagsterInstance.from_config(str(setup.home))
    except dg.DagsterInvalidConfigError as exc:
        return config_rejected(setup, exc)
    except Exception as exc:
        return storage_unreachable(setup, exc)
    try:
        storage = type(instance.run_storage).__name__
        runs = instance.get_runs_count()
        instance.get_asset_keys(limit=1)
    except Exception as exc:
        return storage_unreachable(setup, exc)
    finally:
        instance.dispose()
    return instance_answered(setup, storage, runs)
