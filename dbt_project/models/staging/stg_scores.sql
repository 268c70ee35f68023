-- Per-case scores with a key per (suite, system, case, metric): a repeated case id shows up as
-- a duplicate score_id and fails its unique test.
select
    suite || '|' || system || '|' || case_id || '|' || metric as score_id,
    suite || '|' || system as partition_id,
    suite,
    system,
    case_id,
    coalesce(tags, '') as tags,
    label,
    metadata,
    metric,
    score,
    valid,
    materialized_at,
    run_id
from {{ source('evaluation', 'warehouse_scores') }}
