"""fsck: checks the store against itself and, with repair, fixes what can be fixed.

What is checked, all of it in one pass (every problem is reported, not the first):
  - every object a layer contains: present, a regular file of the recorded size whose bytes
    and metadata hash to its name (mode, owner as root; mtime 0), holding the recorded xattrs
    of the namespaces applied to files (_native.xattr_applies: user.*, and as root trusted.*
    and security.capability) and no others of those namespaces.  The rest of the recorded
    xattrs (security.selinux, ...) are in the object's name but never on the file, and what
    the host puts on files in those namespaces is none of fsck's business;
  - the index against itself: images -> layers, tags <-> images, layer and object reference
    counts recomputed from the records, rows that point at nothing;
  - objects/ and tmp/: every file that is not an indexed object.

Repair.  Index rows are recomputed or dropped, stray files deleted, object metadata restored
in place.  An object whose bytes are gone or wrong (written through a hardlinked checkout) is
re-made from another object with the same content and other metadata when one is whole - a
reflink or a copy, checked against the content hash, given its metadata and linked into place
(ls_store_restore); the store syncs before the index commits.  Overlay layer dirs are no such
source: their files are hardlinks of the objects, damaged with them.  Without a whole twin,
repair deletes the bad file and marks every layer holding it for re-import
(Index.mark_reimport), and reports the images naming those layers; importing any of their
archives again re-ingests the marked layers, which re-creates the objects.  An image that names a layer the index lacks is
removed (its tags listed) so that a re-import creates it afresh with correct counts.

Speed: objects are read and hashed in C on every core, in one call per batch (fsck.c).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
from dataclasses import dataclass

from .. import _native, errors
from .._model import Problem, Progress
from .context import Context
from .index import ImageRecord, LayerRecord

_HEX = frozenset("0123456789abcdef")


@dataclass
class _Obj:
    """What the index says an object is: from the first entry naming it."""
    size: int
    content_hash: str
    mode: int
    uid: int
    gid: int
    xattrs: tuple               # every recorded xattr: part of the name
    applied: dict               # those the file should carry
    check_xattrs: bool          # no ingest found the filesystem refusing them
    layers: list


def _images_of(layers, images_by_layer) -> tuple[str, ...]:
    out = set()
    for d in layers:
        out.update(images_by_layer.get(d, ()))
    return tuple(sorted(out))


def _file_xattrs(path: str, owners: bool) -> dict:
    """The file's xattrs of the applied namespaces."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
        return {n: os.getxattr(path, n, follow_symlinks=False)
                for n in names if _native.xattr_applies(n, owners)}
    except OSError:
        return {}


def _restore_metadata(path: str, o: _Obj, owners: bool, want_mode: int, xattrs: bool) -> None:
    if owners:
        os.chown(path, o.uid, o.gid, follow_symlinks=False)   # before chmod: chown drops setuid
    os.chmod(path, want_mode)
    if xattrs:
        for name in _file_xattrs(path, owners):
            if name not in o.applied:
                os.removexattr(path, name)
        for name, value in o.applied.items():
            os.setxattr(path, name, value)
    os.utime(path, ns=(0, 0), follow_symlinks=False)


def _judge(oid: str, path: str, o: _Obj, got: _native.ObjectCheck | None, owners: bool):
    """None when the object is whole, else (kind, detail, how to restore its metadata)."""
    if got is None or got.err == errno.ENOENT:
        return ("object-missing", "missing from objects/", None)
    if got.err == _native.NOT_REGULAR:
        return ("object-corrupt", "not a regular file", None)
    if got.err:
        return ("object-corrupt", f"cannot be read: {os.strerror(got.err)}", None)
    if got.size != o.size:
        return ("object-corrupt", f"has {got.size} bytes, its records say {o.size}", None)
    if got.content_hash.hex() != o.content_hash or _native.object_id(
            got.content_hash, o.mode, o.uid, o.gid, o.xattrs) != oid:
        return ("object-corrupt", "its bytes no longer hash to its name (changed in place, "
                "as through a hardlinked checkout?)", None)
    want_mode = o.mode & 0o7777 if owners else (o.mode | stat.S_IRUSR) & 0o7777
    got_mode = stat.S_IMODE(got.mode)
    # An unprivileged chmod may drop setgid (group not ours): the index keeps the real mode.
    mask = 0o7777 if owners else 0o5777
    wrong = []
    if got_mode & mask != want_mode & mask:
        wrong.append(f"mode {got_mode:o}, not {want_mode:o}")
    if owners and (got.uid, got.gid) != (o.uid, o.gid):
        wrong.append(f"owner {got.uid}:{got.gid}, not {o.uid}:{o.gid}")
    if o.check_xattrs and (_file_xattrs(path, owners) if got.xattrs else {}) != o.applied:
        wrong.append("xattrs differ from its records")
    if got.mtime_ns != 0:
        wrong.append("mtime is not 0")
    if wrong:
        return ("object-metadata", "; ".join(wrong), (want_mode, o.check_xattrs))
    return None


class _Stopped(Exception):
    """Raised into the hashing thread's progress report: observed() then cancels the C call."""


class _Hasher:
    """Hashes objects in C on every core (fsck.c), from a thread of its own so that this one
    decodes the layer records meanwhile (the C call releases the GIL).  This thread reports
    progress while it waits, and when it is interrupted (Ctrl-C) the hashing stops within a
    tenth of a second instead of running to the end."""

    def __init__(self, objects_dir: str, owners: bool, progress) -> None:
        self.objects_dir, self.owners, self.progress = objects_dir, owners, progress
        self.results: dict[bytes, _native.ObjectCheck] = {}
        self._errors: list[BaseException] = []
        self._thread = None
        self._stop = False
        self._done = (0, 0)         # bytes and objects hashed by the thread so far
        self._total = [0, 0]

    def _report(self, done_bytes: int, items: int) -> None:
        self._done = (done_bytes, items)
        if self._stop:
            raise _Stopped

    def _work(self, ids) -> None:
        try:
            self.results.update(zip(ids, _native.check_objects(
                self.objects_dir, ids, self.owners, report=self._report)))
        except BaseException as exc:    # noqa: BLE001 - re-raised by finish
            self._errors.append(exc)

    def _show(self, done_bytes: int, items: int) -> None:
        if self.progress is not None:
            self.progress(Progress(done_bytes, self._total[0], items, self._total[1]))

    def start(self, ids, size: int) -> None:
        """ids biggest first, size their bytes."""
        self._total = [size, len(ids)]
        self._thread = threading.Thread(target=self._work, args=(ids,), daemon=True,
                                        name="layerstore-fsck")
        self._thread.start()

    def finish(self, more, size: int = 0) -> None:
        """Waits for the first batch, then hashes more (ids not known at start, of size
        bytes) on this thread; more=None abandons the work."""
        if more is None:
            self._stop = True
            self._thread.join()
            return
        while self._thread.is_alive():
            self._thread.join(0.1)
            self._show(*self._done)
        if self._errors:
            raise self._errors[0]
        self._show(*self._done)
        if more:
            self._total[0] += size
            self._total[1] += len(more)
            b, n = self._done
            self.results.update(zip(more, _native.check_objects(
                self.objects_dir, more, self.owners,
                report=lambda mb, mn: self._show(b + mb, n + mn))))


def _layer_objects(records, diff_id: str, expected: dict, owners: bool) -> None:
    """Adds the non-empty objects of a layer's record batch to expected.  Scans the records
    (decode_records would build every entry) and decodes the xattrs of new objects only."""
    file_type = _native.FILE
    skipped = _native.XATTRS_SKIPPED
    applies = _native.xattr_applies
    for typ, flags, mode, uid, gid, size, _, oid, chash, blob in _native.scan_records(records):
        if typ == file_type and size:
            key = oid.hex()
            o = expected.get(key)
            if o is None:
                xattrs = _native.decode_xattrs(blob)
                o = expected[key] = _Obj(size, chash.hex(), mode, uid, gid, xattrs,
                                         {n: v for n, v in xattrs if applies(n, owners)},
                                         True, [diff_id])
            elif o.layers[-1] != diff_id:
                o.layers.append(diff_id)
            # Only the ingest that wrote the object knows what the filesystem refused.
            if flags & skipped:
                o.check_xattrs = False


def _scan_files(root: str, expected: dict[str, _Obj]) -> list[tuple[str, str, str]]:
    """(path relative to root, why, kind) for every file of objects/ and tmp/ that is not an
    object the layers hold.  kind: "stray-file", "garbage" (tmp/ holds only what interrupted
    imports leave), or "unreferenced" for a well-named object, which run() judges."""
    out = []
    objects_dir = os.path.join(root, "objects")
    with os.scandir(objects_dir) as top:
        for d in top:
            if not (len(d.name) == 2 and set(d.name) <= _HEX and d.is_dir(follow_symlinks=False)):
                out.append((f"objects/{d.name}", "not an objects/ fan-out directory",
                            "stray-file"))
                continue
            with os.scandir(d.path) as names:
                for f in names:
                    oid = d.name + f.name
                    if oid in expected:
                        continue        # its type and content are _judge's business
                    if len(f.name) != 62 or not set(f.name) <= _HEX:
                        out.append((f"objects/{d.name}/{f.name}", "not an object name",
                                    "stray-file"))
                    else:
                        out.append((f"objects/{d.name}/{f.name}", "", "unreferenced"))
    for name in sorted(_listdir(os.path.join(root, "tmp"))):
        out.append((f"tmp/{name}", "left in tmp/ by an import in progress or cut short; gc "
                    "removes it", "garbage"))
    return out


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _remove(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            import shutil
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


def run(ctx: Context, txn, repair: bool, progress=None) -> list[Problem]:
    """Checks the store as txn sees the index (with repair, txn is the write transaction the
    fixes go into); the caller holds the store lock.  progress: see Store.fsck."""
    index = ctx.index
    owners = ctx.objects.owners
    root = ctx.root
    problems: list[Problem] = []
    fixes = []      # (problem index, callable) applied in order when repairing

    def add(kind, subject, detail, repairable, images=(), fix=None):
        problems.append(Problem(kind, subject, detail, repairable, tuple(images)))
        if fix is not None:
            fixes.append((len(problems) - 1, fix))

    # ---- the index ---------------------------------------------------------------------------
    images = {k.decode(): ImageRecord.from_json(v) for k, v in index.rows(txn, "images")}
    tags = {k.decode(): v.decode() for k, v in index.rows(txn, "tags")}
    layers = {k.decode(): LayerRecord.from_json(v) for k, v in index.rows(txn, "layers")}
    data_keys = {k for k, _ in index.rows(txn, "layer_data")}
    object_rows = {k: index.unpack_object(v) for k, v in index.rows(txn, "objects")}
    marks = index.reimport_marks(txn)

    images_by_layer: dict[str, set] = {}
    for img in images.values():
        for d in img.diff_ids:
            images_by_layer.setdefault(d, set()).add(img.id)

    # Images that name a layer the index lacks cannot be checked out or counted: repair
    # removes them, and their re-import makes them afresh.
    dropped_images = set()
    layers_without_records = {d for d in layers
                              if f"{d}/records".encode() not in data_keys
                              or f"{d}/raw".encode() not in data_keys}
    for d in sorted(layers_without_records):
        add("layer-records-missing", d, "the index has the layer but not its entries",
            False, images_by_layer.get(d, ()),
            lambda d=d: _drop_layer(index, txn, d))
    for img in images.values():
        gone = [d for d in img.diff_ids if d not in layers or d in layers_without_records]
        if gone:
            dropped_images.add(img.id)
            tag_note = f" (tags: {', '.join(img.tags)})" if img.tags else ""
            add("image-layer-missing", img.id,
                f"names {len(gone)} layer(s) the store lacks, e.g. {gone[0]}; repair removes "
                f"the image{tag_note}", False, (img.id,),
                lambda i=img: _drop_image(index, txn, i))
        if index.metadata(txn, img.id) is None:
            add("image-config-missing", img.id, "its config is not in the index", False,
                (img.id,))
        if img.manifest_digest and index.metadata(txn, img.manifest_digest) is None:
            add("image-manifest-missing", img.id,
                f"its manifest {img.manifest_digest} is not in the index", False, (img.id,))
        for t in img.tags:
            if tags.get(t) != img.id and img.id not in dropped_images:
                add("tag-mismatch", t, f"image {img.id} lists the tag, but the tag points to "
                    f"{tags.get(t) or 'nothing'}", True,
                    fix=lambda t=t, i=img.id: _untag_image(index, txn, i, t))
    for t, image_id in tags.items():
        holder = images.get(image_id)
        if holder is None:
            add("tag-dangling", t, f"points to {image_id}, which is not in the store", True,
                fix=lambda t=t: index.delete_row(txn, "tags", t.encode()))
        elif t not in holder.tags and image_id not in dropped_images:
            add("tag-mismatch", t, f"points to {image_id}, whose record lacks the tag", True,
                fix=lambda t=t, i=image_id: _tag_image(index, txn, i, t))

    live = {i: img for i, img in images.items() if i not in dropped_images}
    slots: dict[str, int] = {}
    for img in live.values():
        for d in img.diff_ids:
            slots[d] = slots.get(d, 0) + 1
    for d, rec in layers.items():
        if d in layers_without_records:
            continue
        if rec.refs != slots.get(d, 0):
            add("layer-refcount", d, f"reference count {rec.refs}, but {slots.get(d, 0)} image "
                "slot(s) name it", True,
                fix=lambda d=d, n=slots.get(d, 0): _set_layer_refs(index, txn, d, n))

    for k in sorted(data_keys):
        d = k.decode().rsplit("/", 1)[0]
        if d not in layers:
            add("layer-data-dangling", k.decode(), "entries of a layer the index lacks", True,
                fix=lambda k=k: index.delete_row(txn, "layer_data", k))
    def dangling(table: str, kind: str, alive, why) -> None:
        """Rows of table that point at nothing: alive(key, value) says whether they do (the
        key decoded, the value as stored)."""
        for k, v in index.rows(txn, table):
            if not alive(k.decode(), v):
                add(kind, k.decode(), why(v), True,
                    fix=lambda k=k: index.delete_row(txn, table, k))

    blob_digests = {b["digest"] for rec in layers.values() for b in rec.blobs}
    dangling("blobs", "blob-dangling", lambda k, v: v.decode() in layers,
             lambda v: f"maps to layer {v.decode()}, which the index lacks")
    dangling("image_trees", "tree-dangling", lambda k, v: k in images,
             lambda v: "checkout plan of an image the index lacks")
    dangling("repo_digests", "repo-digest-dangling", lambda k, v: v.decode() in images,
             lambda v: f"names image {v.decode()}, which the index lacks")
    dangling("blob_locations", "blob-location-dangling", lambda k, v: k in blob_digests,
             lambda v: "where a blob no layer records was seen")
    dangling("pins", "pin-dangling", lambda k, v: set(json.loads(v)) <= set(layers),
             lambda v: "holds layers the index lacks")
    for d in sorted(marks - set(layers)):
        add("mark-dangling", d, "re-import mark of a layer the index lacks", True,
            fix=lambda d=d: index.clear_reimport(txn, d))

    # Hashing needs nothing from the records (only the verdict does), so it starts on the
    # objects the objects table names while this thread decodes the records.
    objects_dir = os.path.join(root, "objects")
    hasher = _Hasher(objects_dir, owners, progress)
    hasher.start(sorted(object_rows, key=lambda k: -object_rows[k][0]),
                 sum(size for size, _ in object_rows.values()))
    try:
        expected: dict[str, _Obj] = {}
        for d in layers:
            if d not in layers_without_records:
                _layer_objects(index.layer_data(txn, d, "records"), d, expected, owners)
        more = [oid for oid in expected if bytes.fromhex(oid) not in object_rows]
        hasher.finish([bytes.fromhex(oid) for oid in more],
                      sum(expected[oid].size for oid in more))
    except BaseException:
        hasher.finish(None)
        raise
    for oid, o in expected.items():
        key = bytes.fromhex(oid)
        row = object_rows.get(key)
        if row is None:
            add("object-row-missing", oid, f"held by {len(o.layers)} layer(s), not in the "
                "objects table", True,
                fix=lambda k=key, o=o: index.put_row(txn, "objects", k,
                                                     index.pack_object(o.size, len(o.layers))))
        elif row != (o.size, len(o.layers)):
            add("object-refcount", oid, f"row says {row[0]} bytes and {row[1]} layer(s); the "
                f"records say {o.size} bytes and {len(o.layers)} layer(s)", True,
                fix=lambda k=key, o=o: index.put_row(txn, "objects", k,
                                                     index.pack_object(o.size, len(o.layers))))
    for key in object_rows:
        if key.hex() not in expected:
            add("object-row-dangling", key.hex(), "in the objects table, but no layer holds it",
                True, fix=lambda k=key: index.delete_row(txn, "objects", k))

    # ---- the files ---------------------------------------------------------------------------
    # An object no layer holds is garbage when a marker in pending/ says an import or gc is
    # running or was cut short (see store/lifecycle.py): gc removes it once that work is over.  The
    # markers are listed after the walk, so an import that wrote during it either still has
    # its marker or has committed, which a fresh look at the index shows (no repair only:
    # repair holds the store exclusively).  Without either, nothing explains the file.
    files = _scan_files(root, expected)
    interrupted = bool(_listdir(os.path.join(root, "pending")))
    unreferenced = [rel for rel, _, kind in files if kind == "unreferenced"]
    committed = set()
    if unreferenced and not interrupted and not repair:
        with index.read() as fresh:
            committed = {rel for rel in unreferenced
                         if index.object(fresh, bytes.fromhex(rel[8:10] + rel[11:]))}
    for rel, why, kind in files:
        if kind == "unreferenced":
            if rel in committed:
                continue
            kind = "garbage" if interrupted else "stray-file"
            why = ("an object an import or gc in progress or cut short left; gc removes it"
                   if interrupted else "an object no layer holds (gc --full removes it)")
        add(kind, rel, why, True, fix=lambda p=os.path.join(root, rel): _remove(p))

    bad = {}
    for oid, o in expected.items():
        r = _judge(oid, os.path.join(objects_dir, oid[:2], oid[2:]), o,
                   hasher.results.get(bytes.fromhex(oid)), owners)
        if r is not None:
            bad[oid] = r
    # Equal bytes under other metadata are another object (another name): one whose bytes
    # are whole can re-make a damaged or missing one.
    whole = {}
    for oid, o in expected.items():
        if oid not in bad or bad[oid][0] == "object-metadata":
            whole.setdefault(o.content_hash, oid)
    healed_marks = set(marks) & set(layers)
    restored: list[str] = []
    for oid in sorted(bad):
        kind, detail, meta = bad[oid]
        o = expected[oid]
        path = os.path.join(objects_dir, oid[:2], oid[2:])
        affected = _images_of(o.layers, images_by_layer)
        if kind == "object-metadata":
            add(kind, oid, detail, True,
                fix=lambda p=path, o=o, m=meta: _restore_metadata(p, o, owners, *m))
            continue
        twin = whole.get(o.content_hash)
        if twin is not None:
            add(kind, oid, f"{detail}; repair copies its content from object {twin}", True,
                affected, fix=lambda p=path, i=oid, t=twin, o=o, k=kind: _restore_object(
                    ctx, txn, p, i, t, o, k, healed_marks, restored))
            continue
        healed_marks -= set(o.layers)
        note = "; re-import an image holding it" if affected else ""
        add(kind, oid, detail + note, False, affected,
            fix=lambda p=path, o=o, k=kind: _forget_object(index, txn, p, o, k))

    if not repair:
        return problems
    done = set()
    for i, fix in fixes:
        if fix() is not False and problems[i].repairable:
            done.add(i)
    if restored:
        ctx.objects.sync()          # before the index commit, as an import does
    # A marked layer whose objects are all whole again (another image's re-import made them)
    # needs no re-ingest.
    for d in healed_marks:
        index.clear_reimport(txn, d)
    return [Problem(p.kind, p.subject, p.detail, p.repairable, p.images, i in done)
            for i, p in enumerate(problems)]


def _restore_object(ctx: Context, txn, path: str, oid: str, twin: str, o: _Obj, kind: str,
                    healed_marks: set, restored: list) -> bool:
    """Re-makes a damaged or missing object from twin (whole bytes, other metadata); when
    that fails (the twin changed since it was read), marks its layers for re-import instead.
    Returns whether it healed the object."""
    _remove(path)
    try:
        ctx.objects.restore(oid, twin, bytes.fromhex(o.content_hash), o.size, o.mode, o.uid,
                            o.gid, o.xattrs)
    except errors.LayerstoreError:
        _forget_object(ctx.index, txn, path, o, kind)
        healed_marks.difference_update(o.layers)
        return False
    restored.append(oid)
    return True


def _forget_object(index, txn, path: str, o: _Obj, kind: str) -> None:
    if kind != "object-missing":
        _remove(path)       # a later import would take a same-sized file for the object
    for d in o.layers:
        index.mark_reimport(txn, d)


def _set_layer_refs(index, txn, diff_id: str, refs: int) -> None:
    rec = index.layer(txn, diff_id)
    rec.refs = refs
    index.put_row(txn, "layers", diff_id.encode(), rec.to_json())


def _drop_layer(index, txn, diff_id: str) -> None:
    rec = index.layer(txn, diff_id)
    for b in rec.blobs if rec is not None else ():
        if index.blob_layer(txn, b["digest"]) == diff_id:
            index.delete_row(txn, "blobs", b["digest"].encode())
    index.delete_row(txn, "layers", diff_id.encode())
    for part in ("records", "raw"):
        index.delete_row(txn, "layer_data", f"{diff_id}/{part}".encode())


def _drop_image(index, txn, rec: ImageRecord) -> None:
    for t in rec.tags:
        if index.tag(txn, t) == rec.id:
            index.delete_row(txn, "tags", t.encode())
    index.delete_row(txn, "images", rec.id.encode())
    if index.image_tree(txn, rec.id) is not None:
        index.delete_row(txn, "image_trees", rec.id.encode())


def _untag_image(index, txn, image_id: str, tag: str) -> None:
    rec = index.image(txn, image_id)
    if rec is not None and tag in rec.tags:
        rec.tags = [t for t in rec.tags if t != tag]
        index.put_row(txn, "images", image_id.encode(), rec.to_json())


def _tag_image(index, txn, image_id: str, tag: str) -> None:
    rec = index.image(txn, image_id)
    if rec is not None and tag not in rec.tags:
        rec.tags.append(tag)
        index.put_row(txn, "images", image_id.encode(), rec.to_json())
