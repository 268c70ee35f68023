{#- The tables FlowStone assets write, created empty if absent, with the columns and types the
    database I/O manager would create. The partition columns (suite/system, model) come first.
    Why: the dbt build must work on a warehouse before the first evaluation, and bake history
    models must work before the baking line writes anything. -#}
{% macro create_flowstone_source_tables() %}
  {% set ddl %}
    create schema if not exists evaluation;
    create table if not exists evaluation.warehouse_scores (
      suite varchar not null, system varchar not null,
      case_id varchar, tags varchar, label varchar, metadata varchar,
      metric varchar, score double, valid boolean, materialized_at timestamp, run_id varchar
    );
    -- a warehouse written before cases carried a gold label and metadata
    alter table evaluation.warehouse_scores add column if not exists label varchar;
    alter table evaluation.warehouse_scores add column if not exists metadata varchar;
    create table if not exists evaluation.warehouse_reports (
      suite varchar not null, system varchar not null,
      metric varchar, kind varchar, mean double, ci_low double, ci_high double, ci_level double,
      median double, p95 double, min double,
      pass_rate double, pass_score double, invalid bigint, cases bigint, passed_cases bigint,
      threshold double, threshold_passed boolean, regression boolean, previous_mean double,
      materialized_at timestamp, run_id varchar
    );
    -- a warehouse written before reports carried confidence intervals
    alter table evaluation.warehouse_reports add column if not exists ci_low double;
    alter table evaluation.warehouse_reports add column if not exists ci_high double;
    alter table evaluation.warehouse_reports add column if not exists ci_level double;
    -- a warehouse written before suite metrics had rows ('mean' | 'suite'; NULL reads 'mean')
    alter table evaluation.warehouse_reports add column if not exists kind varchar;
    create schema if not exists baking;
    create table if not exists baking.warehouse_bake_quality (
      model varchar not null, version varchar, variant varchar, task varchar, metric varchar,
      value double, threshold double, passed boolean,
      accuracy_original double, accuracy_baked double, fidelity double, fidelity_min double,
      spearman_rho double, max_abs_logit_diff double,
      materialized_at timestamp, run_id varchar
    );
    create table if not exists baking.warehouse_bake_profile (
      model varchar not null, version varchar, variant varchar, batch_size bigint,
      latency_p50_ms double, latency_p95_ms double, throughput_per_s double,
      size_bytes bigint, peak_memory_bytes bigint, threads bigint,
      materialized_at timestamp, run_id varchar
    );
  {% endset %}
  {% do run_query(ddl) %}
{% endmacro %}
