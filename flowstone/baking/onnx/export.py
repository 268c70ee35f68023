"""Export the transformer of a sentence-transformers folder to ONNX.

The exported graph stops at the transformer's last hidden state. Pooling and normalisation run
in the runner (numpy, < 1 % of the time), read from the model folder's own ``modules.json`` /
``1_Pooling/config.json`` and recorded in the ONNX metadata. Keeping them out of the graph keeps
it in the exact shape ONNX Runtime's BERT fusions recognise. The export uses the eager attention
implementation and the TorchScript exporter (``dynamo=False``): that graph is the one the
transformer optimizer fuses into ``Attention``, ``SkipLayerNormalization``, ``BiasGelu`` and
``EmbedLayerNormalization``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowstone.atomic import atomic_path
from flowstone.baking.errors import OnnxBakeError
from flowstone.baking.onnx.graph import write_metadata
from flowstone.baking.onnx.model_folder import read_sentence_transformer_config

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "last_hidden_state"
DEFAULT_OPSET = 17
DEFAULT_DYNAMO_OPSET = 18


def export_transformer_onnx(
    model_dir: Path, out_path: Path, *, opset: int | None = None, exporter: str = "auto"
) -> Path:
    """Export the transformer of a sentence-transformers folder to ONNX.

    Inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` (int64, [batch, seq], both axes
    dynamic); output ``last_hidden_state`` [batch, seq, hidden]. Pooling and normalisation are not
    in the graph: :class:`OnnxEmbedder` applies them (recorded in the model's metadata). The
    export is checked against torch on a sample batch before it is written into place.

    ``exporter``: "torchscript" (``dynamo=False``: the graph ORT's BERT fusions recognise, with
    node names like ``/inner/encoder/layer.0/output/dense/MatMul``), "dynamo", or "auto" (the
    TorchScript exporter while torch still ships it, dynamo otherwise). Dynamo exports get their
    weight MatMuls renamed to the same scheme, so exclusion patterns work with either.
    """
    import warnings

    import torch
    from transformers import AutoModel, AutoTokenizer

    model_dir, out_path = Path(model_dir), Path(out_path)
    config = read_sentence_transformer_config(model_dir)
    transformer_dir = config["transformer_dir"]
    try:
        model = AutoModel.from_pretrained(transformer_dir, attn_implementation="eager").eval()
        tokenizer = AutoTokenizer.from_pretrained(transformer_dir)
    except Exception as exc:
        raise OnnxBakeError(f"{transformer_dir}: cannot load the transformer: {exc}") from exc

    class _LastHiddenState(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):  # noqa: ANN001, ANN202
            out = self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return out.last_hidden_state

    sample = tokenizer(
        ["A short sentence.", "A somewhat longer sentence, so that the batch needs padding."],
        padding=True,
        return_tensors="pt",
    )
    if "token_type_ids" not in sample:
        sample["token_type_ids"] = torch.zeros_like(sample["input_ids"])
    args = tuple(sample[name] for name in INPUT_NAMES)
    wrapper = _LastHiddenState(model).eval()
    axes = {name: {0: "batch", 1: "sequence"} for name in (*INPUT_NAMES, OUTPUT_NAME)}
    if exporter == "auto":
        exporter = "torchscript" if _has_torchscript_exporter() else "dynamo"
    if exporter not in ("torchscript", "dynamo"):
        raise OnnxBakeError(f"export_transformer_onnx: unknown exporter {exporter!r}")
    # The file appears under out_path only once it is exported and checked against torch.
    with atomic_path(out_path) as tmp:
        with warnings.catch_warnings(), torch.inference_mode():
            # both exporters warn about themselves (deprecation, dynamic shapes); not actionable
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(
                    wrapper,
                    args,
                    str(tmp),
                    dynamo=exporter == "dynamo",
                    input_names=list(INPUT_NAMES),
                    output_names=[OUTPUT_NAME],
                    dynamic_axes=axes,
                    # dynamo implements opset >= 18 only; asking for less converts the graph
                    # down and drops the node metadata the renaming below needs
                    opset_version=opset
                    or (DEFAULT_DYNAMO_OPSET if exporter == "dynamo" else DEFAULT_OPSET),
                    **({"external_data": False} if exporter == "dynamo" else {}),
                )
            except Exception as exc:
                raise OnnxBakeError(
                    f"ONNX export ({exporter}) of {transformer_dir} failed: {exc}"
                ) from exc
            expected = wrapper(*args).numpy()
        _write_metadata(tmp, config, rename_scoped=exporter == "dynamo")
        got = _run_once(
            tmp, {name: tensor.numpy() for name, tensor in zip(INPUT_NAMES, args, strict=True)}
        )
        diff = float(abs(got - expected).max())
        if diff > 1e-3:
            raise OnnxBakeError(
                f"ONNX export of {transformer_dir}: output differs from torch by {diff:.2e} "
                "(> 1e-3)"
            )
    return out_path


def _has_torchscript_exporter() -> bool:
    try:
        from torch.onnx._internal.torchscript_exporter import utils  # noqa: F401
    except ImportError:
        return False
    return True


def _rename_like_torchscript(model: Any) -> None:
    """Name each weight MatMul/Gemm of a dynamo export after its module path, the way the
    TorchScript exporter does (``/inner/encoder/layer.0/output/dense/MatMul``), from the
    ``pkg.torch.onnx.name_scopes`` metadata dynamo records on every node."""
    import ast

    taken = {node.name for node in model.graph.node}
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        scopes = next(
            (p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None
        )
        if not scopes:
            continue
        chain = [s for s in ast.literal_eval(scopes)[:-1] if s]  # drop the op's own scope
        parts = [chain[0]] + [
            inner[len(outer) + 1 :] for outer, inner in zip(chain, chain[1:], strict=False)
        ]
        name = "/" + "/".join(parts) + "/" + node.op_type
        if name in taken:
            continue
        taken.add(name)
        node.name = name


def _write_metadata(path: Path, config: dict[str, Any], *, rename_scoped: bool = False) -> None:
    import onnx

    model = onnx.load(str(path))
    if rename_scoped:
        _rename_like_torchscript(model)
    write_metadata(model, config)
    onnx.save(model, str(path))


def _run_once(path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {item.name for item in session.get_inputs()}
    return session.run(None, {k: v for k, v in feed.items() if k in names})[0]
