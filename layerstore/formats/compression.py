"""Compression with pinned recipes: the same bytes in give the same bytes out, every run.

A blob's digest is the hash of its compressed bytes, so a layer compressed twice must come
out identical for a second push (or save) to name the same digests.  A compressor's output
depends on more than its level (measured on the corpus, research/registry.md A.6):
- gzip's header carries a time and a file name (Python's gzip writes both by default);
- ISA-L's streaming deflate gives other bytes when the same input arrives in other pieces
  (1 MiB pieces, 64 KiB pieces and an irregular mix made three different streams);
- zstd gives one output single-threaded (threads=0) and another, the same for any number
  of workers, multi-threaded (threads >= 1);
- and any of them may change with the library's version (and ISA-L, written in assembly per
  instruction set, possibly with the CPU generation).
So each recipe fixes all of it: the input is fed in BLOCK-sized pieces whatever sizes the
caller writes, gzip's header is written here (no time, no name, OS "unknown", as Go's gzip
writes it), zstd runs in multi-threaded mode, and the library versions are part of the
recipe's record: a blob made by this recipe is reproduced by the same recipe with the same
versions.  Decompression is unaffected: every output is an ordinary gzip or zstd stream.

    gzip   ISA-L deflate level 1 (python-isal): the fastest gzip at hand, 7x zlib's
           level 6 on the corpus.  zlib's output is stable across zlib versions but not
           across zlib and zlib-ng (which some distributions ship as libz), and at level 1
           it compresses at ~90 MB/s against ISA-L's ~450 MB/s.
    zstd   level 3 (zstd's default), multi-threaded mode, no checksum, no content size.
    zstd:chunked   containers/storage's format, written by formats/chunked_write.py: a
           frame per file (per 4 MiB of it) and per run of tar headers, each at level 3 in
           single-threaded mode, then the TOC, tar-split and footer.  Push only.
    none   the tar itself.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from .. import errors

COMPRESSIONS = ("none", "gzip", "zstd")
BLOCK = 1 << 20         # the compressor sees the input in pieces of exactly this size

# Go's compress/gzip header for a stream with no name and no time: magic, deflate, no flags,
# mtime 0, no extra flags, OS 255 (unknown).
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_GZIP_LEVEL = 1


@dataclass(frozen=True)
class Recipe:
    """How a blob was compressed: what a layer's blob record keeps next to its digest, so
    that the same recipe with the same library reproduces it."""

    compression: str        # "gzip", "zstd" or "none"
    name: str               # the recipe's parameters, e.g. "isal-deflate-1/block-1MiB"
    library: str            # the library and version doing the work

    def record(self) -> dict:
        return {"recipe": self.name, "library": self.library}


def recipe(compression: str) -> Recipe:
    """The recipe this layerstore uses for compression ("gzip", "zstd" or "none")."""
    if compression == "gzip":
        import isal
        return Recipe("gzip", f"isal-deflate-{_GZIP_LEVEL}/block-1MiB/header-go",
                      f"python-isal {isal.__version__}, ISA-L {isal.ISAL_VERSION}")
    if compression == "zstd":
        import zstandard
        version = ".".join(map(str, zstandard.ZSTD_VERSION))
        return Recipe("zstd", "zstd-3/multithreaded/block-1MiB",
                      f"zstandard {zstandard.__version__}, libzstd {version}")
    if compression == "zstd:chunked":
        import zstandard
        from .chunked_write import recipe_name
        version = ".".join(map(str, zstandard.ZSTD_VERSION))
        return Recipe("zstd:chunked", recipe_name(),
                      f"zstandard {zstandard.__version__}, libzstd {version}")
    if compression == "none":
        return Recipe("none", "tar", "")
    raise errors.UnsupportedFormat(f"unknown compression {compression!r} "
                                   "(none, gzip, zstd, zstd:chunked)")


class Compressor:
    """A file-like writer: write() the uncompressed bytes in any pieces, close() at the end;
    the compressed stream goes to sink(bytes) as it is made.  The output depends only on the
    input (and the recipe's library versions)."""

    annotations = None      # a layer descriptor's, which only chunked_write.Writer makes

    def __init__(self, compression: str, sink) -> None:
        self.recipe = recipe(compression)
        self._sink = sink
        self._buf = bytearray()
        self.size_in = 0
        self._closed = False
        self._gzip = compression == "gzip"
        if self._gzip:
            from isal import isal_zlib
            self._engine = isal_zlib.compressobj(_GZIP_LEVEL, isal_zlib.DEFLATED, -15,
                                                 isal_zlib.DEF_MEM_LEVEL)
            self._crc32 = isal_zlib.crc32
            self._crc = 0
            sink(GZIP_HEADER)
        elif compression == "zstd":
            import zstandard
            self._engine = zstandard.ZstdCompressor(
                level=3, threads=max(1, os.cpu_count() or 1), write_checksum=False,
                write_content_size=False).compressobj()
        else:
            self._engine = None

    def write(self, data) -> int:
        n = len(data)
        self.size_in += n
        if self._engine is None:
            if n:
                self._sink(bytes(data))
            return n
        view = memoryview(data).cast("B")
        if self._buf:
            take = min(BLOCK - len(self._buf), n)
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) < BLOCK:
                return n
            self._block(self._buf)
            self._buf = bytearray()
        while len(view) >= BLOCK:
            self._block(view[:BLOCK])
            view = view[BLOCK:]
        self._buf += view
        return n

    def _block(self, block) -> None:
        if self._gzip:
            self._crc = self._crc32(block, self._crc)
        out = self._engine.compress(block)
        if out:
            self._sink(out)

    def close(self) -> None:
        """Compresses what is left and ends the stream (gzip's CRC and size trailer)."""
        if self._closed:
            return
        self._closed = True
        if self._engine is None:
            return
        if self._buf:
            self._block(self._buf)
            self._buf = bytearray()
        out = self._engine.flush()
        if out:
            self._sink(out)
        if self._gzip:
            self._sink(struct.pack("<II", self._crc & 0xFFFFFFFF, self.size_in & 0xFFFFFFFF))

    def abandon(self) -> None:
        """Drops the stream unfinished (a failed or cancelled upload) and its engine's
        buffers with it, rather than leaving them to the garbage collector."""
        self._closed = True
        self._engine = None
        self._buf = bytearray()

    def flush(self) -> None:
        """Nothing to do: a file-like writer's flush, which must not end a block early (it
        would change the output)."""
