{{ config(materialized='incremental', unique_key='report_id', incremental_strategy='delete+insert',
          on_schema_change='append_new_columns') }}
-- Every report run dbt has seen. The warehouse keeps only each partition's latest run (a
-- re-materialization replaces it), so history accumulates here, one build at a time. A column
-- new in stg_reports (the confidence interval) is added, NULL for the runs before it.
select * from {{ ref('stg_reports') }}
{% if is_incremental() %}
where report_id not in (select report_id from {{ this }})
{% endif %}
