"""Errors raised by FlowStone storage.

Each one names the thing that failed (key, table, partition, URL) and what to do about it,
because these messages surface in the Dagster UI where a person has to act on them.
"""

from __future__ import annotations

from flowstone.errors import FlowStoneError


class StorageError(FlowStoneError):
    """Base class for storage failures."""


class UnsafeKeyError(StorageError, ValueError):
    """A partition key or path segment that could escape its prefix or break a path."""


class ObjectNotFoundError(StorageError, KeyError):
    """No object under the key (in any tier that was asked)."""

    def __init__(self, key: str, where: str):
        super().__init__(f"no object '{key}' in {where}; materialize the upstream asset first")
        self.key = key

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0])


class ChecksumError(StorageError):
    """Stored bytes do not match the sha256 recorded when they were written."""


class CodecError(StorageError):
    """An object that cannot be encoded or decoded with the allowed formats."""


class NoDataForPartitionError(StorageError):
    """A source has nothing for the requested partition (for example HTTP 404)."""


class SchemaChangeError(StorageError):
    """A frame whose columns do not match the existing table while evolution is off."""
