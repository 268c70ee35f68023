select
    model || '|' || coalesce(version, '') || '|' || coalesce(variant, '') as profile_id,
    model,
    version,
    variant,
    batch_size,
    latency_p50_ms,
    latency_p95_ms,
    throughput_per_s,
    size_bytes,
    peak_memory_bytes,
    threads,
    materialized_at,
    run_id
from {{ source('baking', 'warehouse_bake_profile') }}
