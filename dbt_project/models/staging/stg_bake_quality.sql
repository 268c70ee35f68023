select
    model || '|' || coalesce(version, '') || '|' || coalesce(variant, '') as bake_id,
    model,
    version,
    variant,
    accuracy_original,
    accuracy_baked,
    fidelity,
    materialized_at,
    run_id
from {{ source('baking', 'bake_quality') }}
