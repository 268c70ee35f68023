"""The three I/O managers inside real Dagster runs (dg.materialize)."""

import dagster as dg
import pandas as pd
import pytest
from dagster_aws.s3 import S3Resource

from flowstone.storage.database import PartitionedTableStore
from io_managers.database import DatabaseIOManager
from io_managers.object_store import ObjectStoreIOManager
from io_managers.rest import RestIOManager

MULTI = dg.MultiPartitionsDefinition(
    {
        "suite": dg.StaticPartitionsDefinition(["qa", "math"]),
        "system": dg.StaticPartitionsDefinition(["A", "B"]),
    }  # fmt: skip
)
DAILY = dg.StaticPartitionsDefinition(["2024-01-01", "2024-01-02", "x'; DROP TABLE t;--"])


def _mat(assets, resources, **kw):
    result = dg.materialize(assets, resources=resources, raise_on_error=True, **kw)
    return result, result.get_asset_materialization_events()


@dg.asset(partitions_def=MULTI, io_manager_key="warehouse_io_manager")
def scores(context: dg.AssetExecutionContext) -> pd.DataFrame:
    keys = context.partition_key.keys_by_dimension
    return pd.DataFrame({"case": [1, 2], "score": [0.5, 1.0], "tag": [keys["system"]] * 2})


@dg.asset(partitions_def=MULTI, io_manager_key="warehouse_io_manager")
def report(scores: pd.DataFrame) -> pd.DataFrame:
    return scores.assign(score=scores["score"] * 2)


def test_warehouse_io_manager_multi_partitions(tmp_path):
    url = f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    resources = {"warehouse_io_manager": DatabaseIOManager(url=url)}
    key = dg.MultiPartitionKey({"suite": "qa", "system": "B"})
    _, events = _mat([scores, report], resources, partition_key=key)
    meta = events[0].materialization.metadata
    assert meta["dagster/row_count"].value == 2 and meta["table"].value == "scores"
    store = PartitionedTableStore(url)
    back = store.read("report", [{"suite": "qa", "system": "B"}])
    assert back["score"].tolist() == [1.0, 2.0] and back["tag"].tolist() == ["B", "B"]
    assert set(store.read("scores").columns) == {"suite", "system", "case", "score", "tag"}


@dg.asset(partitions_def=DAILY, backfill_policy=dg.BackfillPolicy.single_run())
def feed(context: dg.AssetExecutionContext) -> dict:
    return {pk: {"day": pk, "n": i} for i, pk in enumerate(context.partition_keys)}


@dg.asset(partitions_def=DAILY)
def feed_copy(feed: dict) -> dict:
    return feed


def test_object_store_local_single_run_backfill_and_metadata(tmp_path):
    resources = {"io_manager": ObjectStoreIOManager(base_path=str(tmp_path))}
    tags = {"dagster/asset_partition_range_start": "2024-01-01",
            "dagster/asset_partition_range_end": "2024-01-02"}  # fmt: skip
    _, events = _mat([feed], resources, tags=tags)
    meta = events[0].materialization.metadata
    assert meta["objects"].value == 2
    assert (tmp_path / "flowstone/feed/partition=2024-01-02.fso").is_file()
    _, events = _mat([feed, feed_copy], resources, partition_key="x'; DROP TABLE t;--")
    meta = events[-1].materialization.metadata
    assert meta["format"].value == "json" and len(meta["sha256"].value) == 64
    assert meta["uri"].value.startswith("file://" + str(tmp_path))


dynamic = dg.DynamicPartitionsDefinition(name="models")


@dg.asset(partitions_def=dynamic)
def model_card(context: dg.AssetExecutionContext) -> pd.DataFrame:
    return pd.DataFrame({"model": [context.partition_key], "size": [42]})


def test_object_store_s3_dynamic_partitions(moto_endpoint, s3, bucket):
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("models", ["org/model-1"])
    resources = {"io_manager": ObjectStoreIOManager(
        backend="s3", bucket=bucket,
        s3=S3Resource(endpoint_url=moto_endpoint, aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1"))}  # fmt: skip
    _, events = _mat([model_card], resources, partition_key="org/model-1", instance=instance)
    meta = events[0].materialization.metadata
    assert meta["uri"].value == f"s3://{bucket}/flowstone/model_card/partition=org%2Fmodel-1.fso"
    assert meta["format"].value == "parquet"
    head = s3.head_object(Bucket=bucket, Key="flowstone/model_card/partition=org%2Fmodel-1.fso")
    assert head["ContentLength"] == meta["bytes"].value


@dg.asset(partitions_def=DAILY, io_manager_key="rest")
def remote(context: dg.AssetExecutionContext) -> pd.DataFrame:
    return pd.DataFrame({"day": [context.partition_key], "v": [1]})


@dg.asset(partitions_def=DAILY, io_manager_key="rest")
def remote_copy(remote: pd.DataFrame) -> pd.DataFrame:
    return remote.assign(v=remote["v"] + 1)


def test_rest_io_manager_with_secret_header_and_retries(fake_api, monkeypatch):
    base, api = fake_api
    monkeypatch.setenv("FS_TEST_API_TOKEN", "s3cret")
    rest = RestIOManager(url_template=base + "/v1/{asset}/{partition_key}", format="csv",
                         auth_token=dg.EnvVar("FS_TEST_API_TOKEN"),
                         backoff_initial_seconds=0.01, backoff_max_seconds=0.02)  # fmt: skip
    api.faults = [503]
    _, events = _mat([remote, remote_copy], {"rest": rest}, partition_key="2024-01-01")
    assert api.requests[0][2]["authorization"] == "Bearer s3cret"
    stored = api.objects["/v1/remote_copy/2024-01-01"][0].decode()
    assert stored.splitlines() == ["day,v", "2024-01-01,2"]
    assert events[0].materialization.metadata["requests"].value == 1


def test_rest_io_manager_404_names_the_partition(fake_api):
    base, _ = fake_api
    rest = RestIOManager(url_template=base + "/v1/{asset}/{partition_key}")
    with pytest.raises(Exception, match="no data for asset remote partition '2024-01-02'"):
        dg.materialize([remote_copy, remote.to_source_asset()], resources={"rest": rest},
                       partition_key="2024-01-02")  # fmt: skip


@dg.asset
def blob_value() -> bytes:
    return b"\x00payload\xff" * 1000


def test_object_store_verify_sha256_checks_the_identity_digest_too(tmp_path):
    """The default load checks xxh3-128; verify_sha256 also checks the recorded sha256."""
    import json

    from flowstone.storage import codec
    from flowstone.storage.errors import ChecksumError

    manager = ObjectStoreIOManager(base_path=str(tmp_path))
    _mat([blob_value], {"io_manager": manager})
    path = tmp_path / "flowstone/blob_value/__asset__.fso"
    envelope, payload = codec.read_envelope(path.read_bytes())
    header = json.dumps({**envelope.as_dict(), "sha256": "f" * 64}).encode()
    path.write_bytes(codec.prefix_for_header(header) + bytes(payload))
    context = dg.build_input_context(asset_key=dg.AssetKey("blob_value"))
    assert manager.load_input(context) == b"\x00payload\xff" * 1000
    strict = ObjectStoreIOManager(base_path=str(tmp_path), verify_sha256=True)
    with pytest.raises(
        ChecksumError, match="'flowstone/blob_value/__asset__.fso': expected sha256 f{64}"
    ):
        strict.load_input(context)


RUNS = dg.StaticPartitionsDefinition(["qa", "x/y"])


@dg.asset(partitions_def=RUNS, metadata={"flowstone/versions_kept": 2})
def kept(context: dg.AssetExecutionContext) -> pd.DataFrame:
    return pd.DataFrame({"run": [context.run.run_id]})


def _versions_after_three_runs(resources, store) -> None:
    from flowstone.storage.keys import object_key_for
    from flowstone.storage.objects import load_object
    from flowstone.storage.versions import list_versions, load_version

    instance = dg.DagsterInstance.ephemeral()
    runs = []
    for _ in range(3):
        result, events = _mat([kept], resources, partition_key="x/y", instance=instance)
        runs.append(result.run_id)
        assert events[0].materialization.metadata["versions kept"].value == 2
    latest = object_key_for("flowstone", ["kept"], "x/y")
    versions = list_versions(store, latest)
    # the newest two runs, oldest first; the first run's version was deleted
    assert [v.run_id for v in versions] == runs[1:]
    assert versions[0].written_at <= versions[1].written_at
    assert [load_version(store, v)["run"].tolist() for v in versions] == [[r] for r in runs[1:]]
    assert load_object(store, latest)["run"].tolist() == [runs[-1]]
    # the other partition's latest object and versions are untouched
    assert list_versions(store, object_key_for("flowstone", ["kept"], "qa")) == []


def test_object_store_keeps_the_versions_an_asset_asks_for(tmp_path):
    io_manager = ObjectStoreIOManager(base_path=str(tmp_path))
    _versions_after_three_runs({"io_manager": io_manager}, io_manager.build_store())


def test_object_store_keeps_versions_on_s3(moto_endpoint, bucket):
    io_manager = ObjectStoreIOManager(
        backend="s3", bucket=bucket,
        s3=S3Resource(endpoint_url=moto_endpoint, aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1"))  # fmt: skip
    _versions_after_three_runs({"io_manager": io_manager}, io_manager.build_store())


@dg.asset(metadata={"flowstone/versions_kept": 0})
def kept_none() -> int:
    return 1


def test_a_bad_versions_kept_names_the_asset(tmp_path):
    resources = {"io_manager": ObjectStoreIOManager(base_path=str(tmp_path))}
    with pytest.raises(Exception, match=r"kept_none: flowstone/versions_kept must be .* got 0"):
        _mat([kept_none], resources)
    assert not list(tmp_path.rglob("*.fso"))  # nothing written
