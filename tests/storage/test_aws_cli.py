"""The AWS CLI and our S3ObjectStore share objects on moto's S3 server (loopback).

Why: objects FlowStone writes must stay ordinary S3 objects that the standard tools read and
write, and the checksummed envelope must survive a trip through them unchanged. The CLI runs
as a real subprocess with dummy credentials and ``--endpoint-url``; nothing is patched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from flowstone.storage import codec
from flowstone.storage.errors import ChecksumError
from flowstone.storage.objects import load_object, save_object
from flowstone.storage.s3_store import S3ObjectStore


def _aws_command() -> list[str]:
    """The AWS CLI: next to this interpreter first, then on PATH, then as its awscli module.

    The venv's own ``aws`` (awscli is in the dev extras) comes first because ``make test`` runs
    ``.venv/bin/python -m pytest`` without the venv on PATH, and a different ``aws`` on PATH
    (a pyenv shim, a system install) may be broken or run another botocore.
    """
    for candidate in (str(Path(sys.executable).parent / "aws"), shutil.which("aws")):
        if candidate and os.access(candidate, os.X_OK):
            probe = subprocess.run(
                [candidate, "--version"], capture_output=True, text=True, timeout=60
            )
            if probe.returncode == 0:
                return [candidate]
    try:
        import awscli  # noqa: F401
    except ImportError:
        pytest.skip("the AWS CLI is not installed (pip install awscli, or put `aws` on PATH)")
    return [sys.executable, "-m", "awscli"]


@pytest.fixture(scope="module")
def aws(moto_endpoint: str, tmp_path_factory):
    """Run ``aws ...`` against the moto endpoint with dummy credentials; return stdout."""
    command = _aws_command()
    home = tmp_path_factory.mktemp("aws-home")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(home / "config"),  # never read the user's profiles
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_PAGER": "",
    }

    def run(*args: str) -> str:
        done = subprocess.run(
            [*command, *args, "--endpoint-url", moto_endpoint],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert done.returncode == 0, f"aws {' '.join(args)} failed: {done.stderr}"
        return done.stdout

    return run


@pytest.mark.slow  # runs the real aws CLI against a moto server
def test_cli_reads_what_our_store_wrote(aws, s3, bucket, tmp_path):
    """In S3 the object is the plain payload (here a Parquet file any tool reads) and the
    codec header is object metadata, which the CLI shows."""
    store = S3ObjectStore(s3, bucket, prefix="team")
    value = pd.DataFrame({"case": ["a", "b"], "score": [0.5, 1.0]})
    stored = save_object(store, "scores/partition=p1.fso", value)

    listing = aws("s3", "ls", f"s3://{bucket}/team/scores/")
    assert "partition=p1.fso" in listing
    downloaded = tmp_path / "p1.parquet"
    aws("s3", "cp", stored.uri, str(downloaded))
    payload = downloaded.read_bytes()
    assert len(payload) == stored.stored_bytes == stored.envelope.size
    assert hashlib.sha256(payload).hexdigest() == stored.envelope.sha256
    pd.testing.assert_frame_equal(pd.read_parquet(downloaded), value)

    head = json.loads(
        aws("s3api", "head-object", "--bucket", bucket, "--key", "team/scores/partition=p1.fso")
    )
    envelope = json.loads(head["Metadata"]["flowstone-envelope"])
    assert envelope["sha256"] == stored.envelope.sha256 and envelope["format"] == "parquet"
    pd.testing.assert_frame_equal(load_object(store, "scores/partition=p1.fso"), value)


@pytest.mark.slow  # runs the real aws CLI against a moto server
def test_our_store_reads_what_the_cli_wrote_and_verifies_it(aws, s3, bucket, tmp_path):
    store = S3ObjectStore(s3, bucket, prefix="team")
    value = {"model": "tiny", "accuracy": 0.91}
    encoded = codec.encode(value)
    good = tmp_path / "good.fso"
    good.write_bytes(encoded.data)
    aws("s3", "cp", str(good), f"s3://{bucket}/team/cli/partition=good.fso")

    assert store.list("cli/") == ["cli/partition=good.fso"]
    assert load_object(store, "cli/partition=good.fso") == value
    head = aws("s3api", "head-object", "--bucket", bucket, "--key", "team/cli/partition=good.fso")
    assert f'"ContentLength": {len(encoded.data)}' in head

    # one flipped payload bit on the way in through the CLI: our load refuses it, naming the key
    corrupted = bytearray(encoded.data)
    corrupted[-2] ^= 0x01
    bad = tmp_path / "bad.fso"
    bad.write_bytes(bytes(corrupted))
    aws("s3", "cp", str(bad), f"s3://{bucket}/team/cli/partition=bad.fso")
    with pytest.raises(ChecksumError, match="cli/partition=bad.fso"):
        load_object(store, "cli/partition=bad.fso")
