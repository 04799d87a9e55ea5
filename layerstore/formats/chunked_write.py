"""zstd:chunked layers written as containers/storage writes its current format
(pkg/chunked/compressor; formats/chunked.py reads them), so that a pull of them - ours, or a
recent podman's - fetches only the files it lacks.

The blob is an ordinary zstd stream of the layer's tar, cut into frames: each regular file's
content starts new frames (one per CHUNK of it: files over CHUNK get TOC "chunk" entries, as
c/storage's rolling-sum chunks do), and the tar headers and padding between two files are a
frame of their own.  After the content come three zstd skippable frames: the zstd-compressed
TOC JSON (every tar entry with its metadata as Go's archive/tar reads the header, and for a
regular file the SHA-256 of its content and the compressed range of its frames), the
zstd-compressed tar-split (formats/tarsplit.py), and the 64-byte footer.  The layer's
descriptor carries the annotations that locate and authenticate the TOC (and, through the
TOC's tarSplitDigest, the tar-split).

The recipe is deterministic: every frame is compressed on its own at level 3 in
single-threaded mode, so the bytes do not depend on how many threads compress them (they do
it in parallel, BATCH bytes at a time, the output kept in order) nor on how the input
arrives.  The TOC names, modes and times are parsed from the layer's raw tar headers, as Go's
archive/tar parses them, because c/storage refuses a TOC whose entries differ from the
tar-split's headers.  A layer the format cannot describe - sparse files, a path twice, a name
that is not UTF-8 (JSON cannot carry it) - has no layout(); push sends it as plain zstd.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone

import zstandard

from .. import _native
from ..store.context import Context
from . import chunked, tarsplit
from .export import _number, _pad, _pax_records

CHUNK = 4 << 20         # a file's content is cut into frames of this size
BATCH = 1 << 20         # frames compressed by one task: at least this much input, or one CHUNK
AHEAD = 4               # tasks per thread compressed ahead of the output
LEVEL = 3

# The typeflags c/storage's TOC knows (Go reads "\0" as "0"): a layer with any other, or with a
# PAX global header (Go lists it as an entry of its own), goes as plain zstd.
_TYPES = {b"0": "reg", b"\0": "reg", b"1": "hardlink", b"2": "symlink", b"3": "char",
          b"4": "block", b"5": "dir", b"6": "fifo"}
_EXTENDED = (b"x", b"L", b"K")
_FILE = 0               # _native.scan_records' type of a regular file


def recipe_name() -> str:
    return f"zstd-{LEVEL}/frame-per-file/chunk-{CHUNK >> 20}MiB/toc-1/tar-split"


@dataclass
class Layout:
    """What the writer needs of a layer besides its tar stream: the TOC entries in tar order
    (without digests and offsets), and for each regular file with content, in tar order, the
    raw tar bytes before it, its size and its entry."""

    entries: list[dict]
    files: list[tuple[int, int, int]]   # (raw bytes before it, size, index in entries)
    tarsplit: bytes


def layout(ctx: Context, txn, diff_id: str) -> Layout | None:
    """The layer's layout, or None when zstd:chunked cannot describe it."""
    split = tarsplit.build(ctx, txn, diff_id)
    if split is None:
        return None
    index = ctx.index
    raw = index.layer_data(txn, diff_id, "raw")
    entries: list[dict] = []
    files: list[tuple[int, int, int]] = []
    names: set[str] = set()
    off = gap = 0
    pad = 0             # the previous file's padding, at the start of the next raw bytes
    for typ, _, _, _, _, size, raw_len, _, _, _ in _native.scan_records(
            index.layer_data(txn, diff_id, "records")):
        if raw_len:
            entry = _header(raw[off + pad:off + raw_len])
            if entry is None:
                return None
            if entry["name"] not in names:
                names.add(entry["name"])
                entries.append(entry)
            elif typ == _FILE and size:
                return None
            off += raw_len
            gap += raw_len
            pad = 0
        if typ == _FILE and size:
            if not raw_len:
                return None
            files.append((gap, size, len(entries) - 1))
            gap, pad = 0, _pad(size)
    return Layout(entries, files, split)


def _header(seg: bytes) -> dict | None:
    """The TOC entry of the tar header ending seg (after its extended headers), with the
    fields c/storage's minimal.NewFileMetadata takes from Go's tar.Header."""
    pax: dict[bytes, bytes] = {}
    long_name = long_link = None
    at = 0
    while at + 512 <= len(seg):
        block = seg[at:at + 512]
        at += 512
        flag = block[156:157]
        if flag in _EXTENDED and at < len(seg):
            size = _number(block[124:136])
            body = seg[at:at + size]
            at += size + _pad(size)
            if flag == b"x":
                pax.update(_pax_records(body))
            elif flag == b"L":
                long_name = body.split(b"\0", 1)[0]
            elif flag == b"K":
                long_link = body.split(b"\0", 1)[0]
            continue
        try:
            return _entry(block, pax, long_name, long_link)
        except ValueError:      # a PAX number Go would not read either
            return None
    return None


def _entry(block: bytes, pax: dict, long_name: bytes | None, long_link: bytes | None
           ) -> dict | None:
    def text(b: bytes) -> bytes:
        return b.split(b"\0", 1)[0]

    name, link = text(block[0:100]), text(block[157:257])
    magic = block[257:265]
    ustar = magic == b"ustar\x0000"
    gnu = magic == b"ustar  \x00"
    if ustar and text(block[345:500]):
        name = text(block[345:500]) + b"/" + name
    name = long_name if long_name is not None else pax.get(b"path", name)
    link = long_link if long_link is not None else pax.get(b"linkpath", link)
    flag = block[156:157]
    if flag in (b"\0", b"0") and name.endswith(b"/"):
        flag = b"5"
    kind = _TYPES.get(flag)
    if kind is None:
        return None
    try:
        name_s, link_s = name.decode(), link.decode()
    except UnicodeDecodeError:
        return None
    e: dict = {"type": kind, "name": name_s}
    if link_s:
        e["linkName"] = link_s
    mode = _number(block[100:108])
    if mode:
        e["mode"] = mode
    size = int(pax[b"size"]) if b"size" in pax else _number(block[124:136])
    uid = int(pax[b"uid"]) if b"uid" in pax else _number(block[108:116])
    gid = int(pax[b"gid"]) if b"gid" in pax else _number(block[116:124])
    for key, value in (("size", size), ("uid", uid), ("gid", gid)):
        if value:
            e[key] = value
    times = {"modtime": pax.get(b"mtime") or str(_number(block[136:148])).encode()}
    if gnu:
        times["accesstime"] = str(_number(block[345:357])).encode()
        times["changetime"] = str(_number(block[357:369])).encode()
    for key, pkey in (("accesstime", b"atime"), ("changetime", b"ctime")):
        if pkey in pax:
            times[key] = pax[pkey]
    for key, value in times.items():
        stamp = _time(value)
        if stamp is not None:
            e[key] = stamp
    if ustar or gnu:
        for key, field in (("devMajor", block[329:337]), ("devMinor", block[337:345])):
            if kind in ("char", "block") and _number(field):
                e[key] = _number(field)
    try:
        xattrs = {k[len(b"SCHILY.xattr."):].decode(): base64.b64encode(v).decode()
                  for k, v in pax.items() if k.startswith(b"SCHILY.xattr.")}
    except UnicodeDecodeError:
        return None
    if xattrs:
        e["xattrs"] = dict(sorted(xattrs.items()))
    return e


@functools.lru_cache(maxsize=4096)     # a layer's files share a few times
def _time(value: bytes) -> str | None:
    """A tar time ("seconds[.fraction]") as Go's time.Time marshals it (RFC 3339 with
    nanoseconds, trailing zeros dropped); None for 0, which c/storage leaves out."""
    try:
        sec_s, _, frac_s = value.decode().partition(".")
        sec = int(sec_s)
        nanos = int((frac_s + "000000000")[:9]) if frac_s else 0
        if sec_s.startswith("-") and nanos:
            sec, nanos = sec - 1, 1_000_000_000 - nanos
        if not sec and not nanos:
            return None
        stamp = datetime.fromtimestamp(sec, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    except (ValueError, OverflowError, OSError):
        return None
    frac = f".{nanos:09d}".rstrip("0") if nanos else ""
    return f"{stamp}{frac}Z"


class Writer:
    """A file-like writer of a layer's tar stream (write() in any pieces, then close()) that
    sends the zstd:chunked blob to sink(bytes) as it is made; annotations is set by close()."""

    def __init__(self, plan: Layout, sink) -> None:
        self._plan, self._sink = plan, sink
        self._entries = [dict(e) for e in plan.entries]
        self._file = -1                 # index in plan.files of the file being read
        self._need = plan.files[0][0] if plan.files else -1     # bytes left of this part
        self._in_file = False
        self._head = bytearray()
        self._chunk = bytearray()
        self._chunk_no = 0
        self._sha = None                # the whole file's, when it has several chunks
        self._batch: list = []
        self._batch_bytes = 0
        self._chunks: dict[int, list] = {}     # file -> its frames so far (offset, size, sha)
        self._digests: dict[int, str] = {}      # file -> its SHA-256, when it has several
        self._extra: dict[int, list] = {}       # entry -> its chunk entries
        self.size = 0
        self.annotations: dict[str, str] | None = None
        workers = max(1, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="layerstore-zstd-chunked")
        self._ahead = AHEAD * workers
        self._pending: deque = deque()
        self._local = threading.local()

    # -- input, cut into frames --

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        while view:
            if self._need < 0:          # after the last file: the end of the archive
                self._head += view
                break
            take = min(self._need, len(view))
            if self._in_file:
                self._file_bytes(view[:take])
            else:
                self._head += view[:take]
            view = view[take:]
            self._need -= take
            if self._need == 0:
                self._next_part()
        return n

    def _next_part(self) -> None:
        files = self._plan.files
        if self._in_file:
            self._end_chunk(last=True)
            self._in_file = False
            self._need = files[self._file + 1][0] if self._file + 1 < len(files) else -1
            if self._need == 0:
                self._next_part()
            return
        if self._head:
            self._frame(bytes(self._head), None)
            self._head = bytearray()
        self._file += 1
        self._in_file = True
        self._need = files[self._file][1]
        self._chunk_no = 0
        self._sha = hashlib.sha256() if self._need > CHUNK else None

    def _file_bytes(self, view) -> None:
        left = self._need               # of the file, view included
        while view:
            take = min(CHUNK - len(self._chunk), len(view))
            self._chunk += view[:take]
            view = view[take:]
            left -= take
            if len(self._chunk) == CHUNK and left:
                self._end_chunk(last=False)

    def _end_chunk(self, last: bool) -> None:
        data = bytes(self._chunk)
        self._chunk = bytearray()
        if self._sha is not None:
            self._sha.update(data)
            if last:
                self._digests[self._file] = self._sha.hexdigest()
        self._frame(data, (self._file, self._chunk_no, last))
        self._chunk_no += 1

    def _frame(self, data: bytes, what) -> None:
        self._batch.append((data, what))
        self._batch_bytes += len(data)
        if self._batch_bytes >= BATCH:
            self._submit()

    def _submit(self) -> None:
        if not self._batch:
            return
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        self._pending.append((self._pool.submit(self._compress, [d for d, _ in batch]),
                              [(len(d), w) for d, w in batch]))
        while self._pending and (self._pending[0][0].done()
                                 or len(self._pending) > self._ahead):
            self._emit(*self._pending.popleft())

    def _compress(self, pieces: list[bytes]) -> list[tuple[bytes, str]]:
        cctx = getattr(self._local, "cctx", None)
        if cctx is None:
            cctx = self._local.cctx = zstandard.ZstdCompressor(
                level=LEVEL, threads=0, write_checksum=False, write_content_size=True)
        return [(cctx.compress(p), hashlib.sha256(p).hexdigest()) for p in pieces]

    # -- output, in order --

    def _emit(self, future, metas) -> None:
        for (frame, sha), (n, what) in zip(future.result(), metas):
            if what is not None:
                fi, chunk_no, last = what
                entry = self._entries[self._plan.files[fi][2]]
                if chunk_no == 0:
                    entry["offset"] = self.size
                self._chunks.setdefault(fi, []).append((self.size, n, sha))
            self._out(frame)
            if what is not None and last:
                self._finish_file(fi, entry)

    def _finish_file(self, fi: int, entry: dict) -> None:
        chunks = self._chunks.pop(fi)
        entry["endOffset"] = self.size
        if len(chunks) == 1:
            entry["digest"] = "sha256:" + chunks[0][2]
            return
        entry["digest"] = "sha256:" + self._digests.pop(fi)
        at = 0
        extra = []
        for i, (offset, n, sha) in enumerate(chunks):
            fields = {"chunkSize": n, "offset": offset, "chunkDigest": "sha256:" + sha}
            if i == 0:
                entry.update(fields)
            else:
                extra.append({"type": "chunk", "name": entry["name"], "chunkOffset": at,
                              **fields})
            at += n
        self._extra[self._plan.files[fi][2]] = extra

    def _out(self, data: bytes) -> None:
        self.size += len(data)
        self._sink(data)

    # -- the end: TOC, tar-split, footer --

    def close(self) -> None:
        """Ends the content and appends the TOC, tar-split and footer; sets annotations."""
        try:
            if self._in_file or self._need > 0:
                raise ValueError("the tar stream ended inside a part of the layout")
            if self._head:
                self._frame(bytes(self._head), None)
                self._head = bytearray()
            self._submit()
            while self._pending:
                self._emit(*self._pending.popleft())
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._write_metadata()

    def abandon(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _write_metadata(self) -> None:
        cctx = zstandard.ZstdCompressor(level=LEVEL, threads=0, write_checksum=False,
                                        write_content_size=True)
        split = cctx.compress(self._plan.tarsplit)
        entries: list[dict] = []
        for i, e in enumerate(self._entries):
            entries.append(_ordered(e))
            for extra in self._extra.get(i, ()):
                entries.append(_ordered(extra))
        doc = {"version": 1, "entries": entries,
               "tarSplitDigest": "sha256:" + hashlib.sha256(split).hexdigest()}
        toc_json = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
        toc = cctx.compress(toc_json)
        toc_offset = self.size + 8
        split_offset = toc_offset + len(toc) + 8
        footer = (b"".join(n.to_bytes(8, "little") for n in (
            toc_offset, len(toc), len(toc_json), 1,
            split_offset, len(split), len(self._plan.tarsplit))) + chunked.ZSTD_MAGIC)
        for data in (toc, split, footer):
            self._out(chunked.SKIPPABLE_MAGIC + len(data).to_bytes(4, "little") + data)
        prefix = chunked.ANNOTATION_PREFIXES[0]
        self.annotations = {
            prefix + "manifest-checksum": "sha256:" + hashlib.sha256(toc).hexdigest(),
            prefix + "manifest-position": f"{toc_offset}:{len(toc)}:{len(toc_json)}:1",
            prefix + "tarsplit-position":
                f"{split_offset}:{len(split)}:{len(self._plan.tarsplit)}",
        }


# Go's json.Marshal writes minimal.FileMetadata's fields in declaration order.
_FIELDS = ("type", "name", "linkName", "mode", "size", "uid", "gid", "modtime", "accesstime",
           "changetime", "devMajor", "devMinor", "xattrs", "digest", "offset", "endOffset",
           "chunkSize", "chunkOffset", "chunkDigest", "chunkType")


def _ordered(e: dict) -> dict:
    return {k: e[k] for k in _FIELDS if k in e}
