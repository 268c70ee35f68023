"""What a finished run recorded, read the one way the sensors need it.

The approval gate (which partitions failed a blocking check) and the check-failure notifications
both read a run's asset check results; one reader keeps them agreeing on what a run checked.
"""

import dagster as dg


def run_check_evaluations(
    instance: dg.DagsterInstance, run_id: str
) -> list[dg.AssetCheckEvaluation]:
    """Every asset check result recorded by one run, in the order it recorded them."""
    entries = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    return [entry.get_dagster_event().asset_check_evaluation_data for entry in entries]
