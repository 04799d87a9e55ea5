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
    repo_digests: tuple[str, ...] = ()  # "domain/path@sha256:...": what a pull got it by

    @property
    def short_id(self) -> str:
        return self.id.split(":")[-1][:12]


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One step of an image's history (its config's "history"), as `docker history` shows it.

    image_id is the image's id on its newest step and None on the others (Docker shows
    "<missing>": no image of its own stands for an intermediate step of an imported image).
    diff_id is the layer the step made, None for a step that made none (empty_layer); size is
    that layer's logical bytes of regular files (as `images` SIZE), 0 for none.  created is
    the step's RFC 3339 time as written, None when absent."""

    image_id: str | None
    created: str | None
    created_by: str
    comment: str
    empty_layer: bool
    diff_id: str | None
    size: int


@dataclass(frozen=True, slots=True)
class InspectResult:
    """Everything known of an image, as `layerstore inspect` prints it: the image, its config
    and manifest as imported (manifest None when the archive had none, as a legacy
    docker-archive), and its layers, bottom first."""

    image: Image
    config: dict
    manifest: dict | None
    layers: tuple[Layer, ...]


@dataclass(frozen=True, slots=True)
class DiffResult:
    """Paths (absolute, sorted) added, removed and changed from one image to another.
    Changed: type, mode, owner, size, content, link target, xattrs or device differ."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a long operation has got, handed to its progress callback: bytes and items
    done (files, entries or objects: each operation's docstring says which) and their totals
    when known beforehand (None otherwise, as for an archive read from a pipe)."""

    bytes_done: int
    bytes_total: int | None
    items_done: int
    items_total: int | None = None


@dataclass(frozen=True, slots=True)
class LayerPull:
    """One layer of a pull as it stands.  action: "skipped" (stored already: by its diffID,
    or by its blob digest), "waiting", "downloading" or "downloaded"; bytes: blob bytes
    received (a resumed download counts each byte once, a restarted one twice); requests:
    the blob GETs sent (resumes included).  partial: for a chunked layer (zstd:chunked),
    what the partial pull chose and why ({"mode": "partial"|"full", "reason", and the plan:
    "files", "local", "planned_bytes", "planned_requests"}), else None; a partial pull's
    action is "partial" once its files are fetched."""

    digest: str
    diff_id: str
    size: int | None
    action: str
    bytes: int = 0
    requests: int = 0
    resumes: int = 0
    seconds: float = 0.0
    partial: dict | None = None


@dataclass(frozen=True, slots=True)
class PullProgress(Progress):
    """What Store.pull's progress callback receives: Progress over the blobs downloaded
    (bytes of the blobs, files ingested), with every layer's state and the HTTP requests
    sent so far (manifests, configs, tokens and blobs)."""

    layers: tuple[LayerPull, ...] = ()
    requests: int = 0


@dataclass(frozen=True, slots=True)
class CheckoutResult:
    """What a checkout made, and what it could not make (as a non-root user).  mode is what
    was asked for: "reflink" (the default: files of their own, reflinked where the filesystem
    can, else copied), "copy" (blocks of their own) or "link" (hardlinks into the store); the
    counts say how each file was made."""

    dest: str
    mode: str
    files: int
    dirs: int
    symlinks: int
    hardlinked: int             # files that share the store's inode
    reflinked: int              # files of their own sharing the store's blocks
    copied: int                 # files written as independent copies (empty files too)
    specials: int               # device nodes and fifos made
    skipped_specials: int       # device nodes not made (not root)
    skipped_owners: int         # entries whose owner could not be set (not root)
    skipped_xattrs: int


@dataclass(frozen=True, slots=True)
class GcResult:
    """What gc freed (with dry_run, what it would free).  bytes and files add up the three
    kinds of files removed: indexed objects, object files the index did not know (left by an
    interrupted import or gc), and stale tmp/ entries."""

    dry_run: bool
    layers: int                 # layer records no image referenced
    objects: int                # indexed objects no remaining layer referenced
    object_bytes: int           # their content bytes
    garbage_objects: int        # object files the index did not know
    garbage_bytes: int
    tmp_files: int              # stale entries of tmp/
    tmp_bytes: int
    layer_dirs: int             # cached overlay layer dirs (root/layers*/) no longer needed
    scanned_objects: bool       # whether objects/ was walked for unindexed files
    files: int = 0              # objects + garbage_objects + tmp_files
    bytes: int = 0              # object_bytes + garbage_bytes + tmp_bytes


@dataclass(frozen=True, slots=True)
class ImageUsage:
    """One image's share of the store (see DuResult)."""

    id: str
    tags: tuple[str, ...]
    logical_bytes: int          # regular files over all its layers (as `images` SIZE)
    disk_bytes: int             # st_blocks*512 of the objects its layers hold, inodes once
    shared_bytes: int           # of those, objects that another image's layers also hold
    unique_bytes: int           # disk_bytes - shared_bytes: what rm + gc would free
    objects: int


@dataclass(frozen=True, slots=True)
class DuResult:
    """Disk use of the store.  logical_bytes sums the images' logical bytes and those of
    layers no image holds (what a copy of every image, and of each such layer, would take:
    a snapshotter's or cstore's layers, import_layer's); layer_bytes counts each distinct layer once (what a per-layer
    store such as overlay2 holds); disk_bytes is what layerstore holds: object files (each
    inode once, st_blocks*512) plus the index.  dedup_ratio = logical_bytes / disk_bytes."""

    images: tuple[ImageUsage, ...]
    logical_bytes: int
    layer_bytes: int
    object_bytes: int
    index_bytes: int
    disk_bytes: int
    dedup_ratio: float
    objects: int                # objects the index knows
    inodes: int                 # distinct inodes of the files under objects/


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing fsck found wrong.  repairable: `fsck --repair` alone makes it go away.
    images: the images that must be re-imported (from their original archives) to heal it;
    repair has then already removed the damage, so the next import re-creates what is
    missing.  fixed: set on what a repair run fixed."""

    kind: str                   # e.g. "object-corrupt", "object-missing", "layer-refcount"
    subject: str                # the object id, diffID, image id, tag or path concerned
    detail: str
    repairable: bool
    images: tuple[str, ...] = ()
    fixed: bool = False

    @property
    def garbage(self) -> bool:
        """Files interrupted work left (a killed import or gc), which gc removes: a store with
        nothing else is whole."""
        return self.kind == "garbage"


@dataclass(frozen=True, slots=True)
class Mount:
    """A container `mount` made: active, or kept in a user's upper dir after umount."""

    id: str
    image: str                  # image id the container was made from
    diff_ids: tuple[str, ...]
    mountpoint: str | None      # None once unmounted (a kept upper dir)
    upper: str
    work: str
    lowers: tuple[str, ...]     # layer dirs, topmost first (overlay's order)
    kind: str                   # "overlay" or "fuse-overlayfs"
    own_upper: bool             # upper dir made by layerstore (removed on umount)
    created: str


@dataclass(frozen=True, slots=True)
class PushedBlob:
    """What a push did with one blob.  action: "skipped" (the repository had it), "mounted"
    (linked from source, another repository of the registry) or "uploaded" (regenerated from
    the store and compressed: upload is "monolithic", "streamed" or "chunked"; recipe the
    pinned recipe's record).  original: the blob the image's original manifest names."""

    kind: str                   # "layer" or "config"
    digest: str
    diff_id: str | None         # a layer's
    action: str
    compression: str | None     # "gzip", "zstd", "zstd:chunked", "none" (a layer's)
    size: int
    bytes_sent: int
    requests: int
    source: str | None = None
    original: bool = False
    upload: str | None = None
    recipe: dict | None = None
    annotations: dict | None = None     # the layer descriptor's (zstd:chunked's TOC)


@dataclass(frozen=True, slots=True)
class PushResult:
    """A push: the manifest (or, with all_platforms, index) digest the registry stored under
    reference, whether it is the original manifest or index (unchanged bytes, so its digest
    survived), and per blob what was done.  bytes_sent: blob and manifest bytes uploaded; requests: HTTP requests made
    (token requests and retries included)."""

    reference: str
    digest: str
    media_type: str
    original_manifest: bool
    config: PushedBlob
    layers: tuple[PushedBlob, ...]
    bytes_sent: int
    requests: int
    seconds: float
    images: tuple = ()      # push of an index (--all-platforms): each image's PushResult


@dataclass(frozen=True, slots=True)
class PushProgress:
    """What a push's progress callback receives, per blob as it goes.  what: "layer",
    "config" or "manifest"; state: "checking", "skipped", "mounted", "uploading", "uploaded",
    "writing", "written"; detail: the source repository of a mount, the upload's way."""

    what: str
    layer: str | None           # a layer's diffID (its blob digest is known once uploaded)
    digest: str | None
    state: str
    bytes_done: int = 0
    bytes_total: int | None = None
    detail: str | None = None
