"""The bake records against values stored before they were dataclasses: a partition
materialized then must still load, be written back unchanged, and show the same metadata."""

import json
from pathlib import Path

import dagster as dg
import pytest

from assets.metadata import to_metadata
from flowstone.baking.records.bake import BakeRecord
from flowstone.baking.records.display import Markdown
from flowstone.baking.records.manifest import Manifest
from flowstone.baking.records.profile import ProfileRecord
from flowstone.baking.records.quality import ClassifierFigures, EmbeddingFigures, QualityRecord
from flowstone.baking.records.source import SourceRecord
from flowstone.warehouse.bake_rows import QUALITY_FLOATS, profile_rows, quality_rows

STORED = json.loads((Path(__file__).parent / "data" / "stored_records.json").read_text())
RECORDS = [
    ("source_model", SourceRecord),
    ("baked_model", BakeRecord),
    ("bake_quality", QualityRecord),
    ("bake_quality_embedding", QualityRecord),
    ("bake_profile", ProfileRecord),
    ("manifest", Manifest),
]


@pytest.mark.parametrize(("key", "record"), RECORDS)
def test_stored_values_load_and_write_back_unchanged(key, record):
    assert record.from_dict(STORED[key]).to_dict() == STORED[key]


def test_quality_figures_follow_the_task():
    assert isinstance(QualityRecord.from_dict(STORED["bake_quality"]).figures, ClassifierFigures)
    embedding = QualityRecord.from_dict(STORED["bake_quality_embedding"])
    assert isinstance(embedding.figures, EmbeddingFigures)
    assert embedding.value == embedding.figures.spearman_rho


def test_metadata_keys_and_tables_are_the_ones_the_ui_showed():
    source = SourceRecord.from_dict(STORED["source_model"])
    baked = BakeRecord.from_dict(STORED["baked_model"])
    assert baked.passes_table() == STORED["metadata"]["passes"]
    assert list(baked.metadata(source)) == ["version", "format", "size_mb", "size_ratio",
                                            "sha256", "resumed_passes", "passes"]  # fmt: skip
    profile = ProfileRecord.from_dict(STORED["bake_profile"])
    assert profile.latency_table() == STORED["metadata"]["latency"]
    assert list(profile.metadata(Path("chart.png"))) == [
        "threads", "load_average", "throughput_ratio_batch_8", "baked_throughput_per_s_batch_8",
        "size_ratio", "peak_rss_ratio", "baked_peak_rss_mb", "latency", "chart"]  # fmt: skip
    quality = QualityRecord.from_dict(STORED["bake_quality"]).metadata()
    assert list(quality) == ["examples", "accuracy_original", "accuracy_baked",
                             "accuracy_retention", "label_agreement", "max_abs_logit_diff",
                             "value", "threshold", "metric", "passed"]  # fmt: skip
    assert quality["examples"] == 200.0 and isinstance(quality["examples"], float)


def test_to_metadata_renders_markdown_paths_and_json():
    out = to_metadata({"table": Markdown("| a |\n|---|"), "chart": Path("/x/p.png"),
                       "report_path": "/x/r.html", "manifest": {"a": 1}, "n": 2, "s": "text"})  # fmt: skip
    assert out["table"] == dg.MetadataValue.md("| a |\n|---|")
    assert out["chart"] == dg.MetadataValue.path("/x/p.png")
    assert out["report_path"] == dg.MetadataValue.path("/x/r.html")
    assert out["manifest"] == dg.MetadataValue.json({"a": 1})
    assert (out["n"], out["s"]) == (2, "text")


def test_warehouse_rows_keep_one_schema_for_every_task():
    source = SourceRecord.from_dict(STORED["source_model"])
    classifier = quality_rows(source, QualityRecord.from_dict(STORED["bake_quality"]), "r1")
    embedding = quality_rows(
        source, QualityRecord.from_dict(STORED["bake_quality_embedding"]), "r1"
    )
    assert list(classifier.columns) == list(embedding.columns)
    for column in QUALITY_FLOATS:
        assert classifier[column].dtype == embedding[column].dtype == "float64"
    assert embedding["fidelity"].iloc[0] <= 1.0 and classifier["spearman_rho"].isna().all()
    profile = profile_rows(source, ProfileRecord.from_dict(STORED["bake_profile"]), "r1")
    assert list(profile["variant"]) == ["original", "baked"]
    assert list(profile["batch_size"]) == [8, 8] and (profile["run_id"] == "r1").all()
