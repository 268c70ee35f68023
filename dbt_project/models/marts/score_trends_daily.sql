{{ config(materialized='incremental', unique_key=['run_day', 'suite', 'system', 'metric'],
          incremental_strategy='delete+insert', tags=['daily'],
          on_schema_change='append_new_columns') }}
-- Per-system score trend by day. Partitioned by day: with a day range set only those days are
-- rebuilt; without one every day is. The range comes from vars day_start/day_end (by hand:
-- --vars '{day_start: "2026-05-01"}'; day_end defaults to day_start) or from the environment,
-- FLOWSTONE_DBT_DAY_START/_END, which is how Dagster passes the run's partitions: new vars make
-- dbt re-parse the whole project (seconds a run), a changed environment variable only this file.
{%- set day_start = var('day_start') or env_var('FLOWSTONE_DBT_DAY_START', '') -%}
{%- set day_end = var('day_end') or env_var('FLOWSTONE_DBT_DAY_END', '') or day_start %}
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
{% if day_start %}
where run_day between cast('{{ day_start }}' as date)
                  and cast('{{ day_end }}' as date)
{% endif %}
group by run_day, suite, system, metric, coalesce(kind, 'mean')
