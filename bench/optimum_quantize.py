"""Hugging Face Optimum's ONNX Runtime recipe for a transformer, the peer of our bake.

Run with the peer venv's python (bench/.venv-optimum, from bench/requirements-optimum.txt),
never the project's: optimum-onnx needs transformers < 4.58 while the project runs 5.x. It only
exports and quantizes; bench/bench_baking_minilm.py times and scores the result in its own
process, with the same tokenizer, pooling and runner as our baked model.

    bench/.venv-optimum/bin/python bench/optimum_quantize.py MODEL_DIR OUT_DIR [--isa auto]

1. Export: ``optimum.exporters.onnx.main_export`` (what ``optimum-cli export onnx`` runs), task
   feature-extraction, library transformers: inputs input_ids / attention_mask / token_type_ids,
   output last_hidden_state. No optimisation pass (Optimum's default).
2. Quantize: ``ORTQuantizer`` with ``AutoQuantizationConfig.<isa>(is_static=False)``, every
   other argument left at Optimum's default for that config (per_channel=True, symmetric int8
   weights, uint8 activations, reduce_range=False, all of ORT's dynamic-quantizable operators).
   ``--isa auto``: avx512_vnni where /proc/cpuinfo lists it, else avx2.

Writes OUT_DIR/model_quantized.onnx (+ ort_config.json, tokenizer files) and prints one line
``OPTIMUM_JSON {...}`` with the versions, the config and the seconds each step took.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "config.json",
)


def cpu_isa() -> str:
    """The AutoQuantizationConfig for this CPU: avx512_vnni where the CPU has it, else avx2."""
    try:
        flags = next(
            (
                line.split(":", 1)[1].split()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("flags")
            ),
            [],
        )
    except OSError:
        flags = []
    return "avx512_vnni" if "avx512_vnni" in flags else "avx2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "model_dir", type=Path, help="a transformers / sentence-transformers folder"
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--isa", default="auto", choices=["auto", "avx512_vnni", "avx2"])
    args = parser.parse_args()

    import onnxruntime
    import optimum
    import torch
    import transformers
    from optimum.exporters.onnx import main_export
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    try:
        from importlib.metadata import version

        optimum_version = version("optimum")
        optimum_onnx_version = version("optimum-onnx")
    except Exception:  # pragma: no cover - metadata missing
        optimum_version = getattr(optimum, "__version__", "?")
        optimum_onnx_version = "?"

    isa = cpu_isa() if args.isa == "auto" else args.isa
    out_dir = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="optimum-export-") as tmp:
        export_dir = Path(tmp)
        start = time.perf_counter()
        main_export(
            str(args.model_dir),
            output=export_dir,
            task="feature-extraction",
            library_name="transformers",
            device="cpu",
        )
        export_s = time.perf_counter() - start

        start = time.perf_counter()
        quantizer = ORTQuantizer.from_pretrained(export_dir, file_name="model.onnx")
        qconfig = getattr(AutoQuantizationConfig, isa)(is_static=False)
        quantizer.quantize(save_dir=out_dir, quantization_config=qconfig)
        quantize_s = time.perf_counter() - start
        for name in TOKENIZER_FILES:
            for source in (export_dir / name, args.model_dir / name):
                if source.is_file() and not (out_dir / name).exists():
                    shutil.copy2(source, out_dir / name)
        export_size = (export_dir / "model.onnx").stat().st_size

    quantized = out_dir / "model_quantized.onnx"
    if not quantized.is_file():
        raise SystemExit(f"{quantized}: not written by ORTQuantizer")
    session = onnxruntime.InferenceSession(str(quantized), providers=["CPUExecutionProvider"])
    report = {
        "model": str(quantized),
        "isa": isa,
        "config": {
            "is_static": qconfig.is_static,
            "format": str(qconfig.format),
            "mode": str(qconfig.mode),
            "per_channel": qconfig.per_channel,
            "reduce_range": qconfig.reduce_range,
            "weights_dtype": str(qconfig.weights_dtype),
            "weights_symmetric": qconfig.weights_symmetric,
            "activations_dtype": str(qconfig.activations_dtype),
            "activations_symmetric": qconfig.activations_symmetric,
            "operators_to_quantize": list(qconfig.operators_to_quantize),
        },
        "inputs": [i.name for i in session.get_inputs()],
        "outputs": [o.name for o in session.get_outputs()],
        "export_s": round(export_s, 2),
        "quantize_s": round(quantize_s, 2),
        "export_mb": round(export_size / 1e6, 2),
        "quantized_mb": round(quantized.stat().st_size / 1e6, 2),
        "versions": {
            "python": sys.version.split()[0],
            "optimum": optimum_version,
            "optimum-onnx": optimum_onnx_version,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
    }
    print("OPTIMUM_JSON " + json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
