"""What an import reads: the Source interface every place images come from implements (the
archive sources in formats/archive.py, and registry/pull.py's), the Blob a source hands
over for each layer, and the byte-level helpers they share: telling a blob's kind from its
first bytes, and decompressing it with bounded output.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator, Protocol

import zstandard
from isal import igzip

from .manifests import ImagePlan

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class Blob:
    """One layer blob as a source hands it over: key, the name the plans' LayerRef.member
    give it (an archive path, a digest), and a reader of its bytes as stored - compressed or
    not, the import sniffs which - after head, its first bytes if the source has read them
    already.  The import reads the reader to its end before it takes the next blob from the
    same thread.  digest: set by a source whose reader verifies the blob itself (a
    registry's: the read that completes it raises DigestMismatch otherwise), which the
    import then does not hash again.  stands_for: (compression, digest, size) of the blob
    when the reader is a tar rebuilt from part of it (a partial pull of a chunked layer:
    registry/partial.py's Rebuilt, whose recipes() the import feeds to the C ingest): the
    diffID the import computes is then what verifies it."""

    key: str
    reader: BinaryIO
    head: bytes = b""
    digest: str | None = None
    stands_for: tuple[str, str, int] | None = None


class Source(Protocol):
    """Where an import reads images from.  The import (store/pipeline.py) asks plans() first:

    - a source that can read its metadata without reading its layers (a seekable archive, a
      layout directory, a registry) returns the images then, and the import reads from
      blobs(keys) only the layers the store lacks;
    - a source that is read once, in order (a compressed archive, a pipe), returns None: the
      import reads blobs(None), every blob that looks like a layer, as it passes, and asks
      plans() again once the stream is over (the metadata may come last).  Then blobs(keys)
      hands over those of the keys it kept in memory (blobs too small to be told from
      metadata as they passed) and passes over the keys it has not seen.

    A source keeps its own state (metadata it has read, symlinks between its members): the
    import hands nothing back to it.  Every digest a plan states (LayerRef: diffID, blob
    digest and size) is verified by the import, so a source need not check them itself.

    Concurrency: `readers` threads iterate blobs() at once, each taking the next blob (one at
    a time: the import serializes next()) and reading it to its end.  1 suits a stream whose
    members must be read in order; a source whose blobs can be fetched side by side (a
    registry, one request per layer) says how many, and its layers then arrive at the ingest
    interleaved, which keeps one C ingest per layer in flight.  bytes_read may be called from
    any thread while they run.
    """

    size: int | None        # the bytes bytes_read() reaches at the end, when known (progress)
    readers: int

    def bytes_read(self) -> int:
        """Bytes read from the source so far (compressed, as stored)."""
        ...

    def plans(self, platform: str | None, all_platforms: bool) -> list[ImagePlan] | None:
        """The images to import (formats/manifests.py: plan_images), or None before the
        layers have been read (see above)."""
        ...

    def blobs(self, keys: list[str] | None) -> Iterator[Blob]:
        """The layer blobs named by keys, in any order (None: every blob that looks like a
        layer).  A key the source does not hold raises MissingBlob, except after a stream
        has been read (see above)."""
        ...

    def close(self) -> None:
        """Releases what the source opened (not a file object the caller gave it)."""
        ...


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


class Reader:
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


class Counting(Reader):
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


class Prefixed(Reader):
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


class Bytes(Reader):
    """A reader over bytes held in memory."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        out = self.data[self.pos:end]
        self.pos += len(out)
        return out


def decompressed(raw, kind: str):
    """A reader of raw's content, decompressed; reads return at most what was asked for, so
    output stays bounded however well the input compresses."""
    if kind == "gzip":
        return igzip.GzipFile(fileobj=raw, mode="rb")
    if kind == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True,
                                                          closefd=False)
    return raw
