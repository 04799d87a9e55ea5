"""Images leaving the store: `save` (docker-archive or OCI layout tar, the layer tars byte for
byte as imported) and `export` (the flattened root filesystem as one tar).

A layer tar is rebuilt from what ingest kept (csrc/ingest.c): the raw stream (every byte that is
not file content) interleaved with file content read from the objects.  Record k's raw_len
counts the raw bytes between the previous record's content and record k's content: the previous
entry's padding, then record k's extended headers, header, GNU sparse blocks and PAX 1.0 map.
A sparse entry's object holds the logical (expanded) content; the tar holds only its data
segments, so the map is parsed back from those raw bytes.

Speed.  The layer bytes are checked against the diffID while they are written, so save is a
copy plus a SHA-256; SHA-256 cannot be split within a layer, so each layer is hashed on its
own thread and the hash of one layer overlaps the writing of the next.  Into a regular file,
large objects go by copy_file_range (the bytes never enter this process) and the hash thread
reads them from the page cache; small ones and the raw bytes are gathered into 1 MiB chunks
that are written and then handed to the hash thread, without a copy.
"""

from __future__ import annotations

import errno
import io
import json
import mmap
import os
import queue
import stat
import tarfile
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Callable

import zstandard

from .. import _native, errors
from .._model import Entry, EntryType, Progress
from .compression import COMPRESSIONS, Compressor
from ..store.context import Context
from ..store.tree import Tree
from .reference import DIGEST_RE, normalize_tag

CHUNK = 1 << 20
BIG = 256 << 10                 # objects at least this large are copied in the kernel
HASH_QUEUE = 64                 # chunks or object fds waiting for a layer's hash thread
HASH_THREADS = 3                # layers hashed at once, at most

_FILE = _native.FILE
_SPARSE = _native.SPARSE

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
FORMATS = ("docker", "oci")


def _pad(n: int) -> int:
    return -n % 512


# ---- output ---------------------------------------------------------------------------------


class _Hasher:
    """The SHA-256 of one layer, computed on a thread from chunks and object ranges queued in
    stream order."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._sha = _native.Sha256()
        self._queue: queue.Queue = queue.Queue(HASH_QUEUE)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="layerstore-save-hash",
                                        daemon=True)
        self._thread.start()

    def chunk(self, data) -> None:
        self._queue.put(data)

    def object(self, fd: int, offset: int, length: int, close: bool) -> None:
        self._queue.put((fd, offset, length, close))

    def _run(self) -> None:
        update = self._sha.update
        while True:
            item = self._queue.get()
            if item is None:
                return
            if type(item) is not tuple:
                if self._error is None:
                    update(item)
                continue
            fd, offset, length, close = item
            try:
                if self._error is None and length:
                    self._hash_range(fd, offset, length)
            except BaseException as exc:     # noqa: BLE001 - reported by finish()
                self._error = exc
            finally:
                if close:
                    os.close(fd)

    def _hash_range(self, fd: int, offset: int, length: int) -> None:
        # The object was just copied, so its pages are cached: hash them in place.
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        with mmap.mmap(fd, offset + length - start, prot=mmap.PROT_READ,
                       offset=start) as m:
            with memoryview(m) as view:
                self._sha.update(view[offset - start:])

    def finish(self) -> str:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            if isinstance(self._error, (ValueError, OSError)):
                raise errors.StoreIOError(getattr(self._error, "errno", None) or errno.EIO,
                                          f"{self.what}: cannot read an object: {self._error}")
            raise self._error
        return "sha256:" + self._sha.digest().hex()

    def abandon(self) -> None:
        self._error = self._error or errors.LayerstoreError("abandoned")
        self._queue.put(None)
        self._thread.join()


class _Out:
    """The archive being written: a file descriptor of a regular file (kernel copies), or a
    binary stream (a compressor, a pipe).  Small writes are gathered into CHUNK-sized pieces;
    while a layer is written, each piece also goes to the layer's hasher."""

    def __init__(self, fd: int | None = None, stream: BinaryIO | None = None) -> None:
        self.fd, self.stream = fd, stream
        self.buf = bytearray()
        self.hasher: _Hasher | None = None
        self.written = 0
        self._kernel_copy = fd is not None

    def write(self, data) -> None:
        self.buf += data
        if len(self.buf) >= CHUNK:
            self.flush()

    def flush(self) -> None:
        if not self.buf:
            return
        chunk, self.buf = self.buf, bytearray()
        self._emit(chunk)
        if self.hasher is not None:
            self.hasher.chunk(chunk)

    def _emit(self, data) -> None:
        self.written += len(data)
        if self.fd is None:
            self.stream.write(data)
            return
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]

    def content(self, fd: int, offset: int, length: int, what: str, last: bool) -> None:
        """Object bytes [offset, offset+length) of fd; closes fd when last."""
        if length >= BIG and self._kernel_copy:
            self.flush()
            try:
                self._copy(fd, offset, length, what)
            except BaseException:
                if last:
                    os.close(fd)
                raise
            if self.hasher is not None:
                self.hasher.object(fd, offset, length, last)
            elif last:
                os.close(fd)
            return
        try:
            while length:
                data = os.pread(fd, min(length, CHUNK), offset)
                if not data:
                    raise _short(what)
                self.write(data)
                offset += len(data)
                length -= len(data)
        finally:
            if last:
                os.close(fd)

    def _copy(self, fd: int, offset: int, length: int, what: str) -> None:
        done = 0
        while done < length:
            try:
                n = os.copy_file_range(fd, self.fd, length - done, offset + done)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP,
                                     errno.EBADF, errno.EPERM):
                    raise
                n = None
            if n is None:
                n = os.sendfile(self.fd, fd, offset + done, length - done)
            if n == 0:
                raise _short(what)
            done += n
        self.written += length

    def member(self, name: str, size: int) -> None:
        """The header of a regular file in the archive itself."""
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode, ti.mtime = size, 0o644, 0
        self.write(ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def blob(self, name: str, data: bytes) -> None:
        self.member(name, len(data))
        self.write(data)
        self.write(bytes(_pad(len(data))))

    def end(self) -> None:
        self.write(bytes(1024))
        self.flush()


def _short(what: str) -> errors.DigestMismatch:
    return errors.DigestMismatch(f"{what} is shorter than the store's index says: the store is "
                                 "corrupt (run layerstore fsck)")


class _Meter:
    """What a save or export has written, handed to the caller's progress callback at most
    once an interval, and once more at the end with the totals reached."""

    interval = 0.1      # seconds

    def __init__(self, progress: Callable[[Progress], None] | None, bytes_total: int,
                 items_total: int) -> None:
        self.progress = progress
        self.bytes_total, self.items_total = bytes_total, items_total
        self.bytes = self.items = 0
        self.last = 0.0

    def at(self, done_bytes: int, done_items: int) -> None:
        self.bytes, self.items = done_bytes, done_items
        if self.progress is not None and time.monotonic() - self.last >= self.interval:
            self.last = time.monotonic()
            self.report()

    def report(self) -> None:
        if self.progress is not None:
            self.progress(Progress(self.bytes, self.bytes_total, self.items, self.items_total))


# ---- layers -----------------------------------------------------------------------------------


class _Raw:
    """A layer's raw tar metadata, decompressed as it is consumed."""

    def __init__(self, compressed: bytes) -> None:
        self._reader = zstandard.ZstdDecompressor().stream_reader(compressed)

    def read(self, n: int) -> bytes:
        data = self._reader.read(n)
        while len(data) < n:
            more = self._reader.read(n - len(data))
            if not more:
                raise errors.CorruptArchive("the index's raw tar metadata of a layer is short")
            data += more
        return data

    def rest(self):
        while True:
            data = self._reader.read(CHUNK)
            if not data:
                return
            yield data


def _number(field: bytes) -> int:
    """A tar numeric field: octal, or GNU base-256."""
    if field[0] & 0x80:
        value = int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
        return value - (1 << (8 * len(field) - 1)) if field[0] & 0x40 else value
    text = field.replace(b"\0", b" ").strip()
    return int(text, 8) if text else 0


def _pax_records(body: bytes):
    pos = 0
    while pos < len(body):
        space = body.find(b" ", pos)
        if space < 0 or not body[pos:space].isdigit():
            return      # NUL padding after the last record, as the reader tolerates
        end = pos + int(body[pos:space])
        key, _, value = body[space + 1:end - 1].partition(b"=")
        yield key, value
        pos = end


def sparse_map(chunk: bytes, lead: int) -> list[tuple[int, int]]:
    """The data segments [(offset, length)] of a sparse entry, from the raw bytes before its
    content (lead bytes of padding first), the way csrc/tar.c reads them."""
    pos = lead
    ext: list[bytes] = []
    while True:
        header = chunk[pos:pos + 512]
        if len(header) < 512:
            raise errors.CorruptArchive("no header for a sparse entry in the raw tar metadata")
        flag = header[156:157]
        pos += 512
        if flag not in (b"x", b"g", b"L", b"K"):
            break
        size = _number(header[124:136])
        if flag in (b"x", b"g"):
            # Global records apply before local ones; both only for this chunk's entry.
            ext.insert(0 if flag == b"g" else len(ext), chunk[pos:pos + size])
        pos += size + _pad(size)
    segments: list[tuple[int, int]] = []
    major = minor = -1
    offset = None
    for body in ext:
        for key, value in _pax_records(body):
            if key == b"GNU.sparse.major":
                major = int(value)
            elif key == b"GNU.sparse.minor":
                minor = int(value)
            elif key == b"GNU.sparse.offset":
                offset = int(value)
            elif key == b"GNU.sparse.numbytes":
                segments.append((offset, int(value)))
            elif key == b"GNU.sparse.map":
                numbers = [int(v) for v in value.split(b",")] if value else []
                segments = list(zip(numbers[0::2], numbers[1::2]))
    if flag == b"S":
        entries = [header[386 + 24 * i:410 + 24 * i] for i in range(4)]
        extended = header[482]
        while extended:
            block = chunk[pos:pos + 512]
            pos += 512
            entries += [block[24 * i:24 * i + 24] for i in range(21)]
            extended = block[504]
        for e in entries:
            if e[12] == 0:
                break
            segments.append((_number(e[:12]), _number(e[12:])))
    elif major == 1 and minor == 0:
        numbers = [int(v) for v in chunk[pos:].rstrip(b"\0").split(b"\n") if v]
        count = numbers[0]
        segments = list(zip(numbers[1:1 + 2 * count:2], numbers[2:2 + 2 * count:2]))
    return segments


def write_layer(out: _Out, records: bytes, raw: _Raw, objects_fd: int, what: str,
                tick: Callable[[int, int], None] | None = None) -> None:
    """Writes one layer tar: raw bytes and object content interleaved, as ingest split them.
    tick(bytes, entries) is called after each entry with the layer's bytes and entries so far."""
    stored = 0          # content bytes of the previous entry in the tar (for its padding)
    write, content = out.write, out.content
    start = out.written + len(out.buf)
    done = 0
    for typ, flags, _, _, _, size, raw_len, oid, _, _ in _native.scan_records(records):
        if tick is not None:
            tick(out.written + len(out.buf) - start, done)
            done += 1
        if raw_len:
            chunk = raw.read(raw_len)
            write(chunk)
        if typ != _FILE or not size:
            stored = 0
            continue
        hexid = oid.hex()
        name = f"{hexid[:2]}/{hexid[2:]}"
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=objects_fd)
        except FileNotFoundError:
            raise errors.MissingBlob(f"{what}: object {name} is missing from the store (run "
                                     "layerstore fsck)") from None
        if not flags & _SPARSE:
            content(fd, 0, size, f"{what}: object {name}", True)
            stored = size
            continue
        segments = sparse_map(chunk if raw_len else b"", _pad(stored))
        stored = 0
        if not segments:
            os.close(fd)
        for i, (off, length) in enumerate(segments):
            if off + length > size:
                os.close(fd)
                raise errors.CorruptArchive(f"{what}: the sparse map of object {name} runs "
                                            "past its size")
            content(fd, off, length, f"{what}: object {name}", i == len(segments) - 1)
            stored += length
    for data in raw.rest():
        write(data)
    if tick is not None:
        tick(out.written + len(out.buf) - start, done)


# ---- save -------------------------------------------------------------------------------------


@dataclass
class SaveImage:
    """An image to save, with the tags it is saved under."""

    id: str
    tags: list
    diff_ids: list
    config: bytes
    manifest: bytes | None
    manifest_media_type: str | None


def images_to_save(ctx: Context, txn, refs) -> list[SaveImage]:
    """The images refs name, each once: an image named by a tag is saved with that tag (the
    tags of several refs to one image merged), one named by id with all its tags."""
    images: dict[str, SaveImage] = {}
    for ref in refs:
        rec = ctx.resolve(txn, ref)
        try:
            by_tag = not DIGEST_RE.match(ref) and normalize_tag(ref) in rec.tags
        except errors.InvalidReference:
            by_tag = False
        tags = [normalize_tag(ref)] if by_tag else list(rec.tags)
        if rec.id in images:
            images[rec.id].tags += [t for t in tags if t not in images[rec.id].tags]
            continue
        manifest = (ctx.index.metadata(txn, rec.manifest_digest)
                    if rec.manifest_digest else None)
        images[rec.id] = SaveImage(rec.id, tags, list(rec.diff_ids),
                                   bytes(ctx.index.metadata(txn, rec.id)), manifest,
                                   rec.manifest_media_type)
    return list(images.values())


def oci_manifest(image: SaveImage, sizes: dict[str, int]) -> tuple[bytes, str]:
    """The manifest for the OCI layout: the stored one when it already names the layers as
    saved (uncompressed, digest = diffID), else a new one over the same config (so the image
    id is unchanged) whose layers are the uncompressed tars."""
    if image.manifest is not None:
        try:
            doc = json.loads(image.manifest)
            if ([l.get("digest") for l in doc.get("layers", [])] == image.diff_ids and
                    doc.get("config", {}).get("digest") == image.id):
                return image.manifest, image.manifest_media_type or OCI_MANIFEST
        except (ValueError, AttributeError):
            pass
        annotations = (json.loads(image.manifest) or {}).get("annotations")
    else:
        annotations = None
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
           "config": {"mediaType": OCI_CONFIG, "digest": image.id, "size": len(image.config)},
           "layers": [{"mediaType": OCI_LAYER, "digest": d, "size": sizes[d]}
                      for d in image.diff_ids]}
    if annotations:
        doc["annotations"] = annotations
    return json.dumps(doc, separators=(",", ":")).encode(), OCI_MANIFEST


def _platform(config: bytes) -> dict | None:
    try:
        c = json.loads(config)
    except ValueError:
        return None
    if not isinstance(c, dict) or "os" not in c or "architecture" not in c:
        return None
    p = {"architecture": c["architecture"], "os": c["os"]}
    if c.get("variant"):
        p["variant"] = c["variant"]
    return p


def save(ctx: Context, images: list[SaveImage], out, fmt: str, compress: str,
         progress: Callable[[Progress], None] | None = None) -> None:
    """Writes images (see images_to_save) to out: a path or a binary file object.
    progress: bytes and entries of the layer tars written, of their totals."""
    if fmt not in FORMATS:
        raise errors.UnsupportedFormat(f"unknown archive format {fmt!r} (docker or oci)")
    if compress not in COMPRESSIONS:
        raise errors.UnsupportedFormat(f"unknown compression {compress!r} (none, gzip, zstd)")
    _write_to(out, "save", lambda f: _save_to(ctx, images, f, fmt, compress, progress))


def _write_to(out, what: str, write) -> None:
    """Calls write(f) with out: a binary file object; the path of a regular file (or of none
    yet), through a temporary file beside it that replaces it only once complete, so that a
    failed or interrupted write leaves nothing; or the path of a device or fifo (/dev/stdout),
    opened and written in place as `> path` would, since replacing it would destroy the node.
    A symlink's target is what is written.  A path that cannot be written is a HostPathError
    naming it as the user gave it, never the temporary file."""
    if not isinstance(out, (str, os.PathLike)):
        write(out)
        return
    with _output_errors(out):
        if not os.fspath(out):
            raise FileNotFoundError(errno.ENOENT, "an empty path")
        path = os.path.realpath(out)
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            mode = stat.S_IFREG
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, path)
        if not stat.S_ISREG(mode):
            with open(path, "wb", buffering=0) as f:
                write(f)
            return
        fd, tmp = tempfile.mkstemp(prefix=f".layerstore-{what}-", dir=os.path.dirname(path))
    try:
        with _output_errors(out):
            with os.fdopen(fd, "wb", buffering=0) as f:
                write(f)
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


@contextmanager
def _output_errors(out):
    """An OSError as a HostPathError about out.  The store's own failures are already
    LayerstoreErrors, so an OSError here is the output's (a full disk, a missing directory)."""
    try:
        yield
    except errors.LayerstoreError:
        raise
    except OSError as exc:
        raise errors.host_path_error(exc, out, "write") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _save_to(ctx: Context, images: list[SaveImage], f: BinaryIO, fmt: str, compress: str,
             progress: Callable[[Progress], None] | None) -> None:
    closer = None
    if compress != "none":
        # The pinned recipe (compression.py): the same images give the same archive bytes.
        closer = Compressor(compress, _writer(f))
        out = _Out(stream=closer)
    else:
        fd = _regular_fd(f)
        out = _Out(fd=fd) if fd is not None else _Out(stream=f)
    index = ctx.index
    objects_fd = os.open(ctx.objects_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    hashers: list[tuple[str, _Hasher]] = []
    try:
        layers = {}
        with index.read() as txn:
            for image in images:
                for diff_id in image.diff_ids:
                    rec = layers.setdefault(diff_id, index.layer(txn, diff_id))
                    if rec is None:
                        raise errors.LayerNotFound(f"layer {diff_id} of image {image.id} is "
                                                   "not in the store")
        meter = _Meter(progress, sum(r.stream_bytes for r in layers.values()),
                       sum(r.entries for r in layers.values()))
        sizes: dict[str, int] = {}
        for diff_id, rec in layers.items():
            with index.read() as txn:
                records = index.layer_data(txn, diff_id, "records")
                # As stored (zstd): decompressed as it is written instead of whole.
                raw_stored = index.layer_data(txn, diff_id, "raw", compressed=True)
            sizes[diff_id] = rec.stream_bytes
            hexd = diff_id.split(":", 1)[1]
            out.member(f"{hexd}.tar" if fmt == "docker" else f"blobs/sha256/{hexd}",
                       rec.stream_bytes)
            out.flush()
            what = f"layer {diff_id}"
            start = out.written + len(out.buf)
            base_bytes, base_items = meter.bytes, meter.items
            tick = None if progress is None else (
                lambda b, n: meter.at(base_bytes + b, base_items + n))
            if not (out.fd is not None and _write_layer_native(
                    out, ctx.objects_dir, records, raw_stored, what,
                    tick)):
                while len(hashers) >= HASH_THREADS:
                    _verify(*hashers.pop(0))
                out.hasher = hasher = _Hasher(what)
                hashers.append((diff_id, hasher))
                write_layer(out, records, _Raw(raw_stored), objects_fd, what, tick)
                out.flush()
                out.hasher = None
            if out.written - start != rec.stream_bytes:
                raise errors.CorruptArchive(
                    f"{what}: rebuilt {out.written - start} bytes, but the layer has "
                    f"{rec.stream_bytes}: the store's index is corrupt")
            out.write(bytes(_pad(rec.stream_bytes)))
            meter.at(base_bytes + rec.stream_bytes, base_items + rec.entries)
        if fmt == "docker":
            _docker_metadata(out, images)
        else:
            _oci_metadata(out, images, sizes)
        out.end()
        while hashers:
            _verify(*hashers.pop(0))
        if closer is not None:
            closer.close()
            closer = None
        f.flush()
        meter.report()
    except errors.DigestMismatch as exc:
        raise _explain(ctx, exc) from None
    finally:
        for _, h in hashers:
            h.abandon()
        os.close(objects_fd)


def _write_layer_native(out: _Out, objects_dir: str, records: bytes, raw_stored: bytes,
                        what: str, tick: Callable[[int, int], None] | None) -> bool:
    """The C writer, for an uncompressed archive in a regular file: the per-file loop in C,
    each object checked against its recorded BLAKE3 instead of re-hashing the stream with
    SHA-256 (the stream is the stored raw bytes and those contents, so it is the original).
    False, with nothing written, for a layer with sparse files (the Python writer does it)."""
    out.flush()
    raw = zstandard.ZstdDecompressor().stream_reader(raw_stored).read()
    try:
        out.written += _native.write_layer(objects_dir, records, raw, out.fd, report=tick)
    except errors.UnsupportedFormat:
        return False
    except errors.CorruptArchive as exc:
        raise errors.DigestMismatch(f"{what}: {exc}") from None
    except errors.StoreIOError as exc:
        if exc.errno == errno.ENOENT:
            raise errors.MissingBlob(f"{what}: {exc.strerror}") from None
        raise
    return True


def _writer(f: BinaryIO) -> Callable[[bytes], None]:
    """f.write that writes all of its bytes (an unbuffered file may take fewer)."""
    def write(data) -> None:
        view = memoryview(data)
        while view:
            n = f.write(view)
            view = view[n if n is not None else len(view):]
    return write


def _regular_fd(f) -> int | None:
    try:
        fd = f.fileno()
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None
    f.flush()
    return fd


def _verify(diff_id: str, hasher: _Hasher) -> None:
    got = hasher.finish()
    if got != diff_id:
        exc = errors.DigestMismatch(f"layer {diff_id} rebuilt from the store hashes to {got}: "
                                    "an object was modified or the store is corrupt (run "
                                    "layerstore fsck)")
        exc.diff_id = diff_id
        raise exc


def _explain(ctx: Context, exc: errors.DigestMismatch) -> errors.DigestMismatch:
    """Names the object whose content no longer matches, where one does not."""
    diff_id = getattr(exc, "diff_id", None)
    if diff_id is None:
        return exc
    for entry in ctx.layer_entries(diff_id):
        if entry.type is not EntryType.FILE or not entry.size:
            continue
        h = _native.Blake3()
        try:
            with open(ctx.object_path(entry.object_id), "rb") as f:
                remaining = entry.size
                while remaining:
                    data = f.read(min(remaining, CHUNK))
                    if not data:
                        break
                    h.update(data)
                    remaining -= len(data)
        except OSError:
            continue
        if h.hexdigest() != entry.content_hash:
            return errors.DigestMismatch(
                f"{exc}; object {_native.object_path(entry.object_id)} ({entry.path}) does not "
                "match its content hash")
    return exc


def _docker_metadata(out: _Out, images: list[SaveImage]) -> None:
    manifest = []
    written = set()
    for image in images:
        name = image.id.split(":", 1)[1] + ".json"
        if name not in written:
            out.blob(name, image.config)
            written.add(name)
        manifest.append({"Config": name, "RepoTags": image.tags or None,
                         "Layers": [d.split(":", 1)[1] + ".tar" for d in image.diff_ids]})
    repositories: dict[str, dict[str, str]] = {}
    for image in images:
        top = image.diff_ids[-1].split(":", 1)[1] if image.diff_ids else None
        for tag in image.tags:
            repo, _, name = tag.rpartition(":")
            if top:
                repositories.setdefault(repo, {})[name] = top
    out.blob("manifest.json", json.dumps(manifest, separators=(",", ":")).encode())
    if repositories:
        out.blob("repositories", json.dumps(repositories, separators=(",", ":")).encode())


def _oci_metadata(out: _Out, images: list[SaveImage], sizes: dict[str, int]) -> None:
    descriptors = []
    written = set()
    for image in images:
        hexd = image.id.split(":", 1)[1]
        if hexd not in written:
            out.blob(f"blobs/sha256/{hexd}", image.config)
            written.add(hexd)
        data, media_type = oci_manifest(image, sizes)
        digest = _sha256(data)
        if digest.split(":", 1)[1] not in written:
            out.blob(f"blobs/sha256/{digest.split(':', 1)[1]}", data)
            written.add(digest.split(":", 1)[1])
        desc = {"mediaType": media_type, "digest": digest, "size": len(data)}
        platform = _platform(image.config)
        if platform:
            desc["platform"] = platform
        for tag in image.tags or [None]:
            d = dict(desc)
            if tag:
                d["annotations"] = {"io.containerd.image.name": tag,
                                    "org.opencontainers.image.ref.name": tag.rpartition(":")[2]}
            descriptors.append(d)
    out.blob("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    out.blob("index.json", json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                       "manifests": descriptors},
                                      separators=(",", ":")).encode())


def _sha256(data: bytes) -> str:
    return "sha256:" + _native.Sha256(data).digest().hex()


# ---- export: the flattened root filesystem ------------------------------------------------------

_TAR_TYPES = {EntryType.FILE: tarfile.REGTYPE, EntryType.SYMLINK: tarfile.SYMTYPE,
              EntryType.CHAR: tarfile.CHRTYPE, EntryType.BLOCK: tarfile.BLKTYPE,
              EntryType.DIR: tarfile.DIRTYPE, EntryType.FIFO: tarfile.FIFOTYPE}


def _tarinfo(entry: Entry, path: str) -> tarfile.TarInfo:
    ti = tarfile.TarInfo("./" if path == "." else path)
    ti.type = _TAR_TYPES[entry.type]
    ti.mode = entry.mode & 0o7777
    ti.uid, ti.gid = entry.uid, entry.gid
    ti.uname, ti.gname = entry.uname, entry.gname
    sec, nsec = divmod(entry.mtime_ns, 1_000_000_000)
    ti.mtime = sec
    pax = {}
    if nsec:
        pax["mtime"] = f"{sec}.{nsec:09d}".rstrip("0")
    for name, value in entry.xattrs:
        pax["SCHILY.xattr." + name] = value.decode("utf-8", "surrogateescape")
    ti.pax_headers = pax
    if entry.type is EntryType.SYMLINK:
        ti.linkname = entry.link or ""
    elif entry.type is EntryType.FILE:
        ti.size = entry.size
    elif entry.type in (EntryType.CHAR, EntryType.BLOCK):
        ti.devmajor, ti.devminor = entry.devmajor, entry.devminor
    return ti


def export(ctx: Context, tree: Tree, out,
           progress: Callable[[Progress], None] | None = None) -> None:
    """Writes the merged tree as one tar (PAX where a field needs it) to out: a path or a
    binary file object.  An entry that shares an inode with an earlier one (a hardlink in any
    layer) is a hardlink to the first path written.  progress: content bytes of the files
    and entries written, of their totals."""
    _write_to(out, "export", lambda f: _export_to(ctx, tree, f, progress))


def _export_to(ctx: Context, tree: Tree, f: BinaryIO,
               progress: Callable[[Progress], None] | None) -> None:
    fd = _regular_fd(f)
    out = _Out(fd=fd) if fd is not None else _Out(stream=f)
    nodes = list(tree.walk())
    inodes = {id(n.inode): n.inode.entry for n in nodes}
    meter = _Meter(progress, sum(e.size for e in inodes.values() if e.type is EntryType.FILE),
                   len(nodes))
    objects_fd = os.open(ctx.objects_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    first: dict[int, str] = {}      # inode node -> the path it was written under
    try:
        for done, node in enumerate(nodes, 1):
            entry = node.inode.entry
            path = node.entry.path
            if node.inode is not node or entry.type is not EntryType.DIR:
                key = id(node.inode)
                if key in first:
                    ti = _tarinfo(entry, path)
                    ti.type, ti.linkname, ti.size = tarfile.LNKTYPE, first[key], 0
                    out.write(ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
                    meter.at(meter.bytes, done)
                    continue
                first[key] = path
            ti = _tarinfo(entry, path)
            out.write(ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
            if entry.type is EntryType.FILE and entry.size:
                name = _native.object_path(entry.object_id)
                try:
                    ofd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=objects_fd)
                except FileNotFoundError:
                    raise errors.MissingBlob(f"{path}: object {name} is missing from the store "
                                             "(run layerstore fsck)") from None
                out.content(ofd, 0, entry.size, f"{path}: object {name}", True)
                out.write(bytes(_pad(entry.size)))
            meter.at(meter.bytes + (entry.size if entry.type is EntryType.FILE else 0), done)
        out.end()
        f.flush()
        meter.report()
    finally:
        os.close(objects_fd)
