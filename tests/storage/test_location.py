"""One variable, FLOWSTONE_OBJECT_STORE_URL, picks the store for the I/O manager and the doctor."""

import dagster as dg
import pytest

from flowstone.errors import ConfigError
from flowstone.ops.checks.object_store import check_object_store
from flowstone.storage.location import object_store_location
from io_managers.object_store import object_store_io_manager_from_env, s3_client_for_codec

ENV = "FLOWSTONE_OBJECT_STORE_URL"


def test_unset_is_the_local_default_folder(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setenv("FLOWSTONE_OUTPUTS_DIR", str(tmp_path))
    location = object_store_location()
    assert location.source == "default" and location.folder == tmp_path / "objects"
    manager = object_store_io_manager_from_env()
    assert manager.backend == "local" and manager.base_path is None  # resolved when a step runs


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [("s3://evals/team-a/", "evals", "team-a"), ("s3://evals", "evals", "flowstone")],
)
def test_s3_url_gives_the_s3_backend(monkeypatch, url, bucket, prefix):
    monkeypatch.setenv(ENV, url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    manager = object_store_io_manager_from_env()
    assert (manager.backend, manager.bucket, manager.prefix) == ("s3", bucket, prefix)
    assert s3_client_for_codec(manager.s3).meta.endpoint_url == "http://127.0.0.1:9"


def test_folder_and_file_url_give_the_local_backend(monkeypatch, tmp_path):
    for url in (str(tmp_path / "a"), f"file://{tmp_path / 'b'}"):
        monkeypatch.setenv(ENV, url)
        manager = object_store_io_manager_from_env()
        assert manager.backend == "local" and manager.base_path == str(tmp_path / url[-1])


@pytest.mark.parametrize("url", ["s3://", "s3:///prefix", "gs://bucket/x"])
def test_bad_urls_name_the_variable(monkeypatch, url):
    monkeypatch.setenv(ENV, url)
    with pytest.raises(ConfigError, match=f"environment variable {ENV}: '{url}'"):
        object_store_io_manager_from_env()
    result = check_object_store()
    assert result.status == "fail" and ENV in result.fix


@dg.asset(partitions_def=dg.StaticPartitionsDefinition(["p1"]))
def located() -> dict:
    return {"where": "s3"}


def test_io_manager_and_doctor_agree_on_s3(monkeypatch, moto_endpoint, s3, bucket):
    monkeypatch.setenv(ENV, f"s3://{bucket}/runs")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    result = dg.materialize(
        [located], resources={"io_manager": object_store_io_manager_from_env()}, partition_key="p1"
    )
    assert result.success
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["runs/located/partition=p1.fso"]
    probe = check_object_store()
    assert probe.status == "ok", probe
    assert f"s3://{bucket}/runs at {moto_endpoint}" in probe.detail
    assert f"environment variable {ENV}" in probe.detail
