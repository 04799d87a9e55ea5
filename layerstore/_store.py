"""Store: the embedding API over the object store, the index and the archive readers.

On disk (see DESIGN.md): root/ (mode 0700) holds index/ (LMDB), objects/xx/... (one file per
distinct content and metadata), tmp/ (staging) and lock (a flock file).

Locking.  Every method is thread-safe, and several processes may use one root at once:
  - readers (images, image, layers, entries, checkout) work on an LMDB snapshot and never
    wait;
  - import holds the store lock shared while it writes objects and commits, so imports run in
    parallel with each other; the index commit itself is one short LMDB write transaction;
  - maintenance that deletes objects (gc) takes the store lock exclusively, so it never
    deletes an object an import in progress is about to reference.
Atomicity: an import either commits all of its images in one transaction or leaves the index
untouched; a failed one removes the objects it wrote (see _discard), and what a killed one
leaves is unreferenced, which gc removes.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import BinaryIO, Callable, Iterator

import lmdb

from . import _native, errors
from .formats.archive import BlobInfo, Pipeline, StreamSource, emit_layer, open_source
from .formats.manifests import ImagePlan, parse_platform, plan_images, sha256_digest
from .store.index import ImageRecord, Index, LayerRecord
from ._model import CheckoutResult, Entry, HistoryEntry, Image, Layer, Progress
from ._model import Problem
from .formats.reference import (DIGEST_RE, HEX_PREFIX_RE, MIN_PREFIX, SHORT_PREFIX_RE, new_tag,
                         normalize_tag)
from .errors import (DigestMismatch, ImageNotFound, InvalidReference, LayerNotFound,
                     MissingBlob, StoreLocked)
from .store.tree import Tree, build
from .store import read as _read


def default_root() -> str:
    """--root, else $LAYERSTORE_ROOT, else $XDG_DATA_HOME/layerstore, else
    ~/.local/share/layerstore."""
    if os.environ.get("LAYERSTORE_ROOT"):
        return os.environ["LAYERSTORE_ROOT"]
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                            "share")
    return os.path.join(data, "layerstore")


@dataclass
class _Ingested:
    result: _native.IngestResult
    blob: BlobInfo


def _layer(rec: LayerRecord) -> Layer:
    return Layer(rec.diff_id, rec.stream_bytes, rec.entries, rec.files, rec.file_bytes,
                 rec.new_objects, rec.new_bytes, tuple(b["digest"] for b in rec.blobs), rec.refs)


def _image(rec: ImageRecord, platform: str | None) -> Image:
    return Image(rec.id, tuple(rec.tags), tuple(rec.diff_ids), rec.created, rec.size, platform,
                 rec.source_format)


class Store:
    """A layerstore at a root directory.  Use as a context manager, or call close().

    >>> with Store("/var/lib/mystore") as store:
    ...     (image,) = store.import_archive("python.docker.tar.zst")
    ...     store.checkout(image.id, "/tmp/rootfs")
    """

    def __init__(self, root: str | os.PathLike | None = None, *,
                 lock_timeout: float = 600.0) -> None:
        self.root = os.path.abspath(os.fspath(root) if root is not None else default_root())
        self.lock_timeout = lock_timeout
        try:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            self._lock_fd = os.open(os.path.join(self.root, "lock"),
                                    os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if isinstance(exc, FileExistsError):    # makedirs: a file is in the way
                exc = NotADirectoryError(errno.ENOTDIR, self.root)
            raise errors.host_path_error(exc, self.root, "open the store at") from None
        self._tls = threading.local()       # the store lock this thread holds, see _locked
        try:
            self._objects = _native.ObjectStore(self.root)
            self._index = Index(os.path.join(self.root, "index"))
        except BaseException:
            os.close(self._lock_fd)
            raise

    @classmethod
    def open(cls, root: str | os.PathLike | None = None, **kw) -> "Store":
        return cls(root, **kw)

    def close(self) -> None:
        if self._lock_fd >= 0:
            self._index.close()
            self._objects.close()
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.root!r})"

    # ---- locking ----------------------------------------------------------------------------

    @contextmanager
    def _locked(self, exclusive: bool):
        """The store lock (flock on root/lock): shared for imports and readers, exclusive for
        gc and fsck --repair.  Each holder opens its own file description, so threads of one
        process lock like processes; a thread that holds it may take it again (commit imports
        its layer under the lock it already holds).

        flock favours no one, so back-to-back imports whose shared holds overlap would starve
        gc's exclusive request.  A gate gives the waiting exclusive holder the next turn: every
        holder first takes root/lock.gate (shared, for an instant, for shared holders) and
        keeps it only until it has the lock.  An exclusive holder waiting in the gate stops new
        shared holders there, and gets the lock once those inside have finished."""
        held = getattr(self._tls, "lock", None)
        if held is not None:
            if exclusive and held != fcntl.LOCK_EX:
                raise RuntimeError("the store lock is held shared by this thread: an exclusive "
                                   "request would wait for itself")
            yield
            return
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        deadline = time.monotonic() + self.lock_timeout
        fd = os.open(os.path.join(self.root, "lock"), os.O_RDWR | os.O_CLOEXEC)
        try:
            gate = os.open(os.path.join(self.root, "lock.gate"),
                           os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                self._flock(gate, mode, deadline)
                self._flock(fd, mode, deadline)
            finally:
                os.close(gate)
            self._tls.lock = mode
            try:
                yield
            finally:
                self._tls.lock = None
        finally:
            os.close(fd)

    def _flock(self, fd: int, mode: int, deadline: float) -> None:
        # Polled, not blocking, so that lock_timeout holds; the first retries come soon, as
        # most waits are for a gate passed in microseconds.
        pause = 0.001
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreLocked(f"the store at {self.root} is locked by another "
                                      f"process (waited {self.lock_timeout:g} s)") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.05)

    # ---- import -----------------------------------------------------------------------------

    def import_archive(self, source: str | os.PathLike | BinaryIO, tags=(),
                       platform: str | None = None, all_platforms: bool = False,
                       progress: Callable[[Progress], None] | None = None) -> list[Image]:
        """Imports every image of a docker-archive or OCI layout (a directory, a tar, or a
        gzip/zstd-compressed tar; a path or a binary file object).  tags are added to the
        image (the archive must then hold exactly one).  An image index yields the image for
        platform ("os/arch[/variant]", default this machine's), or all with all_platforms.

        Every digest is verified; on any error nothing is committed.
        Locking: holds the store lock shared; commits in one index transaction."""
        user_tags = [new_tag(t) for t in tags]
        if platform is not None:
            parse_platform(platform)    # before a streamed archive's layers are read
        src, close = open_source(source)
        try:
            with self._importing() as written:
                if src.random_access:
                    plans = plan_images(src, platform, all_platforms)
                    self._check_tags(plans, user_tags)
                    ingested = self._ingest_needed(src, plans, progress, written)
                else:
                    ingested = self._run(src.produce, src, progress, written)
                    plans = plan_images(src.files_view(), platform, all_platforms)
                    self._check_tags(plans, user_tags)
                    self._ingest_small_blobs(src, plans, ingested, written)
                trees = self._verify(plans, ingested)
                try:
                    return self._commit(plans, ingested, user_tags, trees)
                except lmdb.Error as exc:
                    raise _index_write_error(exc, self.root) from None
        finally:
            close()

    @contextmanager
    def _importing(self):
        """The store lock, shared, for the length of an import, and a marker in pending/ that
        tells gc to look for what the import leaves if it is killed.  Yields a list to which
        the import adds the ids of the objects it writes; if the import fails, _discard
        removes those that no image came to reference."""
        from .store import lifecycle as _lifecycle
        written: list[bytes] = []
        marker = None
        try:
            with self._locked(exclusive=False):
                marker = _lifecycle.import_started(self)
                yield written
                _lifecycle.import_finished(marker)
        except BaseException:
            if marker is not None:
                self._discard(marker, written)
            raise

    def _discard(self, marker: str, written: list[bytes]) -> None:
        """After a failed import (with the store lock released): removes the objects it wrote
        that the index does not know, then its marker.  Another import may have found one of
        them already stored and be about to reference it, so this is done only when the lock
        can be had exclusively at once, which no other import, checkout or reader then holds;
        otherwise the objects and the marker stay for gc.  Nothing when this thread still holds
        the lock for a caller (an import inside commit): that caller's work goes on."""
        from .store import lifecycle as _lifecycle
        if getattr(self._tls, "lock", None) is not None:
            return
        fd = os.open(os.path.join(self.root, "lock"), os.O_RDWR | os.O_CLOEXEC)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            objects = os.path.join(self.root, "objects")
            with self._index.read() as txn:
                for oid in written:
                    if self._index.object(txn, oid) is None:
                        try:
                            os.unlink(os.path.join(objects, _native.object_path(oid.hex())))
                        except FileNotFoundError:
                            pass
            _lifecycle.import_finished(marker)
        finally:
            os.close(fd)

    @staticmethod
    def _check_tags(plans: list[ImagePlan], tags: list[str]) -> None:
        if tags and len(plans) != 1:
            raise errors.LayerstoreError(f"--tag needs an archive with exactly one image; this "
                                         f"one has {len(plans)}")

    def _known_layer(self, txn, diff_id: str, digest: str | None) -> bool:
        if self._index.layer(txn, diff_id) is not None:
            # fsck --repair marks a layer whose objects it found damaged: ingesting it again
            # is what re-creates them.
            return not self._index.needs_reimport(txn, diff_id)
        return digest is not None and self._index.blob_layer(txn, digest) == diff_id

    def _ingest_needed(self, src, plans, progress, written) -> dict[str, _Ingested | None]:
        """Random access: ingests only the layers the store lacks (None marks a known one)."""
        out: dict[str, _Ingested | None] = {}
        needed: list[str] = []
        with self._index.read() as txn:
            for plan in plans:
                for ref in plan.layers:
                    if ref.member in out or ref.member in needed:
                        continue
                    if self._known_layer(txn, ref.diff_id, ref.digest):
                        out[ref.member] = None
                    else:
                        needed.append(ref.member)
        out.update(self._run(src.produce_layers(needed), src, progress, written))
        return out

    def _ingest_small_blobs(self, src: StreamSource, plans, ingested, written) -> None:
        """Layers the stream kept as metadata (tiny or empty blobs) are ingested from memory."""
        for plan in plans:
            for ref in plan.layers:
                if ref.member not in ingested and ref.member in src.files:
                    data = src.files[ref.member]
                    ingested.update(self._run(
                        lambda emit, d=data, k=ref.member: emit_layer(emit, k, _Bytes(d)),
                        src, None, written))

    def _run(self, produce, src, progress, written: list[bytes]) -> dict[str, _Ingested]:
        """Consumes a reader pipeline: layers go to the C ingest, metadata into src; the ids
        of the objects written go into written, also those of a layer that failed."""
        out: dict[str, _Ingested] = {}
        pipe = Pipeline(produce)
        ingest = None
        key = None
        files = layers = 0
        try:
            for event in pipe:
                kind = event[0]
                if kind == "data":
                    try:
                        ingest.feed(event[1])
                    except errors.LayerstoreError as exc:
                        raise _in_layer(exc, key) from None
                    if progress is not None:
                        progress(Progress(src.bytes_read, src.size, files))
                elif kind == "layer":
                    key = event[1]
                    ingest = _native.LayerIngest(self._objects)
                elif kind == "end":
                    try:
                        result = ingest.finish()
                    except errors.LayerstoreError as exc:
                        raise _in_layer(exc, key) from None
                    written += _native.new_objects(result.records)
                    ingest.close()
                    ingest = None
                    self._objects.start_writeback()
                    out[key] = _Ingested(result, event[1])
                    layers += 1
                    files += result.stats.files
                elif kind == "meta":
                    src.files[event[1]] = event[2]
                elif kind == "link":
                    src.links.add(event[1], event[2], event[3])
            if progress is not None:
                progress(Progress(src.bytes_read, src.size, files))
        finally:
            pipe.close()
            if ingest is not None:
                written += _native.new_objects(ingest.records_so_far())
                ingest.close()
        return out

    def _verify(self, plans: list[ImagePlan], ingested: dict) -> dict[str, Tree]:
        trees = {}
        for plan in plans:
            for ref in plan.layers:
                if ref.member not in ingested:
                    raise MissingBlob(f"layer {ref.member} named by the manifest is not in the "
                                      "archive")
                got = ingested[ref.member]
                if got is None:
                    continue        # already stored under this diffID
                diff_id = got.result.stats.diff_id
                if diff_id != ref.diff_id:
                    raise DigestMismatch(f"layer {ref.member}: its tar hashes to {diff_id}, but "
                                         f"the image config says {ref.diff_id}")
                blob_digest = got.blob.digest or diff_id
                if ref.digest is not None and blob_digest != ref.digest:
                    raise DigestMismatch(f"layer {ref.member}: the blob hashes to {blob_digest}, "
                                         f"not {ref.digest}")
                if ref.size is not None and got.blob.size != ref.size:
                    raise DigestMismatch(f"layer {ref.member}: the blob has {got.blob.size} "
                                         f"bytes, its descriptor says {ref.size}")
            # Hardlinks must resolve within the image; build() raises where one does not.
            # The merged tree is kept as the image's checkout plan.
            trees[plan.config_digest] = build(self._plan_entries(plan, ingested))
        return trees

    def _plan_entries(self, plan: ImagePlan, ingested: dict):
        for ref in plan.layers:
            got = ingested[ref.member]
            if got is not None:
                yield got.result.entries()
            else:
                yield self.layer_entries(ref.diff_id)

    def _commit(self, plans: list[ImagePlan], ingested: dict, user_tags: list[str],
                trees: dict[str, Tree] | None = None):
        from .store.checkout import plan as checkout_plan
        self._objects.sync()    # objects durable before the index references them
        _native.test_step()
        images = []
        with self._index.write() as txn:
            _native.test_step()
            for plan in plans:
                for ref in plan.layers:
                    got = ingested.get(ref.member)
                    if got is None:
                        continue
                    r = got.result
                    blobs = []
                    if got.blob.compression != "tar" or ref.digest is not None:
                        blobs.append({"digest": got.blob.digest or r.stats.diff_id,
                                      "media_type": ref.media_type, "size": got.blob.size,
                                      "compression": got.blob.compression})
                    rec = LayerRecord(r.stats.diff_id, r.stats.stream_bytes, r.stats.entries,
                                      r.stats.files, r.stats.file_bytes, r.stats.new_objects,
                                      r.stats.new_bytes, blobs)
                    self._index.add_layer(txn, rec, r.records, r.raw,
                                          _native.record_objects(r.records))
            for plan in plans:
                self._index.put_metadata(txn, plan.config_digest, plan.config)
                if plan.manifest is not None:
                    self._index.put_metadata(txn, plan.manifest_digest, plan.manifest)
                size = 0
                for diff_id in plan.layers:
                    layer = self._index.layer(txn, diff_id.diff_id)
                    size += layer.file_bytes if layer else 0
                config = json.loads(plan.config)
                rec = ImageRecord(plan.config_digest, [r.diff_id for r in plan.layers], [],
                                  plan.manifest_digest, plan.manifest_media_type,
                                  plan.source_format, config.get("created"), size, time.time())
                if trees and plan.config_digest in trees and \
                        self._index.image_tree(txn, plan.config_digest) is None:
                    self._index.put_image_tree(txn, plan.config_digest,
                                               checkout_plan(trees[plan.config_digest]))
                stored = self._index.add_image(txn, rec, plan.tags + user_tags)
                images.append(_image(stored, plan.platform))
            _native.test_step()
        _native.test_step()
        return images

    def import_layer(self, stream: BinaryIO) -> Layer:
        """Ingests one uncompressed, gzip or zstd layer stream, for tools that bring their own
        manifests (see add_image).  A layer no image names is removed by gc.
        Locking: holds the store lock shared."""
        src = _LayerSource(stream)
        with self._importing() as written:
            got = self._run(src.produce, src, None, written)["layer"]
            self._objects.sync()
            r = got.result
            blobs = [] if got.blob.compression == "tar" else [
                {"digest": got.blob.digest, "media_type": None, "size": got.blob.size,
                 "compression": got.blob.compression}]
            rec = LayerRecord(r.stats.diff_id, r.stats.stream_bytes, r.stats.entries, r.stats.files,
                              r.stats.file_bytes, r.stats.new_objects, r.stats.new_bytes, blobs)
            with self._index.write() as txn:
                self._index.add_layer(txn, rec, r.records, r.raw,
                                      _native.record_objects(r.records))
                return _layer(self._index.layer(txn, r.stats.diff_id))

    def add_image(self, config: bytes, tags=(), manifest: bytes | None = None,
                  manifest_media_type: str | None = None) -> Image:
        """Creates an image from a config whose rootfs.diff_ids are all stored layers (see
        import_layer).  Locking: one index write transaction."""
        from .formats.manifests import LayerRef, _parse_config
        digest, parsed = _parse_config(config, "config", None)
        user_tags = [new_tag(t) for t in tags]
        diff_ids = parsed["rootfs"]["diff_ids"]
        with self._index.read() as txn:
            for d in diff_ids:
                if self._index.layer(txn, d) is None:
                    raise LayerNotFound(f"layer {d} is not in the store")
        plan = ImagePlan(config, digest, [LayerRef(d, d) for d in diff_ids], [], manifest,
                         sha256_digest(manifest) if manifest is not None else None,
                         manifest_media_type, "api")
        known = {ref.member: None for ref in plan.layers}
        tree = build(self._plan_entries(plan, known))      # hardlinks must resolve
        return self._commit([plan], known, user_tags, {digest: tree})[0]

    # ---- reading ----------------------------------------------------------------------------

    def _resolve(self, txn, ref: str) -> ImageRecord:
        """The image ref names: an id, a unique id prefix of 12+ hex digits, or a tag.  A
        shorter prefix is refused, with the rule, rather than read as a tag that is absent."""
        if DIGEST_RE.match(ref):
            rec = self._index.image(txn, ref)
            if rec is not None:
                return rec
        m = HEX_PREFIX_RE.match(ref)
        if m:
            ids = self._index.image_ids_with_prefix(txn, "sha256:" + m.group(1))
            if len(ids) == 1:
                return self._index.image(txn, ids[0])
            if len(ids) > 1:
                raise ImageNotFound(f"image id prefix {ref!r} is ambiguous: it matches "
                                    f"{len(ids)} images")
        image_id = self._index.tag(txn, normalize_tag(ref))     # InvalidReference, as Docker
        if image_id is not None:
            rec = self._index.image(txn, image_id)
            if rec is not None:
                return rec
        if SHORT_PREFIX_RE.match(ref):
            rule = f"an image id prefix needs at least {MIN_PREFIX} hex digits"
            if ref.startswith("sha256:"):
                raise InvalidReference(f"image id prefix {ref!r} is too short: {rule}")
            raise ImageNotFound(f"no such image: {ref} (no such tag, and {rule})")
        raise ImageNotFound(f"no such image: {ref}")

    def _platform(self, txn, rec: ImageRecord) -> str | None:
        config = json.loads(self._index.metadata(txn, rec.id) or b"{}")
        if "os" not in config or "architecture" not in config:
            return None
        p = f"{config['os']}/{config['architecture']}"
        return f"{p}/{config['variant']}" if config.get("variant") else p

    def images(self) -> list[Image]:
        """Every image, newest import first.  Locking: a snapshot, never waits."""
        with self._index.read() as txn:
            recs = sorted(self._index.images(txn), key=lambda r: -r.imported)
            return [_image(r, self._platform(txn, r)) for r in recs]

    def image(self, ref: str) -> Image:
        """The image a tag, an id or a unique id prefix (12+ hex digits) names."""
        with self._index.read() as txn:
            rec = self._resolve(txn, ref)
            return _image(rec, self._platform(txn, rec))

    def tag(self, source: str, target: str) -> Image:
        """Tags an image, as `docker tag SOURCE TARGET`: source names it (a tag, an id or a
        unique id prefix), target is the new tag, normalized as Docker does ("app" is
        docker.io/library/app:latest); a tag another image held moves to this one.  Returns
        the image.  Locking: one index write transaction."""
        tag = new_tag(target)
        try:
            with self._index.write() as txn:
                rec = self._index.add_image(txn, self._resolve(txn, source), [tag])
                return _image(rec, self._platform(txn, rec))
        except lmdb.Error as exc:
            raise _index_write_error(exc, self.root) from None

    def history(self, ref: str) -> list[HistoryEntry]:
        """The image's history, newest step first, as `docker history`: the steps of its
        config's "history", those that made a layer (not empty_layer) matched in order with
        rootfs.diff_ids.  Where the counts differ the newest steps go with the newest layers
        (a tool that added a step to a base without history, as commit over such a base):
        older layers no step describes are steps of their own with nothing but the layer,
        older steps no layer is left for have none.  Locking: a snapshot, never waits."""
        with self._index.read() as txn:
            rec = self._resolve(txn, ref)
            config = json.loads(self._index.metadata(txn, rec.id) or b"{}")
            sizes = {}
            for d in rec.diff_ids:
                layer = self._index.layer(txn, d)
                sizes[d] = layer.file_bytes if layer is not None else 0
        steps = config.get("history") if isinstance(config, dict) else None
        steps = [s for s in steps if isinstance(s, dict)] if isinstance(steps, list) else []
        made = [i for i, s in enumerate(steps) if s.get("empty_layer") is not True]
        paired = min(len(made), len(rec.diff_ids))
        undescribed = len(rec.diff_ids) - paired
        layer_of = dict(zip(made[len(made) - paired:], rec.diff_ids[undescribed:]))
        rows = [HistoryEntry(None, None, "", "", False, d, sizes[d])
                for d in rec.diff_ids[:undescribed]]
        for i, step in enumerate(steps):
            created, diff_id = step.get("created"), layer_of.get(i)
            rows.append(HistoryEntry(None, created if isinstance(created, str) else None,
                                     _text(step.get("created_by")), _text(step.get("comment")),
                                     step.get("empty_layer") is True, diff_id,
                                     sizes.get(diff_id, 0)))
        rows.reverse()
        if rows:
            rows[0] = replace(rows[0], image_id=rec.id)
        return rows

    def containers(self) -> list:
        """The containers `mount` made that are mounted now, as `docker ps` lists the running
        ones: their _overlay.Mount records (id, image id, mountpoint, upper dir, created),
        newest first.  Locking: none (the records are files under root/containers/)."""
        from .runtimes import overlay as _overlay
        active = [m for m in _overlay.mounts(self)
                  if m.mountpoint is not None and os.path.ismount(m.mountpoint)]
        return sorted(active, key=lambda m: m.created, reverse=True)

    def config(self, ref: str) -> dict:
        with self._index.read() as txn:
            return json.loads(self._index.metadata(txn, self._resolve(txn, ref).id))

    def manifest(self, ref: str) -> dict | None:
        with self._index.read() as txn:
            rec = self._resolve(txn, ref)
            if rec.manifest_digest is None:
                return None
            return json.loads(self._index.metadata(txn, rec.manifest_digest))

    def layers(self) -> list[Layer]:
        with self._index.read() as txn:
            return [_layer(r) for r in self._index.layers(txn)]

    def layer(self, diff_id: str) -> Layer:
        with self._index.read() as txn:
            rec = self._index.layer(txn, diff_id)
        if rec is None:
            raise LayerNotFound(f"no such layer: {diff_id}")
        return _layer(rec)

    def layer_entries(self, diff_id: str) -> list[Entry]:
        """The entries of one layer, in archive order (whiteouts included)."""
        with self._index.read() as txn:
            if self._index.layer(txn, diff_id) is None:
                raise LayerNotFound(f"no such layer: {diff_id}")
            records = self._index.layer_data(txn, diff_id, "records")
        return [r.entry for r in _native.decode_records(records)]

    def _tree(self, ref: str) -> tuple[Image, Tree]:
        with self._index.read() as txn:
            rec = self._resolve(txn, ref)
            image = _image(rec, self._platform(txn, rec))
            blobs = [self._index.layer_data(txn, d, "records") for d in rec.diff_ids]
        return image, build([r.entry for r in _native.decode_records(b)] for b in blobs)

    def image_entries(self, ref: str) -> Iterator[Entry]:
        """The image's merged filesystem (layers applied), parents before children."""
        return self._tree(ref)[1].entries()

    def object_path(self, object_id: str) -> str:
        return os.path.join(self.root, "objects", _native.object_path(object_id))

    def checkout(self, ref: str, dest: str | os.PathLike, *, link: bool = False,
                 copy: bool = False, progress=None) -> CheckoutResult:
        """Makes dest (absent or empty) the image's root filesystem, dest itself with the
        image's "/" mode, owner and mtime.  Its files are safe to write: reflinks of the
        stored objects where the filesystem has them (xfs, btrfs), else copies, with their
        recorded mtimes.  copy=True: copies that share no blocks with the store even where
        reflinks exist.  link=True: hardlinks into the store, for read-only use (build roots,
        scanners), since a write through one changes every image that holds the file (mount()
        gives writable containers that share the layers).  link and copy together are a
        ValueError.  progress(Progress) is called as it goes (bytes: file content, items:
        entries).  A failed or interrupted checkout removes what it made, leaving dest absent
        or empty as it was.  Locking: a snapshot of the index; objects of a snapshot are never
        deleted while it is read (gc holds the store lock exclusively)."""
        from .store.checkout import checkout, plan
        with self._locked(exclusive=False):
            with self._index.read() as txn:
                image_id = self._resolve(txn, ref).id
                tree = self._index.image_tree(txn, image_id)
            if tree is None:    # not kept (older index): made on demand
                tree = plan(self._tree(image_id)[1])
            return checkout(tree, os.fspath(dest), os.path.join(self.root, "objects"),
                            link=link, copy=copy, progress=progress)

    def inspect(self, ref: str) -> dict:
        """Everything known of an image, as `layerstore inspect` prints it."""
        image = self.image(ref)
        layers = [self.layer(d) for d in image.diff_ids]
        return {
            "Id": image.id, "RepoTags": list(image.tags), "Created": image.created,
            "Platform": image.platform, "Size": image.size, "SourceFormat": image.source_format,
            "Config": self.config(image.id), "Manifest": self.manifest(image.id),
            "Layers": [{"DiffID": l.diff_id, "Entries": l.entries, "Files": l.files,
                        "Bytes": l.file_bytes, "TarBytes": l.stream_bytes,
                        "NewBytes": l.new_bytes, "DedupBytes": l.file_bytes - l.new_bytes,
                        "NewObjects": l.new_objects, "BlobDigests": list(l.blob_digests)}
                       for l in layers],
        }

    # ---- containers on overlayfs (logic in _overlay.py) -------------------------------------

    def mount(self, ref: str, mountpoint: str | os.PathLike,
              upper: str | os.PathLike | None = None):
        """Mounts the image at mountpoint as overlayfs: the layers are shared read-only lower
        dirs (built once under root/layers/), the container writes to its own upper dir
        (under root/containers/<id>/, or upper).  Needs root, or fuse-overlayfs without it.
        Returns the _overlay.Mount record.  Locking: the store lock shared while building."""
        from .runtimes import overlay as _overlay
        return _overlay.mount(self, ref, mountpoint, upper)

    def umount(self, mountpoint: str | os.PathLike):
        """Unmounts a container; its upper dir goes too unless the user gave it to mount."""
        from .runtimes import overlay as _overlay
        return _overlay.umount(self, mountpoint)

    def commit(self, mountpoint_or_upper: str | os.PathLike, tags=()) -> Image:
        """A new image: the container's image plus its upper dir as one more layer (overlay
        whiteouts and opaque dirs become .wh. entries), with a history entry, tagged."""
        from .runtimes import overlay as _overlay
        return _overlay.commit(self, mountpoint_or_upper, tags)

    # ---- export (logic in _export.py) -------------------------------------------------------

    def save(self, refs, out, format: str = "docker", compress: str = "none",
             progress: Callable[[Progress], None] | None = None) -> None:
        """Writes images to out (a path, replaced atomically, or a binary file object): a
        docker-archive (format="docker", what `docker load` reads) or an OCI image layout tar
        ("oci"), optionally gzip- or zstd-compressed as a whole.  Layer tars are byte-identical
        to the imported ones, checked against their diffIDs while written (DigestMismatch
        otherwise); configs are written back unchanged, so image ids are too.  An image named
        by a tag is saved with that tag, one named by id with all its tags.  For "oci" the
        layers are stored uncompressed, so a manifest naming compressed blobs is replaced by a
        new one over the same config.  progress: bytes and entries of the layer tars
        written, of their totals.  A path that cannot be written is a HostPathError naming it.
        Locking: the store lock shared (gc waits)."""
        from .formats.export import save
        if isinstance(refs, str):
            refs = [refs]
        images: dict = {}
        # The lock first: a snapshot read before it could name objects an rm + gc then frees.
        with self._locked(exclusive=False):
            with self._index.read() as txn:
                self._save_images(txn, refs, images)
            save(self, list(images.values()), out, format, compress, progress)

    def _save_images(self, txn, refs, images: dict) -> None:
        """Resolves refs into images[id] = _SaveImage, merging the tags of one image."""
        from .formats.export import _SaveImage
        for ref in refs:
            rec = self._resolve(txn, ref)
            try:
                by_tag = not DIGEST_RE.match(ref) and normalize_tag(ref) in rec.tags
            except errors.InvalidReference:
                by_tag = False
            tags = [normalize_tag(ref)] if by_tag else list(rec.tags)
            if rec.id in images:
                images[rec.id].tags += [t for t in tags if t not in images[rec.id].tags]
                continue
            manifest = (self._index.metadata(txn, rec.manifest_digest)
                        if rec.manifest_digest else None)
            images[rec.id] = _SaveImage(rec.id, tags, list(rec.diff_ids),
                                        bytes(self._index.metadata(txn, rec.id)), manifest,
                                        rec.manifest_media_type)

    def export(self, ref: str, out,
               progress: Callable[[Progress], None] | None = None) -> None:
        """Writes the image's flattened root filesystem (layers merged) as one tar to out (a
        path, replaced atomically, or a binary file object): owners, modes, mtimes, xattrs,
        devices, symlinks and hardlinks, content from the objects.  progress: content bytes
        of the files and entries written, of their totals.  A path that cannot be written is
        a HostPathError naming it.  Locking: the store lock shared (gc waits)."""
        from .formats.export import export
        with self._locked(exclusive=False):
            _, tree = self._tree(ref)
            export(self, tree, out, progress)

    # ---- reading without checkout (logic in _read.py) --------------------------------------

    def _read_tree(self, ref: str) -> Tree:
        """The image's tree, the last one kept: reading many files of one image must not
        rebuild its tree per file.  Keyed by image id, which names immutable content."""
        with self._index.read() as txn:
            image_id = self._resolve(txn, ref).id
        cached = getattr(self, "_last_tree", None)
        if cached is not None and cached[0] == image_id:
            return cached[1]
        tree = self._tree(image_id)[1]
        self._last_tree = (image_id, tree)
        return tree

    def walk(self, ref: str, path: str = ".") -> Iterator[Entry]:
        """The merged view under path (itself first), parents before children, names sorted;
        a hardlink shows the entry it shares an inode with, under its own path."""
        return _read.walk(self._read_tree(ref), path)

    def stat(self, ref: str, path: str, follow: bool = False) -> Entry:
        """The entry at path.  Symlinks in its parents are followed inside the image root,
        never out of it; the last component only with follow.  PathNotFound if absent."""
        return _read.stat(self._read_tree(ref), path, follow)

    def listdir(self, ref: str, path: str = ".", follow: bool = True) -> tuple[Entry, list[Entry]]:
        """What `ls` shows: the entry at path and, for a directory, its children by name."""
        return _read.listing(self._read_tree(ref), path, follow)

    def _open_file(self, ref: str, path: str):
        """A read-only binary file object over a regular file of the image (symlinks
        followed inside the image root, at most 40).  Locking: the store lock is held shared
        until the object is open, so gc cannot remove it in between; the open file then
        outlives any later gc."""
        with self._locked(exclusive=False):
            return _read.open_file(self._read_tree(ref), path, self.object_path)

    # Store.open(root) (the constructor above) stays what it was on the class; on a store,
    # open(image, path) reads a file.
    open = _read.ClassOrInstance(open, _open_file)

    def diff(self, a: str, b: str) -> dict[str, list[str]]:
        """{"added", "removed", "changed"}: absolute paths, sorted, from image a to image b.
        Changed: type, mode, owner, size, content, link target, xattrs or device differ."""
        return _read.diff(self._tree(a)[1], self._tree(b)[1])

    # ---- integrity (logic in _fsck.py) ------------------------------------------------------

    def fsck(self, repair: bool = False,
             progress: Callable[[Progress], None] | None = None) -> list[Problem]:
        """Checks every object the layers hold (bytes and metadata against its name, in C on
        every core), the index against itself (dangling rows, reference counts) and objects/ and
        tmp/ for stray files; returns every problem found, [] for a whole store.

        With repair, fixes what it can (Problem.fixed): counts recomputed, dangling rows and
        stray files removed, object metadata restored.  An object whose bytes are wrong or
        gone is re-made from another object with the same content (other metadata) whose
        bytes are whole; without one, it is deleted and the layers holding it are marked, so
        that re-importing any image listed in Problem.images (from its original archive)
        re-creates it.

        xattrs: only those of the namespaces applied to files (user.*; as root also trusted.*
        and security.capability) are compared; the others, such as security.selinux, live in
        the records only, and a label the host gives the objects is not damage.

        Files that interrupted work left (a killed import or gc) are Problem.garbage: the
        store is whole with them, and gc removes them.

        progress, when given, is called on this thread about ten times a second while the
        objects are read and hashed, which is nearly all of fsck's time: bytes and objects
        hashed, of the totals the index names.

        Locking: without repair, the store lock shared (gc waits; imports may run, and objects
        they have written but not yet committed show as garbage) and one LMDB read snapshot.
        With repair, the store lock exclusively and one LMDB write transaction, which both
        checks and fixes, so the fixes apply to exactly the state that was checked."""
        from .store import fsck as _fsck
        with self._locked(exclusive=repair):
            if not repair:
                with self._index.read() as txn:
                    return _fsck.run(self, txn, False, progress)
            with self._index.write() as txn:
                return _fsck.run(self, txn, True, progress)

    # ---- lifecycle: rm, gc, du (logic in _lifecycle.py) -------------------------------------

    def remove(self, refs, force: bool = False) -> list[tuple[str, str]]:
        """Removes images as `docker rmi` does: a tag is untagged, and its image deleted once
        no tag is left; an image named by id is deleted with all its tags, which needs force
        when it has more than one.  An image a mounted container uses is never deleted.
        Returns [("untagged", tag) | ("deleted", image id)] in order.  All refs or none:
        an unknown one (ImageNotFound) or a refusal changes nothing.  Deletes no file: the
        layers and objects an image held stay until gc.
        Locking: one index write transaction, no store lock (imports and checkouts go on;
        one that already read the image finishes with it, as gc waits for it)."""
        from .store import lifecycle as _lifecycle
        return _lifecycle.remove(self, refs, force)

    def gc(self, dry_run: bool = False, full: bool = False,
           progress: Callable[[Progress], None] | None = None):
        """Frees what nothing references: layers no image names, objects no layer holds
        (index rows and files), object files the index does not know (left by an interrupted
        import), stale tmp/ entries, cached overlay layer dirs that no stored layer and no
        container needs.  objects/ is walked for unknown files only when root/pending/ or
        tmp/ shows an interrupted import or gc, or with full=True.  dry_run reports and changes nothing.
        Returns a GcResult.  progress, when given, is called as files are removed: bytes and
        files removed so far, of the result's bytes and files (layer dirs are not counted).
        Locking: the store lock exclusively (waits for imports, checkouts and other readers of
        object files to finish, and they wait for it), plus one index write transaction."""
        from .store import lifecycle as _lifecycle
        return _lifecycle.gc(self, dry_run, full, progress)

    def du(self):
        """Disk use per image and for the store (a DuResult): logical bytes, bytes on disk of
        object files with each inode counted once, bytes shared with other images, dedup ratio.
        Locking: the store lock shared (gc waits; imports may run) and an index snapshot."""
        from .store import lifecycle as _lifecycle
        return _lifecycle.du(self)


def _index_write_error(exc: Exception, root: str) -> errors.StoreIOError:
    """A failed index commit as a StoreIOError.  LMDB reports a write cut short by a full disk
    as EIO, so a nearly full filesystem is taken for what it is."""
    err = errno.EIO
    try:
        st = os.statvfs(root)
        if st.f_bavail * st.f_frsize < (1 << 20) or "No space" in str(exc):
            err = errno.ENOSPC
    except OSError:
        pass
    return errors.StoreIOError(err, f"cannot commit to the index: {os.strerror(err)} ({exc})")


def _text(value) -> str:
    """A config field shown as text: absent is empty."""
    return value if isinstance(value, str) else "" if value is None else str(value)


def _in_layer(exc: errors.LayerstoreError, key) -> errors.LayerstoreError:
    """exc, its message naming the layer; an OSError keeps its errno (ENOSPC must stay one)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return type(exc)(exc.errno, f"layer {key}: {exc.strerror}")
    return type(exc)(f"layer {key}: {exc}")


class _Bytes:
    """A reader over bytes held in memory."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        out = self.data[self.pos:end]
        self.pos += len(out)
        return out


class _LayerSource:
    """One layer stream (import_layer), through the same pipeline as archives."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.bytes_read = 0
        self.size = None

    def produce(self, emit) -> None:
        emit_layer(emit, "layer", self.stream)
