"""Quantise the weights of an ONNX model to int8, with per-node exclusions.

Two methods: ``dynamic`` (``quantize_dynamic``: int8 weights per tensor or per output channel,
activations quantised per tensor at run time) and ``matmul_nbits`` (int8 weights in blocks of
32 along the reduction axis, ``MatMulNBits`` with ``accuracy_level=4``, which also quantises
activations per block: nearly lossless, but only ~1.3x on MiniLM, so it is the tool for a few
sensitive layers rather than the whole model).
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flowstone.atomic import atomic_path
from flowstone.baking.errors import OnnxBakeError
from flowstone.baking.onnx.graph import copy_metadata, load_onnx


def quantize_onnx(
    src: Path,
    dst: Path,
    *,
    per_channel: bool,
    exclude_nodes: list[str] | None = None,
    **options: Any,
) -> Path:
    """Quantise the weights of an ONNX model to int8.

    ``exclude_nodes`` holds node names or shell-style patterns (``*/layer.0/output/dense/*``);
    a pattern that matches no quantisable node is an error (a typo would silently quantise the
    layer it meant to protect).

    Options:
      ``method``: "dynamic" (default) or "matmul_nbits".
      dynamic: ``op_types`` (default ["MatMul", "Attention"]; add "EmbedLayerNormalization" or
        "Gather" to quantise the embedding table too), ``reduce_range`` (default False: only
        needed on CPUs without VNNI), ``weight_type`` ("qint8" | "quint8").
      matmul_nbits: ``bits`` (8 or 4, default 8), ``block_size`` (default 32),
        ``accuracy_level`` (default 4 = int8 compute, activations quantised per block),
        ``symmetric`` (default True). Only ``MatMul`` nodes with constant weights are converted;
        blocks are finer than channels, so ``per_channel`` must be True.
    """

    src, dst = Path(src), Path(dst)
    method = options.pop("method", "dynamic")
    model = load_onnx(src, "quantize_onnx")
    excluded = _resolve_exclusions(model, exclude_nodes or [], src)
    if method == "matmul_nbits" and not per_channel:
        raise OnnxBakeError(
            "quantize_onnx(method='matmul_nbits') always uses block-wise scales (finer than per "
            "channel); pass per_channel=True"
        )
    if method not in ("dynamic", "matmul_nbits"):
        raise OnnxBakeError(f"quantize_onnx: unknown method {method!r} (dynamic, matmul_nbits)")
    with atomic_path(dst) as tmp:
        try:
            with _quiet_root_logging():
                if method == "dynamic":
                    _quantize_dynamic(src, tmp, per_channel, excluded, options)
                else:
                    _quantize_matmul_nbits(model, tmp, excluded, options)
            copy_metadata(src, tmp)
        except OnnxBakeError:
            raise
        except Exception as exc:
            raise OnnxBakeError(f"quantize_onnx({src}, method={method}): {exc}") from exc
    return dst


_QUANTISABLE = {"MatMul", "Attention", "Gemm", "EmbedLayerNormalization", "Gather"}


def _resolve_exclusions(model: Any, patterns: Sequence[str], src: Path) -> list[str]:
    names = [node.name for node in model.graph.node if node.op_type in _QUANTISABLE and node.name]
    excluded: list[str] = []
    for pattern in patterns:
        hits = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            raise OnnxBakeError(
                f"quantize_onnx({src}): exclusion {pattern!r} matches no quantisable node "
                f"(e.g. {names[:3]})"
            )
        excluded.extend(hit for hit in hits if hit not in excluded)
    return excluded


def _quantize_dynamic(
    src: Path, dst: Path, per_channel: bool, excluded: list[str], options: dict[str, Any]
) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    op_types = list(options.pop("op_types", ["MatMul", "Attention"]))
    reduce_range = bool(options.pop("reduce_range", False))
    weight_types = {"qint8": QuantType.QInt8, "quint8": QuantType.QUInt8}
    weight_name = options.pop("weight_type", "qint8")
    if weight_name not in weight_types:
        raise OnnxBakeError(f"quantize_onnx: weight_type {weight_name!r} is not qint8 or quint8")
    weight_type = weight_types[weight_name]
    if options:
        raise OnnxBakeError(f"quantize_onnx(method='dynamic'): unknown options {sorted(options)}")
    quantize_dynamic(
        str(src),
        str(dst),
        op_types_to_quantize=op_types,
        per_channel=per_channel,
        reduce_range=reduce_range,
        weight_type=weight_type,
        nodes_to_exclude=excluded,
        # fused contrib ops (Attention, SkipLayerNormalization) defeat shape inference; their
        # outputs are float
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


@contextlib.contextmanager
def _quiet_root_logging() -> Any:
    """ONNX Runtime's quantisers call logging.basicConfig(level=INFO) on import and log every
    node at INFO on the root logger; inside a Dagster step that floods the run log. Restore the
    root logger's handlers and level afterwards, and hold it at WARNING meanwhile."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    nbits_logger = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    nbits_level = nbits_logger.level
    advisory = _DropAdvisory()
    try:
        root.setLevel(logging.WARNING)
        root.addFilter(advisory)
        nbits_logger.setLevel(logging.WARNING)
        yield
    finally:
        root.removeFilter(advisory)
        root.handlers[:] = handlers
        root.setLevel(level)
        nbits_logger.setLevel(nbits_level)


class _DropAdvisory(logging.Filter):
    """quantize_dynamic always advises 'pre-processing' (shape inference), which fused BERT
    graphs cannot use; not actionable, so not logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Please consider to run pre-processing")


def _quantize_matmul_nbits(
    model: Any, dst: Path, excluded: list[str], options: dict[str, Any]
) -> None:
    with _quiet_root_logging():
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )

    bits = int(options.pop("bits", 8))
    block_size = int(options.pop("block_size", 32))
    accuracy_level = int(options.pop("accuracy_level", 4))
    symmetric = bool(options.pop("symmetric", True))
    if options:
        raise OnnxBakeError(
            f"quantize_onnx(method='matmul_nbits'): unknown options {sorted(options)}"
        )
    config = DefaultWeightOnlyQuantConfig(
        block_size=block_size,
        is_symmetric=symmetric,
        accuracy_level=accuracy_level,
        bits=bits,
        op_types_to_quantize=("MatMul",),
    )
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=bits,
        block_size=block_size,
        is_symmetric=symmetric,
        accuracy_level=accuracy_level,
        nodes_to_exclude=excluded,
        op_types_to_quantize=("MatMul",),
        algo_config=config,
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
