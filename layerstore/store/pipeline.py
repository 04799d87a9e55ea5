"""The import pipeline: source -> decompress -> C ingest -> verify -> one index commit.

  1. the source (formats/source.py: Source) says which images it holds (plans) and hands over
     the layer blobs the store lacks, or, for a stream read once, every layer as it passes;
  2. reader threads sniff each blob, decompress it and hash its compressed bytes (zstandard,
     isal, zlib and hashlib release the GIL), handing 1 MiB chunks to this thread through a
     bounded queue: memory stays bounded whatever the archive holds, and a decompression bomb
     costs time, not memory (a partial pull's rebuilt layer comes as recipes instead: tar
     bytes and the ids of objects the store holds, which the C ingest reads itself);
  3. this thread feeds each layer's chunks to a C ingest of its own (_native.LayerIngest),
     which parses the tar, writes the objects and hashes the diffID;
  4. every digest is verified against the plans (diffIDs, blob digests and sizes), and each
     image's layers are merged (store/tree.py), which checks its hardlinks; the merged tree is
     kept as the image's checkout plan (store/checkout.py: plan);
  5. the objects are made durable (syncfs), and one LMDB write transaction commits every
     layer and image of the import, or nothing.

Layers may reach step 3 interleaved, from several reader threads (a source says how many it
allows): events name their layer, and each layer has its own ingest until it ends.

The caller (the Store facade) holds the store lock shared for the length of an import and
gives it a Job: the import's marker in pending/ and the ids of the objects it writes, which
a failed import removes (Job.discard).
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator

import lmdb
import zstandard

from .. import _native, errors
from .._model import Image, Layer, Progress
from ..errors import DigestMismatch, LayerNotFound, MissingBlob
from ..formats.archive import LayerStream
from ..formats.manifests import ImagePlan, LayerRef, parse_config, sha256_digest
from ..formats.reference import new_tag
from ..formats.source import Blob, Counting, Prefixed, Source, decompressed, sniff
from . import checkout, lifecycle
from .context import Context, image_of, layer_of
from .index import ImageRecord, LayerRecord, commit_error
from .tree import Tree, build

CHUNK = 1 << 20


class Job:
    """One import's bookkeeping: a marker in pending/ while it runs (see store/lifecycle.py),
    and the ids of the objects it writes, so that a failed import can remove those that no
    image came to reference."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.marker: str | None = None
        self.written: list[bytes] = []

    def start(self) -> None:
        """With the store lock held, before any object is written."""
        self.marker = lifecycle.import_started(self.ctx.root)

    def finish(self) -> None:
        """After the commit: whatever was written is referenced."""
        lifecycle.import_finished(self.marker)

    def discard(self) -> None:
        """After a failed import, with the store lock held exclusively (so no other import can
        be about to reference one of them): removes the objects it wrote that the index does
        not know, then its marker."""
        index = self.ctx.index
        with index.read() as txn:
            for oid in self.written:
                if index.object(txn, oid) is None:
                    try:
                        os.unlink(self.ctx.object_path(oid.hex()))
                    except FileNotFoundError:
                        pass
        lifecycle.import_finished(self.marker)


@dataclass(frozen=True)
class BlobInfo:
    """A layer blob as it was read: its compression, and for compressed blobs the digest and
    size of the compressed bytes (for an uncompressed blob they are the diffID and the tar
    length, which the ingest computes)."""

    compression: str            # "gzip", "zstd" or "tar"
    digest: str | None
    size: int


@dataclass(frozen=True)
class Ingested:
    """One layer through the C ingest: what it made, and the blob it was read from."""

    result: _native.IngestResult
    blob: BlobInfo


# ---- the imports ------------------------------------------------------------------------------

def import_archive(ctx: Context, job: Job, src: Source, platform: str | None,
                   all_platforms: bool, tags: list[str],
                   progress: Callable[[Progress], None] | None,
                   record: Callable | None = None) -> list[Image]:
    """Imports the images src holds (see Store.import_archive); tags are added to the one
    image it must then hold.  record(index, txn, plans), when given, writes what the source
    adds to the index (a pull: repo digests, blob locations) in the commit's transaction."""
    ingest = _Ingest(ctx, job, src, progress)
    plans = src.plans(platform, all_platforms)
    if plans is not None:
        # Metadata first: only the layers the store lacks are read.
        _check_tags(plans, tags)
        known = _known_layers(ctx, plans)
        ingest.read(src.blobs([m for m in _members(plans) if m not in known]))
    else:
        # Read once, in order: every layer as it passes, then the images the metadata names,
        # then the layers the stream kept as metadata (tiny or empty blobs).
        ingest.read(src.blobs(None))
        plans = src.plans(platform, all_platforms)
        _check_tags(plans, tags)
        known = {}
        kept = [m for m in _members(plans) if m not in ingest.done]
        if kept:
            ingest.read(src.blobs(kept))
    ingested = {**known, **ingest.done}
    trees = _verify(ctx, plans, ingested)
    try:
        return _commit(ctx, plans, ingested, tags, trees, record)
    except lmdb.Error as exc:
        raise commit_error(exc, ctx.root) from None


def import_layer(ctx: Context, job: Job, stream: BinaryIO) -> Layer:
    """Ingests one layer stream and indexes it under its diffID (see Store.import_layer)."""
    src = LayerStream(stream)
    ingest = _Ingest(ctx, job, src, None)
    ingest.read(src.blobs(None))
    got = ingest.done[LayerStream.KEY]
    ctx.objects.sync()
    r = got.result
    with ctx.index.write() as txn:
        ctx.index.add_layer(txn, _layer_record(got, None), r.records, r.raw,
                            _native.record_objects(r.records))
        return layer_of(ctx.index.layer(txn, r.stats.diff_id))


def add_image(ctx: Context, config: bytes, tags=(), manifest: bytes | None = None,
              manifest_media_type: str | None = None) -> Image:
    """An image over stored layers (see Store.add_image)."""
    digest, parsed = parse_config(config, "config", None)
    user_tags = [new_tag(t) for t in tags]
    diff_ids = parsed["rootfs"]["diff_ids"]
    with ctx.index.read() as txn:
        for d in diff_ids:
            if ctx.index.layer(txn, d) is None:
                raise LayerNotFound(f"layer {d} is not in the store")
    plan = ImagePlan(config, digest, [LayerRef(d, d) for d in diff_ids], [], manifest,
                     sha256_digest(manifest) if manifest is not None else None,
                     manifest_media_type, "api")
    known: dict[str, Ingested | None] = {ref.member: None for ref in plan.layers}
    return _commit(ctx, [plan], known, user_tags, _verify(ctx, [plan], known))[0]


def _members(plans: list[ImagePlan]) -> list[str]:
    """The layer blobs the plans name, each once, in order."""
    return list(dict.fromkeys(ref.member for plan in plans for ref in plan.layers))


def _check_tags(plans: list[ImagePlan], tags: list[str]) -> None:
    if tags and len(plans) != 1:
        raise errors.LayerstoreError(f"--tag needs an archive with exactly one image; this "
                                     f"one has {len(plans)}")


def _known_layers(ctx: Context, plans: list[ImagePlan]) -> dict[str, None]:
    """The members whose layers the store holds already (by diffID, or by the blob digest of
    an earlier import), each None: their bytes need not be read."""
    index = ctx.index
    known: dict[str, None] = {}
    with index.read() as txn:
        for plan in plans:
            for ref in plan.layers:
                if index.layer(txn, ref.diff_id) is not None:
                    # fsck --repair marks a layer whose objects it found damaged: ingesting
                    # it again is what re-creates them.
                    stored = not index.needs_reimport(txn, ref.diff_id)
                else:
                    stored = ref.digest is not None and \
                        index.blob_layer(txn, ref.digest) == ref.diff_id
                if stored:
                    known[ref.member] = None
    return known


# ---- 2. decompression: the reader threads ----------------------------------------------------

@dataclass(frozen=True, slots=True)
class LayerStarted:
    key: str


@dataclass(frozen=True, slots=True)
class LayerChunk:
    """The layer's next bytes: of its tar, or a recipe of them (a rebuilt layer's)."""
    key: str
    data: bytes
    recipe: bool = False


@dataclass(frozen=True, slots=True)
class LayerRead:
    key: str
    blob: BlobInfo


@dataclass(frozen=True, slots=True)
class _Failed:
    exc: BaseException


_DONE = object()       # one reader thread has no blob left


class _Stopped(Exception):
    pass


def _read_blob(blob: Blob, emit: Callable[[object], None]) -> None:
    """One layer blob as events: sniffed, decompressed, its compressed bytes hashed; or a
    rebuilt layer's recipes."""
    if blob.stands_for is not None:
        emit(LayerStarted(blob.key))
        for recipe in blob.reader.recipes():
            emit(LayerChunk(blob.key, recipe, recipe=True))
        emit(LayerRead(blob.key, BlobInfo(*blob.stands_for)))
        return
    head = blob.head
    if len(head) < 512:
        head += blob.reader.read(512 - len(head))
    kind = sniff(head)
    compression = kind if kind in ("gzip", "zstd") else "tar"
    counted = Counting(Prefixed(head, blob.reader),
                       hash_it=compression != "tar" and blob.digest is None)
    reader = decompressed(counted, compression)
    emit(LayerStarted(blob.key))
    try:
        while True:
            data = reader.read(CHUNK)
            if not data:
                break
            emit(LayerChunk(blob.key, data))
    except (OSError, EOFError, zstandard.ZstdError) as exc:
        if isinstance(exc, errors.LayerstoreError):
            raise
        raise errors.CorruptArchive(f"layer {blob.key}: cannot decompress its {compression} "
                                    f"stream: {exc}") from None
    digest = "sha256:" + counted.sha.hexdigest() if counted.sha is not None else None
    if blob.digest is not None:
        # Verified by the source's reader once read to its end (past any bytes after the
        # compressed stream, which the size check then counts).
        while counted.read(CHUNK):
            pass
        digest = blob.digest if compression != "tar" else None
    emit(LayerRead(blob.key, BlobInfo(compression, digest, counted.count)))


class _Readers:
    """Reads blobs on threads of their own; iterating yields their events, each layer's in
    order.  An exception in a reader is raised in the consumer; closing (or an exception in
    the consumer) stops the readers."""

    def __init__(self, blobs: Iterator[Blob], threads: int, depth: int = 8) -> None:
        self._blobs = blobs
        self._next = threading.Lock()
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True,
                                          name="layerstore-reader") for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _emit(self, event) -> None:
        while True:
            if self._stop.is_set():
                raise _Stopped()
            try:
                self._q.put(event, timeout=0.1)
                return
            except queue.Full:
                continue

    def _take(self) -> Blob | None:
        with self._next:
            return next(self._blobs, None)

    def _run(self) -> None:
        try:
            while (blob := self._take()) is not None:
                _read_blob(blob, self._emit)
            self._emit(_DONE)
        except _Stopped:
            pass
        except BaseException as exc:   # noqa: BLE001 - handed to the consumer
            try:
                self._emit(_Failed(exc))
            except _Stopped:
                pass

    def __iter__(self):
        running = len(self._threads)
        while running:
            event = self._q.get()
            if event is _DONE:
                running -= 1
            elif type(event) is _Failed:
                raise event.exc
            else:
                yield event

    def close(self) -> None:
        self._stop.set()
        while any(t.is_alive() for t in self._threads):
            try:
                self._q.get(timeout=0.05)
            except queue.Empty:
                pass
        for t in self._threads:
            t.join()
        close = getattr(self._blobs, "close", None)
        if close is not None:
            close()


# ---- 3. the C ingest ---------------------------------------------------------------------------

class _Ingest:
    """Feeds each layer's chunks to a C ingest of its own, on this thread; done collects what
    each finished layer made, by key.  The ids of the objects written go into the job, also
    those of a layer that failed."""

    def __init__(self, ctx: Context, job: Job, src: Source,
                 progress: Callable[[Progress], None] | None) -> None:
        self.ctx, self.job, self.src, self.progress = ctx, job, src, progress
        self.done: dict[str, Ingested] = {}
        self.files = 0

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(Progress(self.src.bytes_read(), self.src.size, self.files))

    def read(self, blobs: Iterator[Blob]) -> None:
        readers = _Readers(blobs, self.src.readers)
        ingests: dict[str, _native.LayerIngest] = {}
        try:
            for event in readers:
                match event:
                    case LayerChunk(key, data, recipe):
                        ingest = ingests[key]
                        try:
                            (ingest.feed_recipe if recipe else ingest.feed)(data)
                        except errors.LayerstoreError as exc:
                            raise _in_layer(exc, key) from None
                        self._report()
                    case LayerStarted(key):
                        ingests[key] = _native.LayerIngest(self.ctx.objects)
                    case LayerRead(key, blob):
                        try:
                            result = ingests[key].finish()
                        except errors.LayerstoreError as exc:
                            raise _in_layer(exc, key) from None
                        self.job.written += _native.new_objects(result.records)
                        ingests.pop(key).close()
                        self.ctx.objects.start_writeback()
                        self.done[key] = Ingested(result, blob)
                        self.files += result.stats.files
            self._report()
        finally:
            readers.close()
            for ingest in ingests.values():
                self.job.written += _native.new_objects(ingest.records_so_far())
                ingest.close()


def _in_layer(exc: errors.LayerstoreError, key) -> errors.LayerstoreError:
    """exc, its message naming the layer; an OSError keeps its errno (ENOSPC must stay one)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return type(exc)(exc.errno, f"layer {key}: {exc.strerror}")
    return type(exc)(f"layer {key}: {exc}")


# ---- 4. verify --------------------------------------------------------------------------------

def _verify(ctx: Context, plans: list[ImagePlan],
            ingested: dict[str, Ingested | None]) -> dict[str, Tree]:
    """Checks every layer the plans name against what was read (None: a layer the store
    holds already); returns each image's merged tree, by image id."""
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
        trees[plan.id] = build(_layer_entries(ctx, plan, ingested))
    return trees


def _layer_entries(ctx: Context, plan: ImagePlan, ingested: dict):
    for ref in plan.layers:
        got = ingested[ref.member]
        yield got.result.entries() if got is not None else ctx.layer_entries(ref.diff_id)


# ---- 5. the index commit ----------------------------------------------------------------------

def _layer_record(got: Ingested, ref: LayerRef | None) -> LayerRecord:
    """The index record of an ingested layer; it keeps the blob it came from when that blob
    was compressed or the manifest named it."""
    s = got.result.stats
    blobs = []
    if got.blob.compression != "tar" or (ref is not None and ref.digest is not None):
        blobs.append({"digest": got.blob.digest or s.diff_id,
                      "media_type": ref.media_type if ref is not None else None,
                      "size": got.blob.size, "compression": got.blob.compression})
    return LayerRecord(s.diff_id, s.stream_bytes, s.entries, s.files, s.file_bytes,
                       s.new_objects, s.new_bytes, blobs)


def _commit(ctx: Context, plans: list[ImagePlan], ingested: dict, user_tags: list[str],
            trees: dict[str, Tree], record: Callable | None = None) -> list[Image]:
    """Makes the objects durable, then adds every layer and image in one index transaction.
    An image new to the index gets its merged tree as its checkout plan."""
    index = ctx.index
    with index.read() as txn:
        new = [image_id for image_id in trees if index.image_tree(txn, image_id) is None]
    checkout_plans = {image_id: checkout.plan(trees[image_id]) for image_id in new}
    ctx.objects.sync()    # objects durable before the index references them
    _native.test_step()
    images = []
    with index.write() as txn:
        _native.test_step()
        for plan in plans:
            for ref in plan.layers:
                got = ingested.get(ref.member)
                if got is None:
                    continue
                r = got.result
                index.add_layer(txn, _layer_record(got, ref), r.records, r.raw,
                                _native.record_objects(r.records))
        for plan in plans:
            index.put_metadata(txn, plan.config_digest, plan.config)
            if plan.manifest is not None:
                index.put_metadata(txn, plan.manifest_digest, plan.manifest)
            size = 0
            for ref in plan.layers:
                layer = index.layer(txn, ref.diff_id)
                size += layer.file_bytes if layer else 0
            config = json.loads(plan.config)
            rec = ImageRecord(plan.config_digest, [r.diff_id for r in plan.layers], [],
                              plan.manifest_digest, plan.manifest_media_type,
                              plan.source_format, config.get("created"), size, time.time())
            if index.image_tree(txn, plan.id) is None:
                index.put_image_tree(txn, plan.id, checkout_plans.get(plan.id) or
                                     checkout.plan(trees[plan.id]))
            stored = index.add_image(txn, rec, plan.tags + user_tags)
            images.append(image_of(stored, plan.platform))
        if record is not None:
            record(index, txn, plans)
        _native.test_step()
    _native.test_step()
    return images
