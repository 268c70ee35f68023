select
    model || '|' || coalesce(version, '') || '|' || coalesce(variant, '') as bake_id,
    model,
    version,
    variant,
    task,
    metric,
    value,
    threshold,
    passed,
    accuracy_original,
    accuracy_baked,
    fidelity,
    fidelity_min,
    spearman_rho,
    max_abs_logit_diff,
    materialized_at,
    run_id
from {{ source('baking', 'warehouse_bake_quality') }}
