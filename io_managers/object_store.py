"""Dagster I/O manager that keeps asset values in an object store (local folder, S3 or tiered).

Thin wiring over :mod:`flowstone.storage`: it picks the object key from the asset key and the
partition(s), encodes the value with the checksummed codec and reports URI, bytes, format and
checksum as output metadata. Several partitions in one run (a single-run backfill) are written
from a dict keyed by partition key, and loaded back as such a dict.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import dagster as dg
from dagster_aws.s3 import S3Resource
from pydantic import Field, PrivateAttr

from flowstone.paths import outputs_dir
from flowstone.storage import codec
from flowstone.storage.errors import CodecError, StorageError
from flowstone.storage.keys import object_key_for
from flowstone.storage.local_store import LocalObjectStore
from flowstone.storage.location import DEFAULT_PREFIX, object_store_location
from flowstone.storage.object_store import ObjectStore
from flowstone.storage.objects import load_object, save_encoded
from flowstone.storage.s3_store import S3ObjectStore, client_config
from flowstone.storage.tiered_store import BoundedCacheStore, TieredObjectStore
from flowstone.storage.versions import VERSIONS_KEPT, save_version
from io_managers._partitions import PartitionSpec, partition_specs, split_multi_partition_output


def s3_client_for_codec(resource: S3Resource) -> Any:
    """A boto3 S3 client built from the resource's settings, minus redundant checksum work.

    Same session, credentials, endpoint, SSL and retry settings as ``S3Resource.get_client()``
    (whose client config cannot be extended), merged with
    :func:`flowstone.storage.s3_store.client_config`: each put sends the sha256 the codec
    computed anyway as S3's checksum, so botocore's own payload hash and CRC32 only cost time.
    """
    import boto3
    from dagster_aws.utils import construct_boto_client_retry_config

    config = construct_boto_client_retry_config(resource.max_attempts).merge(client_config())
    client = boto3.session.Session(profile_name=resource.profile_name).client(
        "s3",
        region_name=resource.region_name,
        use_ssl=resource.use_ssl,
        verify=resource.verify,
        endpoint_url=resource.endpoint_url,
        aws_access_key_id=resource.aws_access_key_id,
        aws_secret_access_key=resource.aws_secret_access_key,
        aws_session_token=resource.aws_session_token,
        config=config,
    )
    if resource.use_unsigned_session:
        from botocore.handlers import disable_signing

        client.meta.events.register("choose-signer.s3.*", disable_signing)
    return client


class ObjectStoreIOManager(dg.ConfigurableIOManager):
    """Stores each asset (partition) as one checksummed object; see flowstone.storage.codec."""

    backend: Literal["local", "s3", "tiered"] = Field(
        default="local",
        description="'local' folder, 's3' bucket, or 'tiered' (S3 primary + local cache + archive).",
    )
    base_path: str | None = Field(
        default=None,
        description="Folder of the local backend; defaults to <outputs>/objects.",
    )
    prefix: str = Field(default="flowstone", description="Key prefix in front of every asset path.")
    s3: S3Resource | None = Field(
        default=None,
        description="dagster-aws S3Resource (set endpoint_url for MinIO/moto); needed for s3/tiered.",
    )
    bucket: str | None = Field(default=None, description="Bucket for the s3 and tiered backends.")
    cache_path: str | None = Field(
        default=None, description="Local cache folder of the tiered backend (None: no cache)."
    )
    cache_max_bytes: int = Field(default=1 << 30, description="Cache size bound in bytes.")
    cache_ttl_seconds: float = Field(default=86400.0, description="Cache entry lifetime.")
    archive_path: str | None = Field(
        default=None, description="Local archive folder of the tiered backend."
    )
    archive_bucket: str | None = Field(
        default=None, description="Second bucket (same endpoint) used as archive instead."
    )
    write_strategy: Literal["primary_only", "primary_with_cache", "replicate_all"] = Field(
        default="primary_with_cache",
        description="Which tiers a write goes to; only a primary failure fails the write.",
    )
    compression: Literal["none", "zstd"] = Field(default="none", description="Payload compression.")
    verify_sha256: bool = Field(
        default=False,
        description="Also verify each payload's sha256 on load (about 5 ms per 8 MiB). Every "
        "load verifies the payload's xxh3-128 checksum either way; the sha256 is the object's "
        "identity, recorded on write and shown in the output metadata.",
    )
    trusted_pickle: bool = Field(
        default=False,
        description="Allow pickle for values no other format can hold. Only for stores that "
        "nobody else writes to: unpickling runs code.",
    )

    _store: ObjectStore | None = PrivateAttr(default=None)

    def build_store(self) -> ObjectStore:
        """Built once per I/O manager instance: a boto3 client costs ~100 ms to create."""
        if self._store is None:
            self._store = self._new_store()
        return self._store

    def _new_store(self) -> ObjectStore:
        if self.backend == "local":
            return LocalObjectStore(self.base_path or outputs_dir() / "objects")
        if self.s3 is None or not self.bucket:
            raise StorageError(
                f"backend '{self.backend}' needs both 's3' (an S3Resource) and 'bucket' set on "
                "ObjectStoreIOManager"
            )
        client = s3_client_for_codec(self.s3)
        primary = S3ObjectStore(client, self.bucket)
        if self.backend == "s3":
            return primary
        cache = (
            BoundedCacheStore(
                self.cache_path, max_bytes=self.cache_max_bytes, ttl_seconds=self.cache_ttl_seconds
            )
            if self.cache_path
            else None
        )
        archive: ObjectStore | None = None
        if self.archive_bucket:
            archive = S3ObjectStore(client, self.archive_bucket)
        elif self.archive_path:
            archive = LocalObjectStore(self.archive_path)
        return TieredObjectStore(
            primary, cache=cache, archive=archive, write_strategy=self.write_strategy
        )

    def _key(self, context: dg.InputContext | dg.OutputContext, spec: Any) -> str:
        return object_key_for(self.prefix, context.asset_key.path, spec)

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None and context.dagster_type.is_nothing:
            return
        store = self.build_store()
        specs = partition_specs(context)
        items: Sequence[tuple[str | None, PartitionSpec | None, Any]] = (
            [(None, None, obj)] if not specs else split_multi_partition_output(context, obj, specs)
        )
        keep = versions_kept(context)
        compression = None if self.compression == "none" else self.compression
        # every value is encoded before any is written: a value the codec refuses must not
        # leave the run's other partitions overwritten by a run that then fails
        encoded_items = []
        for partition_key, spec, value in items:
            try:
                encoded = codec.encode(value, trusted=self.trusted_pickle, compression=compression)
            except CodecError as exc:  # the codec names the value's path; we add where it was
                raise exc.naming(context.asset_key.to_user_string(), partition_key) from exc
            encoded_items.append((partition_key, self._key(context, spec), encoded))
        written = []
        for partition_key, key, encoded in encoded_items:
            written.append((partition_key, save_encoded(store, key, encoded)))
            if keep:
                save_version(store, key, encoded, run_id=context.run_id, keep=keep)
        if len(written) == 1:
            stored = written[0][1]
            context.add_output_metadata(
                {
                    "uri": dg.MetadataValue.path(stored.uri),
                    "bytes": stored.stored_bytes,
                    "format": stored.envelope.format,
                    "compression": stored.envelope.compression or "none",
                    "sha256": stored.envelope.sha256,
                    **({"versions kept": keep} if keep else {}),
                }
            )
            return
        # several values come only from a multi-partition run, each under its partition key
        keyed = [(pk, s) for pk, s in written if pk is not None]
        context.add_output_metadata(
            {
                "objects": len(written),
                "bytes": sum(s.stored_bytes for _, s in written),
                "format": ", ".join(sorted({s.envelope.format for _, s in written})),
                "uris": dg.MetadataValue.json({pk: s.uri for pk, s in keyed}),
                "sha256": dg.MetadataValue.json({pk: s.envelope.sha256 for pk, s in keyed}),
            }
        )

    def load_input(self, context: dg.InputContext) -> Any:
        store = self.build_store()
        specs = partition_specs(context)
        options = {"trusted": self.trusted_pickle, "verify_sha256": self.verify_sha256}
        if not specs:
            return load_object(store, self._key(context, None), **options)
        values = {pk: load_object(store, self._key(context, spec), **options) for pk, spec in specs}
        return next(iter(values.values())) if len(values) == 1 else values


def versions_kept(context: dg.OutputContext) -> int:
    """How many earlier materializations of each partition the asset asked to keep
    (definition metadata ``flowstone/versions_kept``; see :mod:`flowstone.storage.versions`)."""
    metadata = context.definition_metadata or {}
    raw = metadata.get(VERSIONS_KEPT)
    value = getattr(raw, "value", raw)  # a MetadataValue once Dagster has normalised it
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise StorageError(
            f"asset {context.asset_key.to_user_string()}: {VERSIONS_KEPT} must be a whole "
            f"number of at least 1, got {value!r}"
        )
    return value


def object_store_io_manager_from_env() -> ObjectStoreIOManager:
    """The code location's I/O manager on ``$FLOWSTONE_OBJECT_STORE_URL``.

    ``s3://bucket/prefix`` gives the S3 backend (endpoint and credentials from boto3's usual
    variables, e.g. AWS_ENDPOINT_URL for MinIO or moto), which every step on every host reads;
    a folder gives the local backend there; unset, the local folder ``<outputs>/objects``
    (resolved when a step runs, so FLOWSTONE_OUTPUTS_DIR still applies).
    """
    location = object_store_location()
    if location.source == "default":
        return ObjectStoreIOManager()
    if location.is_s3:
        return ObjectStoreIOManager(
            backend="s3",
            s3=S3Resource(),  # boto3 reads AWS_ENDPOINT_URL(_S3) and credentials itself
            bucket=location.bucket,
            prefix=location.prefix or DEFAULT_PREFIX,
        )
    return ObjectStoreIOManager(base_path=str(location.folder))
