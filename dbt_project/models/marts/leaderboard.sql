-- Per suite and metric: each system's latest mean with its confidence interval, its best ever,
-- the delta against its previous run, and its rank among the systems on the suite (1 = best
-- latest mean; a metric that failed in its latest run has no mean and ranks last). A suite
-- metric (kind 'suite': spearman, chrf, ...) ranks the same way on its value, higher is better;
-- an undefined value (NULL) ranks last.
with ordered as (
    select
        * replace (coalesce(kind, 'mean') as kind),  -- history kept before kinds existed
        row_number() over (partition by suite, system, metric order by materialized_at desc) as recency
    from {{ ref('report_history') }}
),
per_system as (
    select
        suite,
        system,
        metric,
        kind,
        max(case when recency = 1 then mean end) as latest_mean,
        max(case when recency = 1 then ci_low end) as latest_ci_low,
        max(case when recency = 1 then ci_high end) as latest_ci_high,
        max(case when recency = 1 then ci_level end) as latest_ci_level,
        max(case when recency = 1 then cases end) as latest_cases,
        max(case when recency = 2 then mean end) as previous_mean,
        max(mean) as best_mean,
        max(case when recency = 1 then pass_rate end) as latest_pass_rate,
        bool_or(case when recency = 1 then regression end) as regressed,
        max(case when recency = 1 then materialized_at end) as latest_at,
        max(case when recency = 1 then run_id end) as latest_run_id,
        count(*) as runs
    from ordered
    group by suite, system, metric, kind
)
select
    suite || '|' || system || '|' || metric as leaderboard_id,
    suite || '|' || system as partition_id,
    suite,
    metric,
    kind,
    rank() over (partition by suite, metric order by latest_mean desc nulls last) as rank,
    system,
    latest_mean,
    latest_ci_low,
    latest_ci_high,
    latest_ci_level,
    latest_cases,
    best_mean,
    previous_mean,
    latest_mean - previous_mean as delta,
    latest_pass_rate,
    regressed,
    runs,
    latest_at,
    latest_run_id
from per_system
