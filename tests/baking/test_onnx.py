"""ONNX Runtime bake steps (flowstone.baking.onnx) on the real all-MiniLM-L6-v2: export, fuse, quantise, encode, and the
baked embeddings held against the original SentenceTransformer on a slice of the held-out pairs.

One module-scoped export/optimise (about 10 s on 2 cores) is shared by the tests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from flowstone.baking import fidelity  # noqa: E402
from flowstone.baking.errors import OnnxBakeError  # noqa: E402
from flowstone.baking.onnx import export, graph, optimize, quantize, recipe, runtime  # noqa: E402

pytestmark = pytest.mark.slow  # exports, fuses and quantizes the real MiniLM (ONNX)
SUBSET = 240  # texts of the held-out set used here (the bench uses all 1001)


@pytest.fixture(scope="module")
def model_dir() -> Path:
    from flowstone.evaluation.embedding import model_path

    return model_path()


@pytest.fixture(scope="module")
def held_out() -> tuple[list[str], list[tuple[int, int, str]]]:
    texts, pairs = fidelity.load_fidelity_pairs()
    keep = [p for p in pairs if p[0] < SUBSET and p[1] < SUBSET]
    return texts[:SUBSET], keep


@pytest.fixture(scope="module")
def reference(model_dir: Path, held_out) -> object:
    from flowstone.evaluation.embedding import load_encoder

    texts, _ = held_out
    return load_encoder(str(model_dir)).encode(texts, batch_size=32, show_progress_bar=False)


@pytest.fixture(scope="module")
def exported(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export.export_transformer_onnx(model_dir, tmp_path_factory.mktemp("onnx") / "m.onnx")


@pytest.fixture(scope="module")
def fused(exported: Path) -> Path:
    return optimize.optimize_onnx(exported, exported.with_name("fused.onnx"))


def test_pairs_file_is_big_enough_and_well_formed() -> None:
    texts, pairs = fidelity.load_fidelity_pairs()
    assert len(pairs) >= 500
    assert len(set(texts)) == len(texts)
    assert fidelity.FIDELITY_PAIRS.stat().st_size < 200_000
    kinds = {kind.split(":")[0] for _, _, kind in pairs}
    assert {"suite", "perturbed", "same-document", "random"} <= kinds


def test_export_records_pooling_and_fuses(fused: Path) -> None:
    meta = graph.read_onnx_metadata(fused)
    assert meta["pooling"] == "mean_tokens" and meta["normalize"] is True
    assert meta["max_seq_length"] == 256
    ops = graph.graph_op_counts(fused)
    assert ops.get("Attention") == 6 and ops.get("SkipLayerNormalization") == 12


def test_tokenizer_matches_sentence_transformers(model_dir: Path, fused: Path, held_out) -> None:
    from flowstone.evaluation.embedding import load_encoder

    texts, _ = held_out
    original = load_encoder(str(model_dir))
    embedder = runtime.OnnxEmbedder(model_dir, fused, threads=1)
    for start in range(0, len(texts), 32):
        batch = texts[start : start + 32]
        theirs = getattr(original, "preprocess", original.tokenize)(batch)
        ours = embedder.tokenize(batch)
        assert (theirs["input_ids"].numpy() == ours["input_ids"]).all()
        assert (theirs["attention_mask"].numpy() == ours["attention_mask"]).all()


def test_fp32_fused_matches_original(model_dir: Path, fused: Path, held_out, reference) -> None:
    texts, pairs = held_out
    baked = runtime.OnnxEmbedder(model_dir, fused, threads=2).encode(texts, batch_size=32)
    assert baked.shape == reference.shape
    report = fidelity.fidelity_report(reference, baked, pairs)
    assert report.cosine_min > 0.99999
    assert report.spearman_rho > 0.99999


def test_recommended_recipe_keeps_fidelity(
    model_dir: Path, exported: Path, held_out, reference, tmp_path: Path
) -> None:
    """Walk the recipe's steps the way the pass runner will (the export is the fixture's)."""
    import numpy as np

    plan = recipe.recommended_recipe()
    json.dumps(plan)  # plain data: the pass runner stores it in the manifest
    assert plan["steps"][0]["function"] == "export_transformer_onnx"
    current = exported
    for index, step in enumerate(plan["steps"][1:]):
        options = dict(step["options"])
        out = tmp_path / f"step{index}.onnx"
        if step["function"] == "optimize_onnx":
            current = optimize.optimize_onnx(current, out, **options)
        else:
            assert step["function"] == "quantize_onnx"
            current = quantize.quantize_onnx(
                current,
                out,
                per_channel=options.pop("per_channel"),
                exclude_nodes=options.pop("exclude_nodes", None),
                **options,
            )
    assert current.stat().st_size < 0.8 * exported.stat().st_size
    texts, pairs = held_out
    baked = runtime.OnnxEmbedder(model_dir, current, threads=2).encode(texts, batch_size=32)
    assert np.allclose(
        np.linalg.norm(baked, axis=1), 1.0, atol=1e-4
    )  # normalised like the original
    report = fidelity.fidelity_report(reference, baked, pairs)
    assert len(pairs) >= 150
    assert report.spearman_rho >= 0.99, report
    assert report.cosine_mean >= 0.99, report
    assert report.cosine_min >= 0.97, report


def test_encode_keeps_input_order_and_handles_edge_cases(
    model_dir: Path, exported: Path, held_out
) -> None:
    import numpy as np

    texts, _ = held_out
    embedder = runtime.OnnxEmbedder(model_dir, exported, threads=1)
    sample = texts[:40]
    together = embedder.encode(sample, batch_size=7)
    one_by_one = np.stack([embedder.encode([text])[0] for text in sample[:5]])
    assert np.allclose(together[:5], one_by_one, atol=1e-5)
    assert embedder.encode([]).shape == (0, 384)
    with pytest.raises(TypeError):
        embedder.encode("one string")  # type: ignore[arg-type]


def test_dynamo_export_runs_and_names_nodes_like_torchscript(
    model_dir: Path, held_out, reference, tmp_path: Path
) -> None:
    """The fallback for a torch without the TorchScript exporter: same outputs, and the recipe's
    exclusion patterns still find their node."""
    exported = export.export_transformer_onnx(model_dir, tmp_path / "d.onnx", exporter="dynamo")
    quantized = quantize.quantize_onnx(
        exported,
        tmp_path / "q.onnx",
        per_channel=True,
        op_types=["MatMul"],
        exclude_nodes=recipe.SENSITIVE_NODES[:1],
    )
    assert graph.graph_op_counts(quantized)["MatMulInteger"] == 35
    texts, pairs = held_out
    baked = runtime.OnnxEmbedder(model_dir, exported, threads=2).encode(texts[:64])
    assert (
        fidelity.fidelity_report(reference[:64], baked, [(0, 1), (2, 3), (4, 5)]).cosine_min
        > 0.99999
    )


def test_exclusions_keep_nodes_in_fp32(fused: Path, tmp_path: Path) -> None:
    out = quantize.quantize_onnx(
        fused,
        tmp_path / "q.onnx",
        per_channel=True,
        exclude_nodes=["*/layer.0/output/dense/MatMul"],
    )
    ops = graph.graph_op_counts(out)
    assert ops.get("MatMul") == 1  # the excluded FFN output dense, still float
    assert ops.get("QAttention") == 6


def test_bad_exclusion_and_options_are_clear_errors(fused: Path, tmp_path: Path) -> None:
    with pytest.raises(OnnxBakeError, match="matches no quantisable node"):
        quantize.quantize_onnx(
            fused, tmp_path / "q.onnx", per_channel=True, exclude_nodes=["nope*"]
        )
    with pytest.raises(OnnxBakeError, match="unknown options"):
        quantize.quantize_onnx(fused, tmp_path / "q.onnx", per_channel=True, colour="blue")
    with pytest.raises(OnnxBakeError, match="per_channel=True"):
        quantize.quantize_onnx(fused, tmp_path / "q.onnx", per_channel=False, method="matmul_nbits")
    with pytest.raises(OnnxBakeError, match="weight_type"):
        quantize.quantize_onnx(fused, tmp_path / "q.onnx", per_channel=True, weight_type="int4")
    with pytest.raises(OnnxBakeError, match="does not exist"):
        quantize.quantize_onnx(tmp_path / "missing.onnx", tmp_path / "q.onnx", per_channel=True)
    assert not (tmp_path / "q.onnx").exists()
    assert not list(tmp_path.glob(".tmp-*"))  # no temporary file left behind


def test_corrupt_onnx_file_is_a_clear_error(model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(OnnxBakeError, match="broken.onnx"):
        runtime.OnnxEmbedder(model_dir, broken)


def test_not_a_sentence_transformers_folder(tmp_path: Path) -> None:
    with pytest.raises(OnnxBakeError, match="modules.json"):
        export.export_transformer_onnx(tmp_path, tmp_path / "m.onnx")
