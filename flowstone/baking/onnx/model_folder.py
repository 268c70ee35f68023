"""What the ONNX steps need from a sentence-transformers folder (``modules.json``, the pooling
config, the max sequence length), read once and checked, so an unsupported folder fails with
the file named before any export starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flowstone.baking.errors import OnnxBakeError


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
