"""Reading ONNX files: a clear error for a missing or corrupt one, the operator histogram the
pass metadata shows, and the pooling record the export keeps in the model's metadata (the
runner reads it; later steps carry it over)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from flowstone.baking.errors import OnnxBakeError

METADATA_KEY = "flowstone.sentence_embedding"
# What the runner needs from the folder, recorded in the graph so the file explains itself.
METADATA_FIELDS = ("pooling", "normalize", "max_seq_length", "num_heads", "hidden_size")


def load_onnx(path: Path, step: str) -> Any:
    """The model at ``path``; an error naming ``step`` if it is missing or unreadable."""
    import onnx

    if not path.is_file():
        raise OnnxBakeError(f"{step}: {path} does not exist (did the previous pass finish?)")
    try:
        return onnx.load(str(path))
    except Exception as exc:
        raise OnnxBakeError(f"{step}: {path} is not a readable ONNX model: {exc}") from exc


def graph_op_counts(path: Path) -> dict[str, int]:
    """Operator histogram of an ONNX file (for pass metadata: which fusions happened)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return dict(Counter(node.op_type for node in model.graph.node).most_common())


def read_onnx_metadata(path: Path) -> dict[str, Any]:
    """The pooling/normalisation record that export_transformer_onnx wrote ({} if absent)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    return {}


def write_metadata(model: Any, config: dict[str, Any]) -> None:
    """Replace the model's metadata with the pooling record from ``config`` (in memory)."""
    meta = {key: config[key] for key in METADATA_FIELDS}
    del model.metadata_props[:]
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(meta))


def copy_metadata(src: Path, dst: Path) -> None:
    """Carry ``src``'s pooling record over to ``dst`` (quantisers drop model metadata)."""
    meta = read_onnx_metadata(src)
    if not meta:
        return
    import onnx

    model = onnx.load(str(dst))
    if not any(prop.key == METADATA_KEY for prop in model.metadata_props):
        model.metadata_props.add(key=METADATA_KEY, value=json.dumps(meta))
        onnx.save(model, str(dst))
