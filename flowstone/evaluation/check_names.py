"""The names of the evaluation's checks, shared by the asset checks and ``flowstone eval`` so
that a check reads the same in the Dagster UI and in a CI log."""

NO_REGRESSION = "no_regression"


def threshold_check_name(metric: str) -> str:
    return f"{metric}_above_threshold"
