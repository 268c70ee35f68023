-- Every run whose metric mean fell by more than the regression margin against the previous
-- materialization of the same suite x system (the flag the report asset computed).
select
    report_id,
    suite,
    system,
    metric,
    previous_mean,
    mean as current_mean,
    case when previous_mean > 0 then (previous_mean - mean) / previous_mean end as relative_drop,
    materialized_at,
    run_id
from {{ ref('report_history') }}
where regression
