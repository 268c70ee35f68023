-- Wherever a report metric has a confidence interval, its ends are in order.
select report_id, ci_low, ci_high
from {{ ref('stg_reports') }}
where ci_low > ci_high
