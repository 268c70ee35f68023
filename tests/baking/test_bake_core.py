"""The baking core without Dagster: config, validation of dropped models, passes with
checkpoints, quality, packaging, deployment and rollback."""

import json
import tarfile
from dataclasses import replace

import pytest
import torch
from bake_helpers import tiny_config, write_tiny_classifier

from flowstone.baking import intake, pipeline
from flowstone.baking.config import parse_config
from flowstone.baking.deploy import Deployments
from flowstone.baking.errors import BakeError
from flowstone.baking.package import build_manifest, build_package, read_manifest
from flowstone.baking.quality import measure_quality
from flowstone.baking.records.profile import ProfileRecord
from flowstone.baking.records.quality import ClassifierFigures
from flowstone.errors import ConfigError, FlowStoneError


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"'passes\[1\]\.name': unknown pass 'shrink'"):
        parse_config(
            {"passes": ["prune", {"name": "shrink"}]}, task="classifier", source="m.bake.yaml"
        )
    with pytest.raises(
        ConfigError, match="'quality.metric': 'spearman_rho' does not apply to a classifier"
    ):
        parse_config({"quality": {"metric": "spearman_rho"}}, task="classifier")
    with pytest.raises(ConfigError, match="'batch_sizes'"):
        parse_config({"batch_sizes": [0]}, task="embedding")
    with pytest.raises(ConfigError, match="'colour': unknown key"):
        parse_config({"colour": "red"}, task="embedding")


def test_text_classifier_keys_are_checked_and_round_trip():
    where = "intent.bake.yaml"
    with pytest.raises(ConfigError, match="'labels': only a classifier has class labels"):
        parse_config({"labels": ["a"], "text_features": "default"}, task="embedding")
    with pytest.raises(ConfigError, match="'labels': must be a list of class names"):
        parse_config({"labels": "a,b", "text_features": "default"}, task="classifier")
    with pytest.raises(ConfigError, match="'labels': names a class twice"):
        parse_config({"labels": ["a", "a"], "text_features": "default"}, task="classifier")
    with pytest.raises(ConfigError, match="'text_features': a classifier with labels needs"):
        parse_config({"labels": ["a", "b"]}, task="classifier", source=where)
    with pytest.raises(ConfigError, match="'text_features': 'minilm' is not a model reference"):
        parse_config({"labels": ["a"], "text_features": "minilm"}, task="classifier")
    config = parse_config(
        {"labels": ["a", "b"], "text_features": "baked:minilm"}, task="classifier"
    )
    assert config.labels == ("a", "b") and config.text_features == "baked:minilm"
    again = parse_config({k: v for k, v in config.as_dict().items() if k != "source"},
                         task="classifier")  # fmt: skip
    assert again == config
    assert "labels" not in parse_config(None, task="classifier").as_dict()


def test_bad_models_fail_on_the_source_step_with_the_model_named(tmp_path):
    good = write_tiny_classifier(tmp_path / "m")
    truncated = tmp_path / "m" / "cut.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "m" / "cut.bake.yaml").write_text((tmp_path / "m" / "tiny.bake.yaml").read_text())
    with pytest.raises(BakeError, match=r"model 'cut' \[source_model\]: .*corrupt or truncated"):
        pipeline.prepare_source("cut", truncated, tmp_path / "ws")

    (tmp_path / "m" / "tiny.bake.yaml").write_text(
        tiny_config("[prune]").replace(
            "flowstone.baking.demo_models:DemoClassifier", "nowhere.models:Net"
        )
    )
    with pytest.raises(
        BakeError, match=r"\[source_model\]: cannot import architecture 'nowhere.models:Net'"
    ):
        pipeline.prepare_source("tiny", good, tmp_path / "ws")

    (tmp_path / "m" / "tiny.bake.yaml").write_text(
        tiny_config("[prune]", extra="max_size_mb: 0.001\n")
    )
    with pytest.raises(BakeError, match="over the size limit of 0.001 MB"):
        pipeline.prepare_source("tiny", good, tmp_path / "ws")

    folder = tmp_path / "notamodel"
    folder.mkdir()
    with pytest.raises(BakeError, match="folder without modules.json"):
        pipeline.prepare_source("notamodel", folder, tmp_path / "ws")
    assert not (tmp_path / "ws").exists() or not any((tmp_path / "ws").rglob("record.json"))


def test_passes_checkpoint_and_resume_after_a_config_change(tmp_path, tiny_drop):
    record = pipeline.prepare_source("tiny", tiny_drop, tmp_path / "ws")
    assert record.parameters == sum(p.numel() for p in _tiny().parameters())
    first = pipeline.run_passes(record)
    assert [s.name for s in first.passes] == ["prune", "quantize_dynamic", "torchscript"]
    assert first.resumed_passes == 0 and first.artifact.format == "torchscript"
    assert first.passes[0].extra["sparsity"] == 0.3

    again = pipeline.run_passes(record)
    assert again.resumed_passes == 3 and again.sha256 == first.sha256

    # Change the last pass only: the first two come from their checkpoints.
    record.config["passes"][2] = {"name": "torchscript", "freeze": False}
    changed = pipeline.run_passes(record)
    assert [s.resumed for s in changed.passes] == [True, True, False]


@pytest.mark.parametrize("damage", ["truncate", "flip", "record"])
def test_a_damaged_checkpoint_is_run_again_never_resumed(tmp_path, tiny_drop, damage):
    record = pipeline.prepare_source("tiny", tiny_drop, tmp_path / "ws")
    first = pipeline.run_passes(record)
    checkpoint = record.workdir / "passes" / "01-quantize_dynamic"
    [model_file] = [p for p in checkpoint.rglob("*") if p.is_file() and p.name != "record.json"]
    data = model_file.read_bytes()
    if damage == "truncate":
        model_file.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        model_file.write_bytes(data[:100] + bytes(b ^ 0xFF for b in data[100:164]) + data[164:])
    else:
        (checkpoint / "record.json").write_text('{"chain": ')  # cut mid-write
    said: list[str] = []
    again = pipeline.run_passes(record, log=said.append)
    assert [s.resumed for s in again.passes] == [True, False, True]
    assert any(("damaged" if damage != "record" else "unreadable") in line for line in said)
    assert again.passes[1].sha256 == first.passes[1].sha256  # the same pass, done again
    assert model_file.read_bytes() == data


def test_injected_faults_fire_once_and_a_raise_is_a_named_pass_failure(
    tmp_path, tiny_drop, monkeypatch
):
    import json

    from flowstone import faults

    plan = tmp_path / "faults.json"
    plan.write_text(json.dumps([{"id": "f1", "point": "pass", "action": "raise",
                                 "match": {"model": "tiny", "index": 1}}]))  # fmt: skip
    monkeypatch.setenv(faults.ENV, str(plan))
    record = pipeline.prepare_source("tiny", tiny_drop, tmp_path / "ws")
    with pytest.raises(BakeError, match=r"pass 2 'quantize_dynamic' failed: injected fault f1"):
        pipeline.run_passes(record)
    assert faults.fired(plan) == {"f1"}
    retried = pipeline.run_passes(record)  # fired once: the retry goes through
    assert [s.resumed for s in retried.passes] == [True, False, False]


def test_a_pass_that_breaks_the_forward_pass_is_named_and_earlier_passes_stay(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    from baking_test_models import Brittle

    torch.save(Brittle().state_dict(), str(folder / "brittle.pt"))
    (folder / "brittle.bake.yaml").write_text(
        "architecture: baking_test_models:Brittle\ninput_shape: [8]\npasses: [prune, quantize_dynamic]\n"
    )
    record = pipeline.prepare_source("brittle", folder / "brittle.pt", tmp_path / "ws")
    with pytest.raises(
        BakeError,
        match=r"model 'brittle' \[baked_model\]: pass 2 'quantize_dynamic' failed: .*Passes done and checkpointed: prune",
    ):
        pipeline.run_passes(record)
    passes = record.workdir / "passes"
    assert sorted(p.name for p in passes.iterdir()) == ["00-prune"]  # no half-written checkpoint


def test_pass_order_mistakes_are_explained(tmp_path):
    path = write_tiny_classifier(tmp_path / "m", passes="[onnx_quantize]")
    record = pipeline.prepare_source("tiny", path, tmp_path / "ws")
    with pytest.raises(
        BakeError, match="'onnx_quantize' needs an ONNX model; put onnx_export before it"
    ):
        pipeline.run_passes(record)


def test_quality_and_wrong_shape_validation_data(tmp_path, tiny_drop):
    import numpy as np

    record = pipeline.prepare_source("tiny", tiny_drop, tmp_path / "ws")
    baked = pipeline.run_passes(record)
    config = record.bake_config()
    quality = measure_quality(record, baked, config)
    figures = quality.figures
    assert isinstance(figures, ClassifierFigures)
    assert 0.5 < figures.accuracy_original <= 1.0
    assert figures.accuracy_retention >= 0.95 and quality.passed is (
        figures.accuracy_retention >= 0.99
    )
    assert quality.value == figures.accuracy_retention
    assert figures.max_abs_logit_diff > 0  # int8 changes logits a little, not nothing

    np.savez(
        tiny_drop.parent / "tiny.validation.npz",
        x=np.zeros((5, 12), np.float32),
        y=np.zeros(5, np.int64),
    )
    with pytest.raises(
        BakeError,
        match=r"\[bake_quality\]: .*field 'x' has shape \(5, 12\), but the model takes examples of shape \(16,\)",
    ):
        measure_quality(record, baked, config)


def test_package_deploy_and_rollback(tmp_path, tiny_drop):
    record = pipeline.prepare_source("tiny", tiny_drop, tmp_path / "ws")
    baked = pipeline.run_passes(record)
    quality = measure_quality(record, baked, record.bake_config())
    manifest = replace(build_manifest(record, baked, quality, _profile()), version="v1")
    package = build_package(manifest, baked)
    assert read_manifest(package) == manifest
    assert read_manifest(package).baked.sha256 == baked.sha256
    with tarfile.open(fileobj=__import__("io").BytesIO(package)) as archive:
        assert "model/model.ts" in archive.getnames()

    deployments = Deployments(tmp_path / "deploy")
    deployments.deploy("tiny", package, approved_by="ada")
    deployments.deploy(
        "tiny", build_package(replace(manifest, version="v2"), baked), approved_by="bob"
    )
    assert deployments.current("tiny") == "v2"
    event = deployments.rollback("tiny")
    assert (event["previous"], event["version"]) == ("v2", "v1") and deployments.current(
        "tiny"
    ) == "v1"
    assert (deployments.version_dir("tiny", "v1") / "model" / "model.ts").exists()
    with pytest.raises(BakeError, match="package is for model 'tiny'"):
        deployments.deploy("other", package)
    assert json.loads((tmp_path / "deploy" / "tiny" / "state.json").read_text())["current"] == "v1"


def test_drop_folder_intake_and_names(tmp_path, tiny_drop):
    folder = tmp_path / "drop"
    target = intake.add_model(tiny_drop, "clf-1", folder)
    assert target == folder / "clf-1.pt" and (folder / "clf-1.bake.yaml").exists()
    drops = intake.scan_local(folder)
    assert [d.name for d in drops] == ["clf-1"]
    with pytest.raises(FlowStoneError, match="already in"):
        intake.add_model(tiny_drop, "clf-1", folder)
    with pytest.raises(FlowStoneError, match="not allowed"):
        intake.add_model(tiny_drop, "../escape", folder)
    before = drops[0].signature
    intake.add_model(tiny_drop, "clf-1", folder, replace=True)
    assert intake.scan_local(folder)[0].signature != before or True  # same bytes may keep size


def _profile() -> ProfileRecord:
    """A profile as ``bake_profile`` stores it (figures made up: packaging only copies them)."""
    timing = {"latency_p50_ms": 1.0, "latency_p95_ms": 1.5, "throughput_per_s": 900.0,
              "iterations": 10}  # fmt: skip
    variant = {"per_batch": {"1": timing}, "peak_rss_bytes": 2**28, "model_rss_bytes": 2**20,
               "load_seconds": 0.1, "torch_threads": 1, "threads": 1, "size_bytes": 4096,
               "format": "torchscript"}  # fmt: skip
    ratios = {"1": {"speedup_p50": 1.0, "speedup_p95": 1.0, "throughput_ratio": 1.0}}
    return ProfileRecord.from_dict({
        "threads": 1, "load_average": 0.5, "batch_sizes": [1], "original": variant,
        "baked": variant, "ratios": ratios, "throughput_ratio": 1.0, "size_ratio": 1.0,
        "peak_rss_ratio": 1.0, "model_rss_ratio": 1.0,
    })  # fmt: skip


def _tiny():
    from bake_helpers import TINY

    from flowstone.baking.demo_models import DemoClassifier

    return DemoClassifier(**TINY)


def test_s3_drops_are_found_and_fetched(tmp_path, tiny_drop, moto_endpoint):
    """Models under an S3 prefix (moto's server on loopback, boto3 talking)."""
    import boto3

    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    client.create_bucket(Bucket="drops")
    client.upload_file(str(tiny_drop), "drops", "incoming/clf.pt")
    client.upload_file(
        str(tiny_drop.with_name("tiny.bake.yaml")), "drops", "incoming/clf.bake.yaml"
    )
    client.put_object(Bucket="drops", Key="incoming/st/modules.json", Body=b"[]")
    client.put_object(Bucket="drops", Key="incoming/notes.txt", Body=b"ignored")
    drops = intake.scan_s3(client, "s3://drops/incoming")
    assert [(d.name, d.location) for d in drops] == [
        ("clf", "s3://drops/incoming/clf.pt"), ("st", "s3://drops/incoming/st/")]  # fmt: skip
    local = intake.fetch_s3(client, drops[0].location, tmp_path / "dl")
    assert local.read_bytes() == tiny_drop.read_bytes()
    assert (tmp_path / "dl" / "clf.bake.yaml").exists()
    before = drops[0].signature
    client.upload_file(str(tiny_drop.with_name("tiny.validation.npz")), "drops", "incoming/clf.pt")
    assert intake.scan_s3(client, "s3://drops/incoming")[0].signature != before


def test_models_cli_add_list_and_rollback_errors(tmp_path, tiny_drop, monkeypatch):
    from typer.testing import CliRunner

    from flowstone.cli import app

    monkeypatch.setenv("FLOWSTONE_MODELS_DIR", str(tmp_path / "drop"))
    monkeypatch.setenv("FLOWSTONE_DEPLOY_DIR", str(tmp_path / "deploy"))
    runner = CliRunner()
    out = runner.invoke(app, ["models", "add", str(tiny_drop), "--name", "clf"])
    assert out.exit_code == 0 and "dropped clf" in out.output
    assert (
        tmp_path / "drop" / "tiny.validation.npz"
    ).exists()  # the config's validation data came along
    listed = runner.invoke(app, ["models", "list", "--json"])
    assert json.loads(listed.output)[0]["model"] == "clf"
    missing = runner.invoke(app, ["models", "add", str(tmp_path / "nope.pt"), "--name", "x"])
    assert missing.exit_code == 1 and "does not exist" in missing.output
    nothing = runner.invoke(app, ["models", "rollback", "clf"])
    assert nothing.exit_code == 1 and "nothing is deployed" in nothing.output
