"""The optimisation passes, each a function from one artifact to the next.

Passes run in the configured order (``pipeline.run_passes``); each writes its output into its
own checkpoint folder. The functions here only transform: checking the forward pass, hashing
and resuming are the pipeline's job, so a new pass is one function and one registry entry.
"""

from __future__ import annotations

import fnmatch
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flowstone.baking import torch_warnings
from flowstone.baking.artifacts import Artifact, load_torch_module

PassFn = Callable[[Artifact, dict[str, Any], Path, Any], Artifact]


class PassNotApplicable(ValueError):
    """The pass cannot take this artifact (wrong format or task); the message says why."""


def _excluded(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def _torch_input(artifact: Artifact, pass_name: str) -> Any:
    if artifact.format not in ("torch_module", "sentence_transformers", "torchscript"):
        raise PassNotApplicable(
            f"'{pass_name}' works on torch modules; the previous step produced {artifact.format}. "
            "Put torch passes before the export passes."
        )
    if artifact.format == "torchscript" and pass_name != "onnx_export":
        raise PassNotApplicable(
            f"'{pass_name}' cannot change a TorchScript module; bake the original module (a state "
            "dict with its architecture) or put '{pass_name}' first"
        )
    return load_torch_module(artifact)


def _network(module: Any) -> Any:
    """The part to optimise: a SentenceTransformer's transformer, else the module itself."""
    first = module[0] if hasattr(module, "_first_module") else None
    return getattr(first, "auto_model", module) if first is not None else module


def _save_module(module: Any, artifact: Artifact, out_dir: Path) -> Artifact:
    import torch

    path = out_dir / "model.pt"
    torch.save(module, str(path))
    return Artifact("torch_module", path, artifact.task, artifact.tokenizer_dir)


def quantize_dynamic(
    artifact: Artifact, options: dict[str, Any], out_dir: Path, sample: Any
) -> Artifact:
    """Dynamic int8 quantisation of Linear layers; ``exclude`` keeps matching layers in
    float32, ``per_channel`` uses one scale per output channel (better fidelity)."""
    import torch
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    module = _torch_input(artifact, "quantize_dynamic")
    network = _network(module)
    exclude = list(options.get("exclude", []))
    qconfig = per_channel_dynamic_qconfig if options.get("per_channel") else default_dynamic_qconfig
    spec = {
        name: qconfig
        for name, child in network.named_modules()
        if isinstance(child, torch.nn.Linear) and not _excluded(name, exclude)
    }
    if not spec:
        raise PassNotApplicable(
            "quantize_dynamic found no Linear layer to quantise (all excluded?)"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantised = torch.ao.quantization.quantize_dynamic(network, spec, dtype=torch.qint8)
    if network is not module:
        module[0].auto_model = quantised
    else:
        module = quantised
    result = _save_module(module, artifact, out_dir)
    return Artifact(result.format, result.path, result.task, result.tokenizer_dir,
                    {"quantised_layers": len(spec), "excluded": exclude})  # fmt: skip


def prune(artifact: Artifact, options: dict[str, Any], out_dir: Path, sample: Any) -> Artifact:
    """Magnitude (L1) pruning of every Linear weight to ``sparsity``, made permanent."""
    import torch
    from torch.nn.utils import prune as torch_prune

    sparsity = float(options.get("sparsity", 0.3))
    if not 0.0 <= sparsity < 1.0:
        raise PassNotApplicable(f"prune: sparsity must be in [0, 1), got {sparsity}")
    module = _torch_input(artifact, "prune")
    exclude = list(options.get("exclude", []))
    pruned = 0
    for name, child in _network(module).named_modules():
        if isinstance(child, torch.nn.Linear) and not _excluded(name, exclude):
            torch_prune.l1_unstructured(child, name="weight", amount=sparsity)
            torch_prune.remove(child, "weight")
            pruned += 1
    if not pruned:
        raise PassNotApplicable("prune found no Linear layer to prune (all excluded?)")
    result = _save_module(module, artifact, out_dir)
    return Artifact(result.format, result.path, result.task, result.tokenizer_dir,
                    {"pruned_layers": pruned, "sparsity": sparsity})  # fmt: skip


def torchscript(
    artifact: Artifact, options: dict[str, Any], out_dir: Path, sample: Any
) -> Artifact:
    """Trace the module to TorchScript (optionally frozen) so it runs without Python classes."""
    import torch

    if artifact.task == "embedding":
        raise PassNotApplicable(
            "torchscript does not apply to sentence-transformers models (tokenizer and pooling "
            "are Python); use onnx_export"
        )
    module = _torch_input(artifact, "torchscript")
    path = out_dir / "model.ts"
    with torch_warnings.jit_export():
        with torch.inference_mode(False), torch.no_grad():
            traced = torch.jit.trace(module, sample, check_trace=False)
            if options.get("freeze", True):
                traced = torch.jit.freeze(traced.eval())
        torch.jit.save(traced, str(path))
    return Artifact("torchscript", path, artifact.task, artifact.tokenizer_dir)


def onnx_export(
    artifact: Artifact, options: dict[str, Any], out_dir: Path, sample: Any
) -> Artifact:
    """Export to ONNX; embedding models export their transformer (see baking.onnx.export)."""
    path = out_dir / "model.onnx"
    if artifact.task == "embedding":
        from flowstone.baking.onnx.export import export_transformer_onnx

        source = artifact.path
        if artifact.format == "torch_module":  # e.g. pruned: save it as a folder first
            module = load_torch_module(artifact)
            source = out_dir / "st"
            module.save(str(source))
        elif artifact.format != "sentence_transformers":
            raise PassNotApplicable(f"onnx_export cannot take a {artifact.format} embedding model")
        export_transformer_onnx(Path(source), path, opset=options.get("opset"))
        if source != artifact.path:
            shutil.rmtree(source, ignore_errors=True)
        return Artifact("onnx", path, "embedding", artifact.tokenizer_dir or artifact.path)
    import torch

    module = _torch_input(artifact, "onnx_export")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (sample,), str(path), dynamo=False, input_names=["input"],
            output_names=["logits"], opset_version=options.get("opset", 17),
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )  # fmt: skip
    return Artifact("onnx", path, artifact.task, artifact.tokenizer_dir)


def _onnx_input(artifact: Artifact, pass_name: str) -> None:
    if artifact.format != "onnx":
        raise PassNotApplicable(f"'{pass_name}' needs an ONNX model; put onnx_export before it")


def onnx_optimize(
    artifact: Artifact, options: dict[str, Any], out_dir: Path, sample: Any
) -> Artifact:
    """ONNX Runtime graph optimisation (fusions) saved offline."""
    _onnx_input(artifact, "onnx_optimize")
    from flowstone.baking.onnx.optimize import optimize_onnx

    path = optimize_onnx(artifact.path, out_dir / "model.onnx", **options)
    return Artifact("onnx", Path(path), artifact.task, artifact.tokenizer_dir)


def onnx_quantize(
    artifact: Artifact, options: dict[str, Any], out_dir: Path, sample: Any
) -> Artifact:
    """ONNX Runtime dynamic int8 quantisation, with per-node exclusions."""
    _onnx_input(artifact, "onnx_quantize")
    from flowstone.baking.onnx.quantize import quantize_onnx

    opts = dict(options)
    per_channel = bool(opts.pop("per_channel", False))
    exclude = opts.pop("exclude_nodes", None) or opts.pop("exclude", None)
    path = quantize_onnx(
        artifact.path,
        out_dir / "model.onnx",
        per_channel=per_channel,
        exclude_nodes=exclude,
        **opts,
    )
    return Artifact("onnx", Path(path), artifact.task, artifact.tokenizer_dir)


PASSES: dict[str, PassFn] = {
    "quantize_dynamic": quantize_dynamic,
    "prune": prune,
    "torchscript": torchscript,
    "onnx_export": onnx_export,
    "onnx_optimize": onnx_optimize,
    "onnx_quantize": onnx_quantize,
}
