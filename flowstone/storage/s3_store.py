"""Object store on S3 (or anything that speaks its API: MinIO, moto, R2...).

Takes a ready boto3 client so that credentials and the endpoint URL come from one place (in
Dagster, dagster-aws's ``S3Resource``). S3 PUTs are atomic per object, so no temp-key dance is
needed. Transport failures become :class:`StorageError` naming the bucket and key, so that a
failing primary write is loud and says where it was going.
"""

from __future__ import annotations

from typing import Any

from flowstone.storage.errors import ObjectNotFoundError, StorageError
from flowstone.storage.object_store import ObjectStore, validate_object_key

_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


class S3ObjectStore(ObjectStore):
    """Objects under ``s3://bucket/prefix/``."""

    def __init__(self, client: Any, bucket: str, prefix: str = ""):
        if not bucket:
            raise StorageError("S3ObjectStore needs a bucket name")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def _full(self, key: str) -> str:
        validate_object_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _fail(self, action: str, key: str, exc: Exception) -> StorageError:
        endpoint = getattr(getattr(self.client, "meta", None), "endpoint_url", "?")
        return StorageError(
            f"S3 {action} of s3://{self.bucket}/{self._full(key)} failed at endpoint {endpoint}: "
            f"{exc}. Check that the endpoint is up and the credentials can {action}."
        )

    def put(self, key: str, data: bytes) -> str:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data)
        except Exception as exc:
            raise self._fail("put", key, exc) from exc
        return self.uri(key)

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._full(key))
            return response["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING_CODES:
                raise ObjectNotFoundError(key, f"s3://{self.bucket}/{self.prefix}") from None
            raise self._fail("get", key, exc) from exc
        except Exception as exc:
            raise self._fail("get", key, exc) from exc

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._full(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING_CODES:
                return False
            raise self._fail("head", key, exc) from exc
        except Exception as exc:
            raise self._fail("head", key, exc) from exc

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._full(key))
        except Exception as exc:
            raise self._fail("delete", key, exc) from exc

    def list(self, prefix: str = "") -> list[str]:
        full_prefix = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        except Exception as exc:
            raise self._fail("list", prefix or "<all>", exc) from exc
        return sorted(keys)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"
