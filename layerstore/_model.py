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
    files: int              # regular files
    file_bytes: int         # their logical bytes
    new_objects: int        # objects this ingest wrote
    new_bytes: int          # content bytes of those objects


@dataclass(frozen=True, slots=True)
class Layer:
    """A stored layer, identified by its diffID (sha256 of the uncompressed layer tar)."""

    diff_id: str
    stream_bytes: int       # length of the layer tar
    entries: int
    files: int              # regular files
    file_bytes: int         # their logical bytes
    new_objects: int        # objects the layer added to the store when first imported
    new_bytes: int          # and their bytes: the rest was already stored (deduplicated)
    blob_digests: tuple[str, ...] = ()  # compressed forms it was imported from
    refs: int = 0           # image slots that name it


@dataclass(frozen=True, slots=True)
class Image:
    """A stored image, identified by its config digest (Docker's image ID)."""

    id: str
    tags: tuple[str, ...]
    diff_ids: tuple[str, ...]
    created: str | None
    size: int               # logical bytes of regular files over its layers
    platform: str | None
    source_format: str

    @property
    def short_id(self) -> str:
        return self.id.split(":")[-1][:12]


@dataclass(frozen=True, slots=True)
class ImportProgress:
    """Reported while importing: bytes read from the source (of total, when known), layers
    and files ingested so far."""

    bytes_done: int
    bytes_total: int | None
    layers_done: int
    files_done: int


@dataclass(frozen=True, slots=True)
class CheckoutResult:
    """What a checkout made, and what it could not make (as a non-root user)."""

    dest: str
    files: int
    dirs: int
    symlinks: int
    hardlinked: int             # files that share the store's inode
    copied: int                 # files written as independent copies
    specials: int               # device nodes and fifos made
    skipped_specials: int       # device nodes not made (not root)
    skipped_owners: int         # entries whose owner could not be set (not root)
    skipped_xattrs: int
