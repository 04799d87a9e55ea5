"""The store's lifecycle: rm (untag, delete images), gc (free what nothing references), du.

References.  Images hold layers (a layer's refcount counts image slots), layers hold objects
(an object's refcount counts layers).  rm only edits the index: it drops tags and image
records and the layer references they held, in one write transaction, and deletes no file,
so it needs no store lock and never disturbs an import or checkout in progress.  gc deletes:
layers whose count is 0 (taking their references from their objects), objects whose count
reaches 0 (rows in the same transaction, files after it commits), and files no index row
names.

Locking (taken by the Store facade, see store/lock.py).  gc runs with the store lock held
exclusively.  Imports hold it shared from before they write their first object until their
index commit, checkouts and readers of object files while they link or open them; so while gc
holds it, no object file is about to be referenced by a commit and none is being read through
a snapshot older than gc's.

Runtimes (runtimes/) keep what they serve from rm and gc through the Runtime interface below:
rm does not delete an image a container is mounted from, and gc asks each runtime which of its
cached directories no stored layer or container needs any more.

Finding garbage cheaply.  An object file the index does not know comes only from an import
that died or failed between writing objects and committing, or from a gc that died between its
index commit and its unlinks.  Walking objects/ to find such files costs a stat-free listing of
every object (tens of ms per 100k objects) plus an index lookup each; gc with nothing to free
must take well under 100 ms on a store of the whole corpus, so the walk runs only when there
may be garbage.  The sign is root/pending/: an import puts a marker file there when it starts
(see import_started) and removes it only once it has committed (a failed import keeps it), and
a gc does the same around its deletions; tmp/ counts too, since the C object store's named
temporary files (filesystems without O_TMPFILE) live there.  So, under the exclusive lock, a
non-empty pending/ or tmp/ means something was interrupted and objects/ is walked; then both
are emptied.  (The markers are not in tmp/ itself: a failed import must leave tmp/ empty, and
fsck calls whatever is in tmp/ stray.)  Directory mtimes of objects/xx were the other
candidate, but every successful import changes them too, and their coarse clock ticks could
hide a link made just after gc looked.  `gc --full` walks regardless (e.g. after files were
put into objects/ by hand).
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from typing import Protocol

from .. import _native, errors
from .._model import DuResult, GcResult, ImageUsage, Progress
from ..formats.reference import DIGEST_RE, normalize_tag
from .checkout import remove_tree
from .context import Context

_OBJECT_NAME = re.compile(r"[0-9a-f]{62}\Z")
_FAN = re.compile(r"[0-9a-f]{2}\Z")
_MARKER_SUFFIX = ".inprogress"


class Runtime(Protocol):
    """What rm and gc ask of a runtime that serves containers from the store's layers."""

    def mounted_at(self, image_id: str) -> str | None:
        """Where a container of the image is mounted, if one is: rm does not delete it."""
        ...

    def unused_dirs(self, txn) -> list[str]:
        """The runtime's cached dirs that no stored layer and no container needs, judged
        against the index as txn sees it: gc removes them."""
        ...

    def dangling_links(self) -> list[str]:
        """The runtime's links whose targets are gone: gc removes them, after the dirs."""
        ...


# ---- markers of work that leaves garbage when interrupted ---------------------------------

def _tmp(root: str) -> str:
    return os.path.join(root, "tmp")


def _pending(root: str) -> str:
    return os.path.join(root, "pending")


def import_started(root: str) -> str:
    """Marks an import (or gc) in progress in the store at root: called with the store lock
    held, before any object is written.  Returns the marker's path for import_finished."""
    path = os.path.join(_pending(root), f"import-{os.getpid()}-{secrets.token_hex(6)}"
                                        f"{_MARKER_SUFFIX}")
    os.makedirs(_pending(root), mode=0o700, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    _native.test_step()
    return path


def import_finished(marker: str) -> None:
    """After the commit: whatever was written is referenced.  A failed import never calls
    this, so its marker tells the next gc to look for the objects it left."""
    try:
        os.unlink(marker)
    except FileNotFoundError:
        pass


# ---- rm --------------------------------------------------------------------------------------

def remove(ctx: Context, refs, force: bool, runtimes: list[Runtime]) -> list[tuple[str, str]]:
    """See Store.remove."""
    if isinstance(refs, str):
        refs = [refs]
    index = ctx.index
    actions: list[tuple[str, str]] = []
    with index.write() as txn:
        # Every reference resolves before anything changes: one unknown aborts them all.
        targets = []
        for ref in refs:
            rec = ctx.resolve(txn, ref)
            tag = None
            if not DIGEST_RE.match(ref):
                try:
                    tag = normalize_tag(ref)
                except errors.InvalidReference:
                    pass
            targets.append((rec.id, tag if tag in rec.tags else None))
        for image_id, tag in targets:
            rec = index.image(txn, image_id)
            if rec is None:
                continue        # named twice, deleted already
            if tag is not None:
                if tag not in rec.tags:
                    continue
                index.remove_tag(txn, tag)
                actions.append(("untagged", tag))
                if len(rec.tags) > 1:
                    continue    # other tags keep the image, as `docker rmi name:tag`
            elif len(rec.tags) > 1 and not force:
                raise errors.LayerstoreError(
                    f"image {rec.id} has {len(rec.tags)} tags ({', '.join(sorted(rec.tags))}): "
                    f"remove them one by one or use --force")
            else:
                actions += [("untagged", t) for t in rec.tags]
            for runtime in runtimes:
                at = runtime.mounted_at(rec.id)
                if at is None:
                    continue
                if getattr(runtime, "yields_to_force", False):
                    # A `run` container (runtimes/oci.py) yields to --force, as `docker rmi
                    # -f`: it runs on from its own mount, whose layer dirs gc keeps.
                    if force:
                        continue
                    raise errors.LayerstoreError(
                        f"image {rec.id} is used by {at}: remove the container first, or "
                        "use --force")
                # As Docker for a running container, even with --force: the container's
                # commit needs the image's config.
                raise errors.LayerstoreError(
                    f"image {rec.id} is used by the container mounted at {at}: "
                    f"umount it first")
            index.delete_image(txn, rec.id)
            actions.append(("deleted", rec.id))
        _native.test_step()
    _native.test_step()
    return actions


# ---- gc --------------------------------------------------------------------------------------

def _file_bytes(path: str) -> int:
    try:
        return os.lstat(path).st_size
    except FileNotFoundError:
        return 0


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    _native.test_step()


def _tree_bytes(path: str) -> tuple[int, int]:
    """(files, bytes) under path, or of path itself when it is not a directory."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0, 0
    if not stat.S_ISDIR(st.st_mode):
        return 1, st.st_size
    n = total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
                n += 1
            except FileNotFoundError:
                pass
    return n, total


def _remove_tree(path: str) -> None:
    try:
        remove_tree(path)
    except FileNotFoundError:
        pass


def _walk_garbage(objects_dir: str, index, txn, freed: dict) -> list[str]:
    """Files under objects/ that name no indexed object (and are not freed by this gc)."""
    out = []
    try:
        fans = os.listdir(objects_dir)
    except FileNotFoundError:
        return out
    odb = index.db["objects"]
    for fan in fans:
        fdir = os.path.join(objects_dir, fan)
        if not _FAN.match(fan):
            if not os.path.isdir(fdir) or os.path.islink(fdir):
                out.append(fdir)    # a stray file beside the fan-out dirs
            continue
        try:
            it = os.scandir(fdir)
        except NotADirectoryError:
            out.append(fdir)
            continue
        with it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    continue        # not ours to guess at: fsck reports it
                if _OBJECT_NAME.match(e.name):
                    oid = bytes.fromhex(fan + e.name)
                    if oid in freed or txn.get(oid, db=odb) is not None:
                        continue
                out.append(e.path)
    return out


class _Removed:
    """Counts what gc removed for its progress callback (files and bytes of the GcResult)."""

    def __init__(self, progress, files: int, size: int) -> None:
        self.progress, self.files, self.size = progress, files, size
        self.done_files = self.done_bytes = 0

    def __call__(self, files: int, size: int) -> None:
        self.done_files += files
        self.done_bytes += size
        if self.progress is not None:
            self.progress(Progress(self.done_bytes, self.size, self.done_files, self.files))


def gc(ctx: Context, dry_run: bool, full: bool, progress, runtimes: list[Runtime]) -> GcResult:
    """See Store.gc."""
    index = ctx.index
    objects_dir = ctx.objects_dir
    tmp = _tmp(ctx.root)
    try:
        tmp_entries = sorted(os.listdir(tmp))
    except FileNotFoundError:
        tmp_entries = []
    pending = _listdir(_pending(ctx.root))
    scan = full or bool(tmp_entries) or bool(pending)
    marker = None
    txn = index.write()
    try:
        dead = index.unreferenced_layers(txn)
        freed: dict[bytes, int] = {}
        for rec in dead:
            freed.update(index.delete_layer(txn, rec))
        # The layer dirs and garbage are judged against the index as it will be.
        layer_dirs = [d for r in runtimes for d in r.unused_dirs(txn)]
        garbage = _walk_garbage(objects_dir, index, txn, freed) if scan else []
        if dry_run or not dead:
            txn.abort()
        else:
            # Dying after this commit and before the unlinks leaves files the index no
            # longer names: the marker makes the next gc walk objects/ for them.
            marker = import_started(ctx.root)
            _native.test_step()
            txn.commit()
            _native.test_step()
    except BaseException:
        txn.abort()
        raise
    object_bytes = sum(freed.values())
    garbage_sizes = [_file_bytes(p) for p in garbage]
    tmp_sizes = [_tree_bytes(os.path.join(tmp, name)) for name in tmp_entries]
    tmp_files = sum(n for n, _ in tmp_sizes)
    tmp_bytes = sum(b for _, b in tmp_sizes)
    garbage_bytes = sum(garbage_sizes)
    if not dry_run:
        removed = _Removed(progress, len(freed) + len(garbage) + tmp_files,
                           object_bytes + garbage_bytes + tmp_bytes)
        for oid, size in freed.items():
            _unlink(os.path.join(objects_dir, _native.object_path(oid.hex())))
            removed(1, size)
        for path, size in zip(garbage, garbage_sizes):
            if os.path.isdir(path) and not os.path.islink(path):
                _remove_tree(path)
            else:
                _unlink(path)
            removed(1, size)
        for name, (n, size) in zip(tmp_entries, tmp_sizes):
            _remove_tree(os.path.join(tmp, name))
            removed(n, size)
        for path in layer_dirs:
            _remove_tree(path)
        for path in [link for r in runtimes for link in r.dangling_links()]:
            _unlink(path)
        # Last: a marker must outlive the work it asks a later gc to redo.
        for name in pending:
            _unlink(os.path.join(_pending(ctx.root), name))
        if marker is not None:
            import_finished(marker)
    return GcResult(dry_run, len(dead), len(freed), object_bytes, len(garbage), garbage_bytes,
                    tmp_files, tmp_bytes, len(layer_dirs), scan,
                    files=len(freed) + len(garbage) + tmp_files,
                    bytes=object_bytes + garbage_bytes + tmp_bytes)


# ---- du --------------------------------------------------------------------------------------

def _blocks(path: str) -> tuple[tuple[int, int], int] | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino), st.st_blocks * 512


def du(ctx: Context) -> DuResult:
    """See Store.du."""
    index = ctx.index
    objects_dir = ctx.objects_dir
    with index.read() as txn:
        images = sorted(index.images(txn), key=lambda r: r.id)
        layer_objects: dict[str, dict[bytes, int]] = {}
        layer_bytes = 0
        in_images = {d for rec in images for d in rec.diff_ids}
        outside = 0         # logical bytes of layers no image holds (pinned, import_layer)
        for rec in index.layers(txn):
            layer_bytes += rec.file_bytes
            layer_objects[rec.diff_id] = _records_objects(index, txn, rec.diff_id)
            if rec.diff_id not in in_images:
                outside += rec.file_bytes
        n_objects = index.object_count(txn)
    # Every file under objects/, each inode once: the store's truth, garbage included.
    on_disk: dict[bytes, tuple[tuple[int, int], int]] = {}
    inodes: dict[tuple[int, int], int] = {}
    for fan in _listdir(objects_dir):
        fdir = os.path.join(objects_dir, fan)
        for name in _listdir(fdir):
            got = _blocks(os.path.join(fdir, name))
            if got is None:
                continue
            inodes[got[0]] = got[1]
            if _FAN.match(fan) and _OBJECT_NAME.match(name):
                on_disk[bytes.fromhex(fan + name)] = got
    image_objects = {}
    holders: dict[bytes, int] = {}
    for rec in images:
        oids = set()
        for d in rec.diff_ids:
            oids.update(layer_objects.get(d, ()))
        image_objects[rec.id] = oids
        for oid in oids:
            holders[oid] = holders.get(oid, 0) + 1
    usage = []
    for rec in images:
        seen, disk, shared = set(), 0, 0
        for oid in image_objects[rec.id]:
            got = on_disk.get(oid)
            if got is None or got[0] in seen:
                continue
            seen.add(got[0])
            disk += got[1]
            if holders[oid] > 1:
                shared += got[1]
        usage.append(ImageUsage(rec.id, tuple(rec.tags), rec.size, disk, shared, disk - shared,
                                len(image_objects[rec.id])))
    object_bytes = sum(inodes.values())
    index_bytes = 0
    idir = os.path.join(ctx.root, "index")
    for name in _listdir(idir):
        got = _blocks(os.path.join(idir, name))
        index_bytes += got[1] if got else 0
    logical = sum(u.logical_bytes for u in usage) + outside
    disk_bytes = object_bytes + index_bytes
    return DuResult(tuple(usage), logical, layer_bytes, object_bytes, index_bytes, disk_bytes,
                    round(logical / disk_bytes, 3) if disk_bytes else 0.0, n_objects, len(inodes))


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _records_objects(index, txn, diff_id: str) -> dict[bytes, int]:
    try:
        return _native.record_objects(index.layer_data(txn, diff_id, "records"))
    except errors.LayerstoreError:
        return {}
