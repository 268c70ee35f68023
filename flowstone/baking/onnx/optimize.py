"""Fuse the exported BERT graph with ONNX Runtime's transformer optimizer.

The fusion is worth 1.0-1.2x in fp32 and nothing after int8 quantisation (ORT's session-time
fusions on the plain quantised graph ran as fast), so the recommended recipe skips it; it stays
a pass for fp32 bakes and for the bench's trade-off curve.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flowstone.atomic import atomic_path
from flowstone.baking.errors import OnnxBakeError
from flowstone.baking.onnx.graph import load_onnx, read_onnx_metadata


def optimize_onnx(src: Path, dst: Path, **options: Any) -> Path:
    """Fuse the BERT graph with ONNX Runtime's transformer optimizer.

    Options: ``model_type`` ("bert"), ``num_heads`` / ``hidden_size`` (read from the model's
    metadata when 0 or absent), ``opt_level`` (0: only the python fusions; ORT's own level-99
    optimisations run at session start anyway), ``require_fusions`` (default True: fail unless
    attention and layer norms were fused, because an unfused graph is a silent slowdown),
    ``fusion_options`` (a dict of ``FusionOptions`` fields to override, e.g.
    ``{"enable_gelu_approximation": True}``).
    """
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    src, dst = Path(src), Path(dst)
    load_onnx(src, "optimize_onnx")  # a clear error for a missing or corrupt input
    meta = read_onnx_metadata(src)
    model_type = options.pop("model_type", "bert")
    num_heads = int(options.pop("num_heads", 0) or meta.get("num_heads", 0))
    hidden_size = int(options.pop("hidden_size", 0) or meta.get("hidden_size", 0))
    opt_level = int(options.pop("opt_level", 0))
    require = bool(options.pop("require_fusions", True))
    fusion_overrides = dict(options.pop("fusion_options", {}) or {})
    if options:
        raise OnnxBakeError(f"optimize_onnx: unknown options {sorted(options)}")
    fusion_options = FusionOptions(model_type)
    for key, value in fusion_overrides.items():
        if not hasattr(fusion_options, key):
            raise OnnxBakeError(f"optimize_onnx: FusionOptions has no field {key!r}")
        setattr(fusion_options, key, value)
    try:
        optimized = optimizer.optimize_model(
            str(src),
            model_type=model_type,
            num_heads=num_heads,
            hidden_size=hidden_size,
            optimization_options=fusion_options,
            opt_level=opt_level,
            use_gpu=False,
        )
    except Exception as exc:
        raise OnnxBakeError(f"optimize_onnx({src}): transformer optimizer failed: {exc}") from exc
    stats = optimized.get_fused_operator_statistics()
    attention = stats.get("Attention", 0) + stats.get("MultiHeadAttention", 0)
    if require and not (attention and stats.get("SkipLayerNormalization")):
        raise OnnxBakeError(
            f"optimize_onnx({src}): attention/layer-norm fusion did not happen ({stats}); "
            "export with export_transformer_onnx (eager attention, dynamo=False) or pass "
            "require_fusions=False"
        )
    with atomic_path(dst) as tmp:
        optimized.save_model_to_file(str(tmp))
    return dst
