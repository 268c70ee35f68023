-- One row per metric of each partition's latest report. A metric that failed (0 valid of N
-- judgements) has cases = 0 and NULL figures; ci_low/ci_high bound the mean at ci_level.
-- kind 'mean': a per-case metric's mean, in [0, 1]. kind 'suite': a suite metric's one value
-- over the partition (spearman in [-1, 1], chrf 0-100, ...) in `mean`, NULL when undefined,
-- with no interval or pass rate. Rows written before suite metrics had rows have no kind.
select
    suite || '|' || system || '|' || metric || '|' || run_id as report_id,
    suite || '|' || system as partition_id,
    suite,
    system,
    metric,
    coalesce(kind, 'mean') as kind,
    mean,
    ci_low,
    ci_high,
    ci_level,
    median,
    p95,
    min as min_score,
    pass_rate,
    pass_score,
    invalid,
    cases,
    passed_cases,
    threshold,
    threshold_passed,
    regression,
    previous_mean,
    materialized_at,
    cast(materialized_at as date) as run_day,
    run_id
from {{ source('evaluation', 'warehouse_reports') }}
