"""Exceptions raised by layerstore.

Each class inherits both LayerstoreError and the builtin a caller would catch anyway: a
malformed archive is a ValueError, a failed system call an OSError with its errno.
"""

__all__ = [
    "LayerstoreError",
    "CorruptArchive",
    "TruncatedArchive",
    "UnsafePath",
    "LimitExceeded",
    "UnsupportedFormat",
    "StoreIOError",
]


class LayerstoreError(Exception):
    """Base class of every error layerstore raises on purpose."""


class CorruptArchive(LayerstoreError, ValueError):
    """The archive or layer is malformed: bad checksum, number field, PAX record, ..."""


class TruncatedArchive(CorruptArchive):
    """The stream ended inside a header or inside file content."""


class UnsafePath(CorruptArchive):
    """A path or hardlink target leaves the image root."""


class LimitExceeded(CorruptArchive):
    """A name, extended header or sparse map is beyond what layerstore accepts."""


class UnsupportedFormat(LayerstoreError, ValueError):
    """Valid input that layerstore cannot represent (multi-volume tar, unknown format, ...)."""


class StoreIOError(LayerstoreError, OSError):
    """A system call failed while reading or writing the store; errno says why."""
