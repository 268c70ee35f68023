"""The demo classifier baked three ways, against the original in the same run.

Peer: the original float32 module in eager PyTorch, same inputs, same thread count, each
variant in a fresh process after warm-up (``flowstone.baking.profile``). Rows: torch dynamic int8 +
TorchScript (the shipped default), ONNX export + ONNX Runtime int8 per channel, and
magnitude pruning 30% + torch int8. Quality is accuracy on 2000 held-out
synthetic examples. Target (issue 6): retention >= 0.99 with >= 1.5x throughput at batch 32.
Run: ``.venv/bin/python bench/bench_baking_classifier.py``
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RECIPES = {
    "default: quantize_dynamic + torchscript": None,  # the demo config as shipped
    "onnx_export + onnx_quantize (per channel)": "[onnx_export, {name: onnx_quantize, per_channel: true, op_types: [MatMul, Gemm]}]",
    "prune 30% + quantize_dynamic": "[{name: prune, sparsity: 0.3}, quantize_dynamic]",
}


def main() -> None:
    from flowstone.baking import demo_models, pipeline
    from flowstone.baking.profile import profile_variants
    from flowstone.baking.quality import measure_quality
    from flowstone.baking.records.quality import ClassifierFigures

    tmp = Path(tempfile.mkdtemp(prefix="flowstone-bench-clf-"))
    path = demo_models.write_demo_classifier(tmp / "drop")
    config_file = path.with_name("demo_classifier.bake.yaml")
    shipped = config_file.read_text()
    print(f"demo classifier {demo_models.FEATURES}->{demo_models.HIDDEN}x3->{demo_models.CLASSES}, "
          f"batch sizes 1 and 32, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"{'recipe':<52} {'retention':>9} {'agree':>6} {'x b32':>6} {'x b1':>6} {'size x':>7}"
          "  p50 b32 ms orig/baked")  # fmt: skip
    for label, passes in RECIPES.items():
        text = shipped
        if passes:
            head, _, rest = shipped.partition("passes:")
            text = head + f"passes: {passes}\n" + rest[rest.index("quality:") :]
        config_file.write_text(text)
        record = pipeline.prepare_source("demo_classifier", path, tmp / "ws")
        baked = pipeline.run_passes(record)
        config = record.bake_config()
        quality = measure_quality(record, baked, config)
        profile = profile_variants(record, baked, config, [])
        figures = quality.figures
        assert isinstance(figures, ClassifierFigures)
        print(f"{label:<52} {figures.accuracy_retention:>9.4f} {figures.label_agreement:>6.3f} "
              f"{profile.ratios['32'].throughput_ratio:>6.2f} {profile.ratios['1'].throughput_ratio:>6.2f} "
              f"{profile.size_ratio:>7.3f}  {profile.original.per_batch['32'].latency_p50_ms:.3f}/"
              f"{profile.baked.per_batch['32'].latency_p50_ms:.3f}")  # fmt: skip
    print("x b32 / x b1: baked throughput / original throughput at batch 32 / 1 (>1 = faster)")


if __name__ == "__main__":
    main()
