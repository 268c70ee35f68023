{{ config(materialized='incremental', unique_key=['run_day', 'suite', 'system', 'metric'],
          incremental_strategy='delete+insert', tags=['daily'],
          on_schema_change='append_new_columns') }}
-- Per-system score trend by day. Partitioned by day: with vars day_start/day_end set (Dagster
-- passes the run's partitions) only those days are rebuilt; without them every day is.
-- kind 'suite' rows trend a suite metric's value (on its own scale), 'mean' rows a mean.
select
    run_day,
    suite,
    system,
    metric,
    coalesce(kind, 'mean') as kind,
    count(*) as runs,
    avg(mean) as mean_of_means,
    min(mean) as worst_mean,
    max(mean) as best_mean,
    arg_max(mean, materialized_at) as last_mean,
    sum(case when regression then 1 else 0 end) as regressions
from {{ ref('report_history') }}
{% if var('day_start') %}
where run_day between cast('{{ var("day_start") }}' as date)
                  and cast('{{ var("day_end", var("day_start")) }}' as date)
{% endif %}
group by run_day, suite, system, metric, coalesce(kind, 'mean')
