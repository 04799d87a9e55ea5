"""Reading image archives and streaming their layers to the ingest.

Three kinds of source:
  DirSource     an OCI image layout (or unpacked docker-archive) as a directory;
  TarSource     an uncompressed, seekable archive file: its metadata is read first, and layers
                already in the store are skipped without reading their bytes;
  StreamSource  a compressed archive or a pipe: read once, in order; every layer-looking member
                is ingested as it passes, and the metadata (which may come last) is matched at
                the end.

The reading, decompression and blob hashing run on a producer thread (zstandard, isal, zlib
and hashlib release the GIL), so they overlap with the C ingest on the calling thread.  The
producer hands over 1 MiB chunks through a bounded queue: memory stays bounded whatever the
archive holds, and a decompression bomb costs time, not memory.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import queue
import stat
import tarfile
import threading
from dataclasses import dataclass
from typing import BinaryIO, Callable

import zstandard
from isal import igzip

from .. import errors
from .manifests import META_LIMIT, clean_member
from ..errors import MissingBlob

CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
LINK_HOPS = 16


def sniff(head: bytes) -> str:
    """What a blob or archive is, from its first bytes: gzip, zstd, tar, json or unknown."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    stripped = head.lstrip(b" \t\r\n")
    if stripped[:1] in (b"{", b"["):
        return "json"
    if len(head) >= 512:
        block = head[:512]
        if block == bytes(512):
            return "tar"
        try:
            want = int(block[148:156].replace(b"\0", b" ").strip() or b"-1", 8)
        except ValueError:
            return "unknown"
        total = sum(block[:148]) + 8 * 32 + sum(block[156:])
        if want == total:
            return "tar"
    return "unknown"


class _Reader:
    """The file-object surface the decompressors need (they buffer through readinto)."""

    def read(self, n: int = -1) -> bytes:
        raise NotImplementedError

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[:len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        pass


class _Counting(_Reader):
    """A reader that counts (and optionally hashes) what passes through it."""

    def __init__(self, raw, hash_it: bool = False, on_read: Callable[[int], None] | None = None):
        self.raw = raw
        self.count = 0
        self.sha = hashlib.sha256() if hash_it else None
        self.on_read = on_read

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.count += len(data)
        if self.sha is not None:
            self.sha.update(data)
        if self.on_read is not None:
            self.on_read(len(data))
        return data


class _Prefixed(_Reader):
    """A reader that yields head first, then the rest of raw (sniffing without seeking)."""

    def __init__(self, head: bytes, raw):
        self.head = head
        self.raw = raw

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.raw.read(n)
        if n < 0:
            out, self.head = self.head, b""
            return out + self.raw.read()
        out, self.head = self.head[:n], self.head[n:]
        return out      # a short read, which every reader here accepts


class _Range(_Reader):
    """A reader over a byte range of a file descriptor, by pread (safe beside other readers)."""

    def __init__(self, fd: int, offset: int, size: int):
        self.fd, self.pos, self.end = fd, offset, offset + size

    def read(self, n: int = -1) -> bytes:
        left = self.end - self.pos
        if n < 0 or n > left:
            n = left
        if n <= 0:
            return b""
        data = os.pread(self.fd, n, self.pos)
        if not data:
            raise errors.TruncatedArchive("the archive file ended early (was it changed while "
                                          "being imported?)")
        self.pos += len(data)
        return data


def decompressed(raw, kind: str):
    """A reader of raw's content, decompressed; reads return at most what was asked for, so
    output stays bounded however well the input compresses."""
    if kind == "gzip":
        return igzip.GzipFile(fileobj=raw, mode="rb")
    if kind == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True,
                                                          closefd=False)
    return raw


@dataclass
class BlobInfo:
    """A layer blob as it was read: its compression, and for compressed blobs the digest and
    size of the compressed bytes (for an uncompressed blob they are the diffID and the tar
    length, which the ingest computes)."""

    compression: str            # "gzip", "zstd" or "tar"
    digest: str | None
    size: int


# ---- The producer thread --------------------------------------------------------------------

class _Stopped(Exception):
    pass


class Pipeline:
    """Runs produce(emit) on a thread; iterating yields what it emitted, in order.

    Events: ("layer", key) then ("data", bytes)... then ("end", BlobInfo); ("meta", name,
    bytes); ("link", name, target).  An exception in the producer is raised in the consumer;
    closing the pipeline (or an exception in the consumer) stops the producer.
    """

    def __init__(self, produce: Callable[[Callable], None], depth: int = 8) -> None:
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(produce,), daemon=True,
                                        name="layerstore-reader")
        self._thread.start()

    def _emit(self, event) -> None:
        while True:
            if self._stop.is_set():
                raise _Stopped()
            try:
                self._q.put(event, timeout=0.1)
                return
            except queue.Full:
                continue

    def _run(self, produce) -> None:
        try:
            produce(self._emit)
            self._emit(("done",))
        except _Stopped:
            pass
        except BaseException as exc:   # noqa: BLE001 - handed to the consumer
            try:
                self._emit(("error", exc))
            except _Stopped:
                pass

    def __iter__(self):
        while True:
            event = self._q.get()
            if event[0] == "done":
                return
            if event[0] == "error":
                raise event[1]
            yield event

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._q.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()


def emit_layer(emit, key, raw, head: bytes = b"") -> None:
    """Streams one layer blob read from raw (after head, already read) as layer events."""
    if len(head) < 512:
        head += raw.read(512 - len(head))
    kind = sniff(head)
    compression = kind if kind in ("gzip", "zstd") else "tar"
    counted = _Counting(_Prefixed(head, raw), hash_it=compression != "tar")
    reader = decompressed(counted, compression)
    emit(("layer", key))
    try:
        while True:
            data = reader.read(CHUNK)
            if not data:
                break
            emit(("data", data))
    except (OSError, EOFError, zstandard.ZstdError) as exc:
        if isinstance(exc, errors.LayerstoreError):
            raise
        raise errors.CorruptArchive(f"layer {key}: cannot decompress its {compression} "
                                    f"stream: {exc}") from None
    digest = "sha256:" + counted.sha.hexdigest() if counted.sha is not None else None
    emit(("end", BlobInfo(compression, digest, counted.count)))


# ---- Sources --------------------------------------------------------------------------------

class _Links:
    """Symlink and hardlink members of an archive, followed without leaving it."""

    def __init__(self) -> None:
        self.links: dict[str, str] = {}

    def add(self, name: str, target: str, symbolic: bool) -> None:
        base = posixpath.dirname(name) if symbolic else ""
        joined = posixpath.normpath(posixpath.join(base, target)) if not target.startswith("/") \
            else "/"
        self.links[name] = joined

    def resolve(self, name: str) -> str:
        for _ in range(LINK_HOPS):
            target = self.links.get(name)
            if target is None:
                return name
            if target == "/" or target == ".." or target.startswith("../"):
                raise errors.UnsafePath(f"member {name!r} is a link that points outside the "
                                        "archive")
            name = target
        raise errors.CorruptArchive(f"member {name!r}: too many levels of links")


class MemoryFiles:
    """Metadata files kept in memory while streaming an archive (ArchiveFiles)."""

    def __init__(self, files: dict[str, bytes], links: _Links) -> None:
        self.files = files
        self.links = links

    def has(self, name: str) -> bool:
        return self.links.resolve(name) in self.files

    def resolve(self, name: str) -> str:
        return self.links.resolve(name)

    def read(self, name: str, limit: int = META_LIMIT) -> bytes:
        data = self.files.get(self.links.resolve(name))
        if data is None:
            raise MissingBlob(f"{name} is not in the archive (or is too large to be metadata)")
        return data


class TarSource:
    """An uncompressed archive file with random access."""

    random_access = True

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f = f
        self.fd = f.fileno()
        self.size = size
        self.bytes_read = 0
        self.members: dict[str, tarfile.TarInfo] = {}
        self.links = _Links()
        try:
            with tarfile.open(fileobj=f, mode="r:") as tf:
                for name, m in _named_members(tf):
                    if m.issym() or m.islnk():
                        self.links.add(name, m.linkname, m.issym())
                    elif m.isfile():
                        self.members[name] = m
        except tarfile.TarError as exc:
            raise errors.CorruptArchive(f"cannot read the archive as tar: {exc}") from None

    def _member(self, name: str) -> tarfile.TarInfo:
        m = self.members.get(self.links.resolve(name))
        if m is None:
            raise MissingBlob(f"{name} is not in the archive")
        return m

    def has(self, name: str) -> bool:
        return self.links.resolve(name) in self.members

    def resolve(self, name: str) -> str:
        return self.links.resolve(name)

    def read(self, name: str, limit: int = META_LIMIT) -> bytes:
        m = self._member(name)
        if m.size > limit:
            raise errors.LimitExceeded(f"{name} has {m.size} bytes, more than metadata may "
                                       f"({limit})")
        data = os.pread(self.fd, m.size, m.offset_data)
        if len(data) != m.size:
            raise errors.TruncatedArchive(f"{name} is cut short in the archive")
        return data

    def produce_layers(self, keys: list[str]):
        def produce(emit):
            for key in keys:
                m = self._member(key)
                rng = _Range(self.fd, m.offset_data, m.size)
                emit_layer(emit, key, _Counting(rng, on_read=self._count))
        return produce

    def _count(self, n: int) -> None:
        self.bytes_read += n


class DirSource:
    """An OCI image layout (or unpacked docker-archive) directory.  Nothing is read through a
    symlink that leaves it: each path component is opened with O_NOFOLLOW after resolving
    links by hand inside the directory."""

    random_access = True

    def __init__(self, path: str) -> None:
        self.root = path
        self.dirfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.size = None
        self.bytes_read = 0

    def close(self) -> None:
        os.close(self.dirfd)

    def resolve(self, name: str) -> str:
        parts = [p for p in name.split("/") if p]
        done: list[str] = []
        hops = 0
        while parts:
            part = parts.pop(0)
            path = "/".join(done + [part])
            try:
                st = os.stat(path, dir_fd=self.dirfd, follow_symlinks=False)
            except FileNotFoundError:
                return "/".join(done + [part] + parts)
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > LINK_HOPS:
                    raise errors.CorruptArchive(f"{name!r}: too many levels of symlinks")
                target = os.readlink(path, dir_fd=self.dirfd)
                joined = posixpath.normpath(posixpath.join("/".join(done), target)) \
                    if not target.startswith("/") else "/"
                if joined == "/" or joined == ".." or joined.startswith("../"):
                    raise errors.UnsafePath(f"{name!r} is a symlink that points outside the "
                                            "archive directory")
                parts = [p for p in joined.split("/") if p and p != "."] + parts
                done = []
            else:
                done.append(part)
        return "/".join(done)

    def _open(self, name: str) -> int:
        """Opens a resolved path component by component, refusing any symlink."""
        parts = self.resolve(name).split("/")
        fd = os.dup(self.dirfd)
        try:
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (0 if last else
                                                                      os.O_DIRECTORY)
                nfd = os.open(part, flags, dir_fd=fd)
                os.close(fd)
                fd = nfd
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise MissingBlob(f"{name} is not a regular file")
            return fd
        except FileNotFoundError:
            os.close(fd)
            raise MissingBlob(f"{name} is not in the archive directory") from None
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise errors.UnsafePath(f"{name}: a symlink on the way") from None
            raise

    def has(self, name: str) -> bool:
        try:
            os.close(self._open(name))
            return True
        except MissingBlob:
            return False

    def read(self, name: str, limit: int = META_LIMIT) -> bytes:
        fd = self._open(name)
        try:
            size = os.fstat(fd).st_size
            if size > limit:
                raise errors.LimitExceeded(f"{name} has {size} bytes, more than metadata may "
                                           f"({limit})")
            with os.fdopen(os.dup(fd), "rb") as f:
                return f.read()
        finally:
            os.close(fd)

    def produce_layers(self, keys: list[str]):
        def produce(emit):
            for key in keys:
                fd = self._open(key)
                with os.fdopen(fd, "rb", buffering=0) as f:
                    emit_layer(emit, key, _Counting(f, on_read=self._count))
        return produce

    def _count(self, n: int) -> None:
        self.bytes_read += n


class StreamSource:
    """A compressed archive or a non-seekable stream, read once, in order."""

    random_access = False

    def __init__(self, f: BinaryIO, head: bytes, kind: str, size: int | None) -> None:
        self.f = f
        self.head = head
        self.kind = kind
        self.size = size
        self.bytes_read = 0
        self.files: dict[str, bytes] = {}
        self.links = _Links()

    def _count(self, n: int) -> None:
        self.bytes_read += n

    def produce(self, emit) -> None:
        raw = _Counting(_Prefixed(self.head, self.f), on_read=self._count)
        outer = decompressed(raw, self.kind) if self.kind in ("gzip", "zstd") else raw
        try:
            with tarfile.open(fileobj=outer, mode="r|") as tf:
                for name, m in _named_members(tf):
                    if m.issym() or m.islnk():
                        emit(("link", name, m.linkname, m.issym()))
                        continue
                    if not m.isfile():
                        continue
                    f = tf.extractfile(m)
                    head = f.read(min(m.size, 512))
                    kind = sniff(head)
                    if kind in ("gzip", "zstd", "tar"):
                        emit_layer(emit, name, f, head)
                    elif m.size <= META_LIMIT:
                        emit(("meta", name, head + f.read()))
        except (tarfile.TarError, EOFError, zstandard.ZstdError, OSError) as exc:
            if isinstance(exc, errors.LayerstoreError):
                raise
            raise errors.CorruptArchive(f"cannot read the archive: {exc}") from None

    def files_view(self) -> MemoryFiles:
        return MemoryFiles(self.files, self.links)


def _named_members(tf: tarfile.TarFile):
    """(cleaned name, member) for each member of an archive tar.  A member whose name is not
    safe is skipped: safe metadata never names it, so it is never used."""
    for m in tf:
        try:
            name = clean_member(m.name, "member name")
        except errors.CorruptArchive:
            continue
        yield name, m


def open_source(source) -> tuple[object, Callable[[], None]]:
    """Opens a path (file or directory) or a binary file object; returns the source and a
    function that closes what was opened here."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            if os.path.isdir(path):
                src = DirSource(path)
                return src, src.close
            f = open(path, "rb")
        except OSError as exc:
            raise errors.host_path_error(exc, path, "read") from None
        closer = f.close
    else:
        f = source
        closer = lambda: None  # noqa: E731 - the caller owns its file object
    try:
        head = f.read(512)
        kind = sniff(head)
        # Random access reads members by pread, so it needs a real file descriptor.
        seekable = False
        try:
            size = os.fstat(f.fileno()).st_size
            seekable = f.seekable() and kind == "tar"
        except (OSError, AttributeError, ValueError):
            size = None
        if kind not in ("gzip", "zstd", "tar"):
            raise errors.UnsupportedFormat(
                "not an image archive: expected a tar, or a gzip or zstd compressed tar, or an "
                "OCI layout directory")
        if seekable:
            f.seek(0)
            return TarSource(f, size), closer
        return StreamSource(f, head, kind, size), closer
    except BaseException:
        closer()
        raise
