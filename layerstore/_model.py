"""The frozen value types the public API returns."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class EntryType(str, enum.Enum):
    FILE = "file"
    HARDLINK = "hardlink"
    SYMLINK = "symlink"
    CHAR = "char"
    BLOCK = "block"
    DIR = "dir"
    FIFO = "fifo"


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a layer, as its tar header and extended headers describe it.

    path is cleaned and relative to the image root ("." is the root).  link is a symlink's
    target as written, or a hardlink's cleaned target path.  object_id and content_hash are
    hex BLAKE3 digests for regular files (an empty file has an id but no stored object).
    """

    path: str
    type: EntryType
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int = 0
    link: str | None = None
    object_id: str | None = None
    content_hash: str | None = None
    uname: str = ""
    gname: str = ""
    xattrs: tuple[tuple[str, bytes], ...] = ()
    devmajor: int = 0
    devminor: int = 0
    sparse: bool = False


@dataclass(frozen=True, slots=True)
class IngestStats:
    """What ingesting one layer stream did."""

    diff_id: str            # "sha256:<hex>" of the uncompressed stream
    stream_bytes: int
    entries: int
    file_bytes: int         # logical bytes of regular files
    new_objects: int        # objects this ingest wrote
    new_bytes: int          # content bytes of those objects
