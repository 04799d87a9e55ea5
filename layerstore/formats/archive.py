"""Image archives as import sources (see formats/source.py for the interface):

  DirSource     an OCI image layout (or unpacked docker-archive) as a directory;
  TarSource     an uncompressed, seekable archive file: its metadata is read first, and layers
                already in the store are skipped without reading their bytes;
  StreamSource  a compressed archive or a pipe: read once, in order; every layer-looking member
                is handed over as it passes, and the metadata (which may come last) is kept
                for plans() at the end;
  LayerStream   one layer stream (Store.import_layer), for tools that bring their own manifests.

Every path named by metadata or by a link member must stay inside the archive.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
import tarfile
from typing import BinaryIO, Iterator

import zstandard

from .. import errors
from ..errors import MissingBlob
from .manifests import META_LIMIT, ImagePlan, clean_member, plan_images
from .source import Blob, Bytes, Counting, Prefixed, Reader, decompressed, sniff

LINK_HOPS = 16


class _Range(Reader):
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


class _Counted:
    """bytes_read of a source, added to by whichever thread reads."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, n: int) -> None:
        self.n += n


class TarSource:
    """An uncompressed archive file with random access."""

    readers = 1

    def __init__(self, f: BinaryIO, size: int, close=None) -> None:
        self.f = f
        self.fd = f.fileno()
        self.size = size
        self._close = close
        self._read = _Counted()
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

    def bytes_read(self) -> int:
        return self._read.n

    def plans(self, platform: str | None, all_platforms: bool) -> list[ImagePlan]:
        return plan_images(self, platform, all_platforms)

    def blobs(self, keys: list[str] | None) -> Iterator[Blob]:
        for key in keys if keys is not None else self.members:
            m = self._member(key)
            yield Blob(key, Counting(_Range(self.fd, m.offset_data, m.size),
                                     on_read=self._read))

    def close(self) -> None:
        if self._close is not None:
            self._close()


class DirSource:
    """An OCI image layout (or unpacked docker-archive) directory.  Nothing is read through a
    symlink that leaves it: each path component is opened with O_NOFOLLOW after resolving
    links by hand inside the directory."""

    readers = 1
    size = None

    def __init__(self, path: str) -> None:
        self.root = path
        self.dirfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._read = _Counted()

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

    def bytes_read(self) -> int:
        return self._read.n

    def plans(self, platform: str | None, all_platforms: bool) -> list[ImagePlan]:
        return plan_images(self, platform, all_platforms)

    def blobs(self, keys: list[str] | None) -> Iterator[Blob]:
        if keys is None:
            raise ValueError("a layout directory hands over the layers its plans name")
        for key in keys:
            with os.fdopen(self._open(key), "rb", buffering=0) as f:
                yield Blob(key, Counting(f, on_read=self._read))


class StreamSource:
    """A compressed archive or a non-seekable stream, read once, in order.  What is not a
    layer (its metadata; blobs too small to be told from metadata) is kept in memory, up to
    META_LIMIT a member, and so are the archive's links: plans() reads them once blobs(None)
    has gone through the stream."""

    readers = 1

    def __init__(self, f: BinaryIO, head: bytes, kind: str, size: int | None,
                 close=None) -> None:
        self.f = f
        self.head = head
        self.kind = kind
        self.size = size
        self._close = close
        self._read = _Counted()
        self._done = False
        self.files: dict[str, bytes] = {}
        self.links = _Links()

    def has(self, name: str) -> bool:
        return self.links.resolve(name) in self.files

    def resolve(self, name: str) -> str:
        return self.links.resolve(name)

    def read(self, name: str, limit: int = META_LIMIT) -> bytes:
        data = self.files.get(self.links.resolve(name))
        if data is None:
            raise MissingBlob(f"{name} is not in the archive (or is too large to be metadata)")
        return data

    def bytes_read(self) -> int:
        return self._read.n

    def plans(self, platform: str | None, all_platforms: bool) -> list[ImagePlan] | None:
        return plan_images(self, platform, all_platforms) if self._done else None

    def blobs(self, keys: list[str] | None) -> Iterator[Blob]:
        if keys is None:
            yield from self._stream()
            return
        for key in keys:        # after the stream: the layers it kept as metadata
            data = self.files.get(key)
            if data is not None:
                yield Blob(key, Bytes(data))

    def _stream(self) -> Iterator[Blob]:
        raw = Counting(Prefixed(self.head, self.f), on_read=self._read)
        outer = decompressed(raw, self.kind) if self.kind in ("gzip", "zstd") else raw
        try:
            with tarfile.open(fileobj=outer, mode="r|") as tf:
                for name, m in _named_members(tf):
                    if m.issym() or m.islnk():
                        self.links.add(name, m.linkname, m.issym())
                        continue
                    if not m.isfile():
                        continue
                    f = tf.extractfile(m)
                    head = f.read(min(m.size, 512))
                    if sniff(head) in ("gzip", "zstd", "tar"):
                        yield Blob(name, f, head)
                    elif m.size <= META_LIMIT:
                        self.files[name] = head + f.read()
        except (tarfile.TarError, EOFError, zstandard.ZstdError, OSError) as exc:
            if isinstance(exc, errors.LayerstoreError):
                raise
            raise errors.CorruptArchive(f"cannot read the archive: {exc}") from None
        self._done = True

    def close(self) -> None:
        if self._close is not None:
            self._close()


class LayerStream:
    """One layer stream, uncompressed, gzip or zstd (Store.import_layer): a source of one
    blob, keyed "layer", and no images."""

    readers = 1
    size = None
    KEY = "layer"

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream

    def bytes_read(self) -> int:
        return 0

    def plans(self, platform: str | None, all_platforms: bool) -> list[ImagePlan]:
        return []

    def blobs(self, keys: list[str] | None) -> Iterator[Blob]:
        yield Blob(self.KEY, self.stream)

    def close(self) -> None:
        pass


def _named_members(tf: tarfile.TarFile):
    """(cleaned name, member) for each member of an archive tar.  A member whose name is not
    safe is skipped: safe metadata never names it, so it is never used."""
    for m in tf:
        try:
            name = clean_member(m.name, "member name")
        except errors.CorruptArchive:
            continue
        yield name, m


def open_source(source) -> TarSource | DirSource | StreamSource:
    """The source that reads a path (file or directory) or a binary file object.  Its close()
    closes what was opened here, never a file object the caller gave."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            if os.path.isdir(path):
                return DirSource(path)
            f = open(path, "rb")
        except OSError as exc:
            raise errors.host_path_error(exc, path, "read") from None
        closer = f.close
    else:
        f = source
        closer = None       # the caller owns its file object
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
            return TarSource(f, size, closer)
        return StreamSource(f, head, kind, size, closer)
    except BaseException:
        if closer is not None:
            closer()
        raise
