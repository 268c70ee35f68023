"""Sentence embeddings from an exported transformer in ONNX Runtime, the way
``SentenceTransformer.encode`` computes them (same tokenizer, batching, pooling and
normalisation), so a baked variant is measured and deployed behind the same call."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from flowstone.baking.errors import OnnxBakeError
from flowstone.baking.onnx.export import OUTPUT_NAME
from flowstone.baking.onnx.model_folder import read_sentence_transformer_config

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


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
