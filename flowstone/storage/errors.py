"""Errors raised by FlowStone storage.

Each one names the thing that failed (key, table, partition, URL) and what to do about it,
because these messages surface in the Dagster UI where a person has to act on them.
"""

from __future__ import annotations

from typing import Self

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
    """Stored bytes (header or payload) do not match the checksums recorded when they were
    written, or do not form a FlowStone object at all."""


class CodecError(StorageError):
    """An object that cannot be encoded or decoded with the allowed formats."""

    def naming(self, asset: str, partition: str | None) -> Self:
        """The same error, its message led by the asset and partition it happened on.

        Why a copy and not a wrapper: the codec knows the value, not the asset; the I/O
        manager knows the asset. Callers that catch the specific class (and read its
        attributes) still can.
        """
        where = f"asset {asset}" + (
            f", partition {partition}" if partition is not None else " (unpartitioned)"
        )
        named = type(self).__new__(type(self))
        named.__dict__.update(self.__dict__)
        named.args = (f"{where}: {self}",)
        return named


class UnsupportedValueError(CodecError):
    """A value, or a part of it at ``path`` (``value["a"][3]``), that no stored format carries
    exactly, refused at write so that it never loads back as something else."""

    def __init__(self, message: str, *, path: str = "value", type_name: str = ""):
        super().__init__(message)
        self.path = path
        self.type_name = type_name


class NoDataForPartitionError(StorageError):
    """A source has nothing for the requested partition (for example HTTP 404)."""


class SchemaChangeError(StorageError):
    """A frame whose columns do not match the existing table while evolution is off."""
