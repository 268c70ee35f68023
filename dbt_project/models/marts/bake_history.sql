-- Per model and version: speed-up, fidelity and size of each baked variant against the
-- original model. Empty until the baking line writes its tables.
with original as (
    select * from {{ ref('stg_bake_profile') }} where variant = 'original'
),
baked as (
    select * from {{ ref('stg_bake_profile') }} where variant <> 'original'
)
select
    b.profile_id as bake_id,
    b.model,
    b.version,
    b.variant,
    o.latency_p50_ms / nullif(b.latency_p50_ms, 0) as speedup_p50,
    o.latency_p95_ms / nullif(b.latency_p95_ms, 0) as speedup_p95,
    b.throughput_per_s,
    b.throughput_per_s / nullif(o.throughput_per_s, 0) as throughput_ratio,
    b.batch_size,
    b.size_bytes,
    b.size_bytes::double / nullif(o.size_bytes, 0) as size_ratio,
    b.peak_memory_bytes,
    q.metric as quality_metric,
    q.value as quality_value,
    q.passed as quality_passed,
    q.fidelity,
    q.spearman_rho,
    q.accuracy_original,
    q.accuracy_baked,
    b.materialized_at
from baked as b
left join original as o on o.model = b.model and o.version is not distinct from b.version
left join {{ ref('stg_bake_quality') }} as q
    on q.model = b.model and q.version is not distinct from b.version and q.variant = b.variant
