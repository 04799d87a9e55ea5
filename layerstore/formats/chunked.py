"""zstd:chunked and eStargz layers: where the table of contents (TOC) is, and what it says.

Both formats are ordinary compressed tar streams (a client that knows nothing of them pulls
them whole) in which every regular file's content starts new compressed frames, so one file
can be fetched by byte range, and a TOC lists each file with the SHA-256 of its content and
its compressed byte range.  The formats are defined by code (research/registry.md, A.8):

zstd:chunked (containers/storage pkg/chunked): after the content come zstd skippable frames
(magic 50 2A 4D 18, LE32 length) holding the zstd-compressed TOC JSON, the zstd-compressed
tar-split (current format only) and a footer of LE64 fields: TOC offset, compressed length,
uncompressed length, manifest type 1, then (current format) tar-split offset, compressed
length, uncompressed length; then the magic "GnUlInUx".  64 bytes now, 40 in the old format
(c/storage <= 1.43, Debian's skopeo 1.9.3).  The layer annotations say the same:
`io.github.containers.zstd-chunked.manifest-checksum` (sha256 of the *compressed* TOC) and
`...manifest-position` "offset:length:uncompressed:1", `...tarsplit-position`
"offset:length:uncompressed"; the old format used the prefix `io.containers.zstd-chunked.`.

eStargz (stargz-snapshotter docs/estargz.md): gzip members; the TOC is the last tar entry,
`stargz.index.json`, in its own member; a 51-byte empty gzip member whose Extra field holds
"%016xSTARGZ" (the TOC member's offset) ends the blob.  The annotation
`containerd.io/snapshot/stargz/toc.digest` is the sha256 of the *uncompressed* TOC JSON.

Trust: a TOC found by the annotation is checked against the annotation's digest (which the
manifest digest covers).  One found by the footer alone (copiers such as skopeo 1.9 drop the
annotations when they reuse a blob) is an unauthenticated hint: safe only because a partial
pull rebuilds the tar stream and the C ingest checks its diffID against the config.  Either
way every field is checked here before anything uses it, sizes are capped before anything is
fetched or decompressed, and every failure is errors.InvalidTOC.
"""

from __future__ import annotations

import binascii
import bisect
import hashlib
import io
import json
import re
import struct
import tarfile
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterator

from .. import errors

ZSTD_CHUNKED = "zstd:chunked"
ESTARGZ = "estargz"

ANNOTATION_PREFIXES = ("io.github.containers.zstd-chunked.", "io.containers.zstd-chunked.")
ESTARGZ_TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"

# Caps before anything is fetched or decompressed (c/storage allows 150 MiB; ours parses in
# Python, and a layer whose TOC is over them is pulled whole).
TOC_LIMIT = 16 << 20
TOC_UNCOMPRESSED_LIMIT = 64 << 20
TARSPLIT_LIMIT = 64 << 20
TARSPLIT_UNCOMPRESSED_LIMIT = 256 << 20
ENTRY_LIMIT = 1 << 20
NAME_LIMIT = 1 << 16

SKIPPABLE_MAGIC = b"\x50\x2a\x4d\x18"
ZSTD_MAGIC = b"GnUlInUx"
FOOTER_SIZE = 64            # current format; the old one has 40
OLD_FOOTER_SIZE = 40
ESTARGZ_FOOTER_SIZE = 51
TAIL_SIZE = 8 + FOOTER_SIZE  # what one Range GET of the blob's end reads
JOIN_GAP = 64 << 10         # TOC and tar-split this close are read in one Range GET
LINES_STEP = 64 << 10       # tar-split bytes decompressed and parsed at a time

ENTRY_TYPES = ("reg", "hardlink", "symlink", "dir", "char", "block", "fifo", "chunk")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")
_INT_MAX = (1 << 63) - 1


@dataclass(frozen=True)
class Span:
    """A compressed byte range of the blob and the length it decompresses to."""

    offset: int
    length: int
    uncompressed: int

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True)
class TocLocation:
    """Where a layer's TOC (and tar-split) is; digest is the annotation's, None when the
    location came from the footer alone (source "footer")."""

    format: str
    toc: Span
    digest: str | None
    tarsplit: Span | None
    source: str


# Entry, File and TarSplitEntry are made by the thousand per layer on a partial pull's
# critical path: slotted and not frozen (a frozen dataclass's __init__ costs 3-6x as much).

@dataclass(slots=True)
class Entry:
    """One TOC entry.  offset/end_offset: the compressed range of the entry's frames
    (eStargz gives only the start: end_offset is then 0 until Toc computes it)."""

    type: str
    name: str
    size: int = 0
    mode: int = 0
    uid: int = 0
    gid: int = 0
    link_name: str = ""
    digest: str = ""
    offset: int = 0
    end_offset: int = 0
    chunk_offset: int = 0
    chunk_size: int = 0
    chunk_digest: str = ""
    chunk_type: str = ""
    dev_major: int = 0
    dev_minor: int = 0
    xattrs: dict = field(default_factory=dict)


@dataclass(slots=True)
class File:
    """A regular file's content: its SHA-256, size and the compressed range holding all of
    its frames (the reg entry and its chunk entries).  last_offset, last_start, last_digest:
    where its last chunk's frames start, that chunk's offset in the content and its digest
    (eStargz: the tar bytes after a file share its last chunk's gzip member)."""

    name: str
    digest: str
    size: int
    offset: int
    end_offset: int
    last_offset: int = 0
    last_start: int = 0
    last_digest: str = ""


@dataclass
class Toc:
    format: str
    entries: list[Entry]
    tarsplit_digest: str | None
    verified: bool          # checked against an annotation digest

    def files(self) -> list[File]:
        """Every regular file with content, in TOC order."""
        out: list[File] = []
        for e in self.entries:
            if e.type == "reg" and e.size > 0:
                out.append(File(e.name, e.digest, e.size, e.offset, e.end_offset, e.offset, 0,
                                e.chunk_digest))
            elif e.type == "chunk" and out and e.end_offset > out[-1].end_offset:
                last = out[-1]
                last.end_offset, last.last_offset = e.end_offset, e.offset
                last.last_start, last.last_digest = e.chunk_offset, e.chunk_digest
        return out


@dataclass(slots=True)
class TarSplitEntry:
    """A tar-split record: a segment of raw tar bytes (headers, padding), or a file whose
    size bytes of content go there."""

    segment: bytes | None
    name: str | None = None
    size: int = 0


def _bad(what: str) -> errors.InvalidTOC:
    return errors.InvalidTOC(what)


# -- where the TOC is ------------------------------------------------------------------------

def _position(value, fields: int, what: str) -> tuple[int, ...]:
    if not isinstance(value, str) or len(value) > 100:
        raise _bad(f"layer annotation {what} is not a position")
    parts = value.split(":")
    if len(parts) != fields or not all(p.isdigit() and p.isascii() for p in parts):
        raise _bad(f"layer annotation {what} is not a position: {value!r}")
    return tuple(int(p) for p in parts)


def _check_span(span: Span, blob_size: int | None, limit: int, ulimit: int, what: str) -> Span:
    if span.length <= 0 or span.uncompressed <= 0:
        raise _bad(f"the {what} is empty")
    if blob_size is not None and span.end > blob_size:
        raise _bad(f"the {what} ({span.offset}+{span.length}) is past the blob's end "
                   f"({blob_size})")
    if span.length > limit or span.uncompressed > ulimit:
        raise errors.LimitExceeded(f"the {what} is {span.length} bytes ({span.uncompressed} "
                                   f"uncompressed), over the {limit} ({ulimit}) layerstore "
                                   "reads")
    return span


def locate(annotations: dict | None, blob_size: int | None) -> TocLocation | None:
    """The TOC's location as a layer descriptor's annotations give it, or None when they name
    none.  The current keys win over the old ones; eStargz's annotation holds only the
    digest, so its location comes from the footer (with_footer)."""
    if not isinstance(annotations, dict):
        return None
    for prefix in ANNOTATION_PREFIXES:
        checksum = annotations.get(prefix + "manifest-checksum")
        position = annotations.get(prefix + "manifest-position")
        if checksum is None and position is None:
            continue
        if not isinstance(checksum, str) or not _DIGEST.match(checksum):
            raise _bad(f"layer annotation {prefix}manifest-checksum is not a sha256 digest")
        offset, length, size, kind = _position(position, 4, prefix + "manifest-position")
        if kind != 1:
            raise _bad(f"zstd:chunked manifest type {kind} is not 1")
        toc = _check_span(Span(offset, length, size), blob_size, TOC_LIMIT,
                          TOC_UNCOMPRESSED_LIMIT, "TOC")
        tarsplit = None
        if prefix + "tarsplit-position" in annotations:
            offset, length, size = _position(annotations[prefix + "tarsplit-position"], 3,
                                             prefix + "tarsplit-position")
            tarsplit = _check_span(Span(offset, length, size), blob_size, TARSPLIT_LIMIT,
                                   TARSPLIT_UNCOMPRESSED_LIMIT, "tar-split")
        return TocLocation(ZSTD_CHUNKED, toc, checksum, tarsplit, "annotations")
    return None


def estargz_digest(annotations: dict | None) -> str | None:
    value = annotations.get(ESTARGZ_TOC_DIGEST) if isinstance(annotations, dict) else None
    if value is None:
        return None
    if not isinstance(value, str) or not _DIGEST.match(value):
        raise _bad(f"layer annotation {ESTARGZ_TOC_DIGEST} is not a sha256 digest")
    return value


def parse_footer(tail: bytes, blob_size: int, digest: str | None = None) -> TocLocation | None:
    """The TOC's location from the last bytes of a blob of blob_size bytes (TAIL_SIZE of
    them, or all of a smaller blob), or None when the blob ends in neither format's footer.
    digest: an eStargz TOC digest from the annotations, kept in the location."""
    if len(tail) > blob_size:
        raise ValueError("tail longer than the blob")
    if tail.endswith(ZSTD_MAGIC):
        for size in (FOOTER_SIZE, OLD_FOOTER_SIZE):
            if len(tail) < size + 8 or tail[-size - 8:-size] != \
                    SKIPPABLE_MAGIC + struct.pack("<I", size):
                continue
            fields = struct.unpack(f"<{size // 8 - 1}Q", tail[-size:-8])
            offset, length, usize, kind = fields[:4]
            if kind != 1:
                raise _bad(f"zstd:chunked footer: manifest type {kind} is not 1")
            content_end = blob_size - size - 8
            toc = _check_span(Span(offset, length, usize), content_end, TOC_LIMIT,
                              TOC_UNCOMPRESSED_LIMIT, "TOC")
            tarsplit = None
            if size == FOOTER_SIZE and fields[5]:
                tarsplit = _check_span(Span(*fields[4:7]), content_end, TARSPLIT_LIMIT,
                                       TARSPLIT_UNCOMPRESSED_LIMIT, "tar-split")
            return TocLocation(ZSTD_CHUNKED, toc, None, tarsplit, "footer")
        return None
    foot = tail[-ESTARGZ_FOOTER_SIZE:]
    if len(foot) == ESTARGZ_FOOTER_SIZE and foot[:4] == b"\x1f\x8b\x08\x04" \
            and foot[12:16] == b"SG\x16\x00" and foot[32:38] == b"STARGZ":
        hexoff = foot[16:32]
        if not re.fullmatch(rb"[0-9a-f]{16}", hexoff):
            raise _bad("eStargz footer: the TOC offset is not hexadecimal")
        offset = int(hexoff, 16)
        content_end = blob_size - ESTARGZ_FOOTER_SIZE
        if offset >= content_end:
            raise _bad(f"eStargz footer: TOC offset {offset} is past the content")
        # The member's uncompressed size is unknown until read: capped by the limit.
        toc = _check_span(Span(offset, content_end - offset, 1), content_end, TOC_LIMIT,
                          TOC_UNCOMPRESSED_LIMIT, "TOC")
        return TocLocation(ESTARGZ, toc, digest, None, "footer")
    return None


# -- what it says ----------------------------------------------------------------------------

def _unzstd(data: bytes, expect: int, limit: int, what: str) -> bytearray:
    """data decompressed: expect bytes, or InvalidTOC (over limit: LimitExceeded)."""
    import zstandard
    # Into one buffer a byte longer than the layer says (or than the cap), returned as it
    # is: 4x cheaper than reading pieces and joining them into bytes, each copy of which
    # goes to newly mapped memory (1.4 MB for a big layer's TOC: ~1 ms of page faults).
    out = bytearray(min(expect, limit) + 1)
    got = 0
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=False)
        with memoryview(out) as view:
            while got < len(out):
                n = reader.readinto(view[got:])     # stops at each frame's end
                if not n:
                    break
                got += n
        _check_size(reader, got, expect, limit, what)
    except zstandard.ZstdError as exc:
        raise _bad(f"the {what} is not zstd: {exc}") from None
    del out[got:]
    return out


def _unzstd_lines(data: bytes, expect: int, limit: int, what: str) -> Iterator[bytes]:
    """data decompressed as _unzstd does, in pieces of whole lines of LINES_STEP bytes or
    so (its size checked at the end).  A big layer's tar-split is 7 MB, and each copy of it
    into newly mapped memory (one buffer, the lines joined, the text json decodes) costs
    ~5 ms of page faults: piece by piece, one piece's memory is reused by the next."""
    import zstandard
    got, cap = 0, min(expect, limit)
    rest: list[bytes] = []          # a line begun, not ended yet
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=False)
        while chunk := reader.read(LINES_STEP):
            got += len(chunk)
            if got > cap:
                break
            end = chunk.rfind(b"\n") + 1
            if end:
                yield b"".join(rest) + chunk[:end] if rest else chunk[:end]
                rest = [chunk[end:]]
            else:
                rest.append(chunk)
        _check_size(reader, got, expect, limit, what)
    except zstandard.ZstdError as exc:
        raise _bad(f"the {what} is not zstd: {exc}") from None
    if any(rest):
        yield b"".join(rest)


def _check_size(reader, got: int, expect: int, limit: int, what: str) -> None:
    """Raises unless reader's output, of which got bytes are read, is expect bytes long:
    over limit LimitExceeded, otherwise InvalidTOC saying how long it is (read on, up to
    the cap, to say so)."""
    if got > expect:
        while got <= limit and (chunk := reader.read(min(1 << 20, limit + 1 - got))):
            got += len(chunk)
    if got > limit:
        raise errors.LimitExceeded(f"the {what} decompresses to over {limit} bytes")
    if got != expect:
        raise _bad(f"the {what} decompresses to {got} bytes, not {expect}")


def _check_digest(data: bytes, digest: str, what: str) -> None:
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if got != digest:
        raise errors.InvalidTOC(f"the {what} is {got}, not {digest} as the layer says")


# An entry's fields by kind, with the longest string each may be.
_STR_FIELDS = (("name", NAME_LIMIT), ("linkName", NAME_LIMIT), ("digest", 80),
               ("chunkDigest", 80), ("chunkType", 16))
_INT_FIELDS = ("size", "mode", "uid", "gid", "offset", "endOffset", "chunkOffset", "chunkSize",
               "devMajor", "devMinor")


def _field_error(e: dict, where: str) -> errors.InvalidTOC:
    """The error naming the first field of TOC entry e that _entries refuses (which checks
    them all at once, and asks here which one failed)."""
    for key, limit in _STR_FIELDS:
        v = e.get(key, "")
        if type(v) is not str or len(v) > limit or "\0" in v:
            return _bad(f"{where}: {key} is not a string")
    for key in ("digest", "chunkDigest"):
        if e.get(key) and not _DIGEST.match(e[key]):
            return _bad(f"{where}: {key} is not a sha256 digest")
    for key in _INT_FIELDS:
        v = e.get(key, 0)
        if type(v) is not int or not 0 <= v <= _INT_MAX:
            return _bad(f"{where}: {key} is not a non-negative integer")
    return _bad(f"{where} is not a valid entry")        # not reached: one of them fails


def _xattrs(xattrs, where: str) -> dict[str, bytes]:
    if not isinstance(xattrs, dict) or len(xattrs) > 1024:
        raise _bad(f"{where}: xattrs is not an object")
    decoded = {}
    for k, v in xattrs.items():
        if not isinstance(v, str) or len(k) > 255 or len(v) > NAME_LIMIT:
            raise _bad(f"{where}: xattr {k!r} is not base64")
        try:
            decoded[k] = binascii.a2b_base64(v, strict_mode=True)
        except ValueError:          # binascii.Error, or a character that is not ASCII
            raise _bad(f"{where}: xattr {k!r} is not base64") from None
    return decoded


def _entries(entries: list, fmt: str, content_end: int) -> list[Entry]:
    """The TOC's entries checked, each on its own and against the others.  A layer has
    thousands and this is on a partial pull's critical path: an entry's fields are checked
    in one expression of locals (a call per field cost twice as much), and only when that
    fails does _field_error look for the field to name."""
    out: list[Entry] = []
    seen: set[str] = set()
    file: Entry | None = None          # the regular file a chunk entry continues
    for i, e in enumerate(entries):
        if type(e) is not dict:         # (json.loads makes dicts, never a subclass)
            raise _bad(f"TOC entry {i} is not an object")
        get = e.get
        kind = get("type")
        if kind not in ENTRY_TYPES:
            raise _bad(f"TOC entry {i}: unknown type {kind!r}")
        name, link, chunk_type = get("name", ""), get("linkName", ""), get("chunkType", "")
        digest, chunk_digest = get("digest", ""), get("chunkDigest", "")
        size, mode, uid, gid = get("size", 0), get("mode", 0), get("uid", 0), get("gid", 0)
        offset, end_offset = get("offset", 0), get("endOffset", 0)
        chunk_offset, chunk_size = get("chunkOffset", 0), get("chunkSize", 0)
        dev_major, dev_minor = get("devMajor", 0), get("devMinor", 0)
        if not (type(name) is type(link) is type(chunk_type) is type(digest)
                is type(chunk_digest) is str
                and len(name) <= NAME_LIMIT and len(link) <= NAME_LIMIT
                and len(chunk_type) <= 16
                and "\0" not in name and "\0" not in link and "\0" not in chunk_type
                # (a digest that matches is short and has no NUL)
                and (not digest or _DIGEST.match(digest))
                and (not chunk_digest or _DIGEST.match(chunk_digest))
                # type(), not isinstance: a JSON true is an int to isinstance
                and type(size) is type(mode) is type(uid) is type(gid) is type(offset)
                is type(end_offset) is type(chunk_offset) is type(chunk_size)
                is type(dev_major) is type(dev_minor) is int
                # The OR of them all is negative when one is, and over _INT_MAX (2^63 - 1)
                # when one is.
                and 0 <= (size | mode | uid | gid | offset | end_offset | chunk_offset
                          | chunk_size | dev_major | dev_minor) <= _INT_MAX):
            raise _field_error(e, f"TOC entry {i}")
        if kind != "chunk" and not name:
            raise _bad(f"TOC entry {i}: no name")
        if kind == "reg" and size > 0 and not digest:
            raise _bad(f"TOC entry {i}: regular file {name!r} has no digest")
        if kind == "chunk" or (kind == "reg" and size > 0):
            if offset > content_end or end_offset > content_end:
                raise _bad(f"TOC entry {i}: range {offset}-{end_offset} is past the content "
                           f"({content_end} bytes)")
            if fmt == ZSTD_CHUNKED and kind == "reg" and end_offset < offset:
                raise _bad(f"TOC entry {i}: range {offset}-{end_offset} ends before it starts")
        if kind == "chunk":
            if file is None or (name and name != file.name):
                raise _bad(f"TOC entry {i}: a chunk that follows no regular file")
            if fmt == ZSTD_CHUNKED and not file.offset <= offset <= file.end_offset:
                raise _bad(f"TOC entry {i}: a chunk outside its file's range")
        elif name in seen:
            raise _bad(f"TOC entry {i}: {name!r} is listed twice")
        else:
            seen.add(name)
        xattrs = get("xattrs")
        entry = Entry(kind, name, size, mode, uid, gid, link, digest, offset, end_offset,
                      chunk_offset, chunk_size, chunk_digest, chunk_type, dev_major, dev_minor,
                      _xattrs(xattrs, f"TOC entry {i}") if xattrs else {})
        if kind != "chunk":
            file = entry if kind == "reg" and size > 0 else None
        out.append(entry)
    return out


def parse_toc(data: bytes, loc: TocLocation) -> Toc:
    """The TOC in data (the blob's bytes at loc.toc), checked against loc.digest when there
    is one (zstd:chunked: of the compressed bytes; eStargz: of the JSON)."""
    if len(data) != loc.toc.length:
        raise _bad(f"the TOC is {len(data)} bytes, not {loc.toc.length}")
    if loc.format == ZSTD_CHUNKED:
        if loc.digest is not None:
            _check_digest(data, loc.digest, "TOC")
        raw = _unzstd(data, loc.toc.uncompressed, TOC_UNCOMPRESSED_LIMIT, "TOC")
    else:
        raw = _estargz_json(data)
        if loc.digest is not None:
            _check_digest(raw, loc.digest, "TOC")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise _bad("the TOC is not JSON") from None
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise _bad("the TOC is not a version 1 table of contents")
    entries = doc.get("entries")
    if not isinstance(entries, list) or len(entries) > ENTRY_LIMIT:
        raise _bad("the TOC has no entry list, or over a million entries")
    tarsplit_digest = doc.get("tarSplitDigest") or None
    if tarsplit_digest is not None and (not isinstance(tarsplit_digest, str)
                                        or not _DIGEST.match(tarsplit_digest)):
        raise _bad("the TOC's tarSplitDigest is not a sha256 digest")
    content_end = loc.toc.offset
    parsed = _entries(entries, loc.format, content_end)
    if loc.format == ESTARGZ:
        _estargz_ends(parsed, content_end)
    return Toc(loc.format, parsed, tarsplit_digest, loc.digest is not None)


def _estargz_json(data: bytes) -> bytes:
    """The JSON of an eStargz TOC member: a gzip member holding the tar entry
    stargz.index.json (capped before it is decompressed further)."""
    d = zlib.decompressobj(31)
    try:
        tar = d.decompress(data, TOC_UNCOMPRESSED_LIMIT + 1)
    except zlib.error as exc:
        raise _bad(f"the eStargz TOC is not gzip: {exc}") from None
    if len(tar) > TOC_UNCOMPRESSED_LIMIT:
        raise errors.LimitExceeded(f"the TOC decompresses to over {TOC_UNCOMPRESSED_LIMIT} bytes")
    try:
        with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
            member = tf.next()
            if member is None or member.name != "stargz.index.json" or not member.isfile():
                raise _bad("the eStargz TOC member does not hold stargz.index.json")
            f = tf.extractfile(member)
            raw = f.read() if f is not None else b""
    except (tarfile.TarError, EOFError):
        raise _bad("the eStargz TOC member is not a tar entry") from None
    if len(raw) != member.size:
        raise _bad("the eStargz TOC is truncated")
    return raw


def _estargz_ends(entries: list[Entry], content_end: int) -> None:
    """eStargz gives each payload's member start only: a file's frames end where the next
    member with a payload (or the TOC) starts (set in entries)."""
    payload = [e for e in entries if e.type == "chunk" or (e.type == "reg" and e.size > 0)]
    starts = sorted({e.offset for e in payload} | {content_end})
    for e in payload:
        e.end_offset = starts[bisect.bisect_right(starts, e.offset)] \
            if e.offset < content_end else content_end


def parse_tarsplit(data: bytes, span: Span, digest: str | None) -> list[TarSplitEntry]:
    """The tar-split records in data (the blob's bytes at span), checked against digest
    (TOC.tarSplitDigest, of the compressed bytes)."""
    if len(data) != span.length:
        raise _bad(f"the tar-split is {len(data)} bytes, not {span.length}")
    if digest is not None:
        _check_digest(data, digest, "tar-split")
    out: list[TarSplitEntry] = []
    append = out.append
    line = 1                # the number of the first line of the piece
    for piece in _unzstd_lines(data, span.uncompressed, TARSPLIT_UNCOMPRESSED_LIMIT,
                               "tar-split"):
        records, numbers, line, not_json = _tarsplit_json(piece, line)
        # Thousands of records: checked with locals, a line's number made for an error only.
        for n, rec in zip(numbers, records):
            if type(rec) is not dict:
                raise _bad(f"tar-split line {n} is not an object")
            kind = rec.get("type")
            if kind == 2:
                payload = rec.get("payload")
                if payload is None:
                    payload = ""
                if type(payload) is not str:
                    raise _bad(f"tar-split line {n}: payload is not base64")
                try:
                    append(TarSplitEntry(binascii.a2b_base64(payload, strict_mode=True)))
                except ValueError:      # binascii.Error, or a character that is not ASCII
                    raise _bad(f"tar-split line {n}: payload is not base64") from None
            elif kind == 1:
                name = rec.get("name")
                if name is None and "name_raw" in rec:
                    raw_name = rec["name_raw"]
                    if not isinstance(raw_name, str):
                        raise _bad(f"tar-split line {n}: name_raw is not a string")
                    name = raw_name.encode("latin-1", "replace").decode("utf-8",
                                                                        "surrogateescape")
                if type(name) is not str or len(name) > NAME_LIMIT:
                    raise _bad(f"tar-split line {n}: no name")
                size = rec.get("size", 0)
                if type(size) is not int or not 0 <= size <= _INT_MAX:
                    raise _bad(f"tar-split line {n}: size is not a non-negative integer")
                append(TarSplitEntry(None, name, size))
            else:
                raise _bad(f"tar-split line {n}: unknown type {kind!r}")
        if not_json is not None:
            raise not_json
    return out


def _tarsplit_json(piece: bytes, line: int
                   ) -> tuple[list, range | list[int], int, errors.InvalidTOC | None]:
    """The JSON values of a piece of tar-split's lines, the first of which is line number
    line (blank lines skipped): (values, the line each is on, the number of the next line,
    None).  When a line is not one JSON value: the values before it, and the error naming
    it for the caller to raise once it has checked them (so the first line that is wrong
    is named, wherever the tar-split was cut in pieces)."""
    # Go writes one record per line, each ending in "\n": then the lines joined by commas
    # are one JSON array, parsed at once (3x faster than line by line), and record k is on
    # line line + k.  Anything else (a blank line, a "\r", a line of two values) takes the
    # long way, line by line.
    if b"\r" not in piece:
        lines = piece.count(b"\n") + (not piece.endswith(b"\n"))
        try:
            records = json.loads(b"[" + piece.rstrip(b"\n").replace(b"\n", b",") + b"]")
        except (ValueError, RecursionError):
            records = None
        if isinstance(records, list) and len(records) == lines:
            return records, range(line, line + lines), line + lines, None
    records, numbers = [], []
    split = piece.splitlines()
    for n, text in enumerate(split, line):
        if text.strip():
            try:
                records.append(json.loads(text))
            except (ValueError, RecursionError):
                return records, numbers, n, _bad(f"tar-split line {n} is not JSON")
            numbers.append(n)
    return records, numbers, line + len(split), None


# -- reading it from a registry --------------------------------------------------------------

Fetch = Callable[[int, int], bytes]     # (offset, length) -> the blob's bytes there


def _toc_read(loc: TocLocation) -> tuple[int, int]:
    """The (offset, length) of the read of loc's TOC: the tar-split too when it follows (8
    bytes of frame header apart), in one request."""
    split = loc.tarsplit
    if split is not None and 0 <= split.offset - loc.toc.end <= JOIN_GAP:
        return loc.toc.offset, split.end - loc.toc.offset
    return loc.toc.offset, loc.toc.length


def first_read(annotations: dict | None, blob_size: int) -> tuple[int, int] | None:
    """The (offset, length) read_toc reads first, known from the manifest alone: the TOC
    where the annotations locate it, else the blob's tail; None when it reads nothing.
    Raises errors.InvalidTOC as read_toc does for annotations that point nowhere."""
    loc = locate(annotations, blob_size)
    if loc is None:
        n = min(TAIL_SIZE, blob_size)
        return (blob_size - n, n) if n > 0 else None
    return _toc_read(loc)


def read_toc(fetch: Fetch, blob_size: int, annotations: dict | None
             ) -> tuple[TocLocation, Toc, list[TarSplitEntry] | None] | None:
    """A layer's location, TOC and tar-split (None for the old format), read through fetch;
    None when the layer is in neither format.  Annotations first; without them, one read of
    the blob's tail."""
    loc = locate(annotations, blob_size)
    if loc is None:
        n = min(TAIL_SIZE, blob_size)
        if n <= 0:
            return None
        tail = fetch(blob_size - n, n)
        if len(tail) != n:
            raise _bad(f"the blob's tail is {len(tail)} bytes, not {n}")
        loc = parse_footer(tail, blob_size, estargz_digest(annotations))
        if loc is None:
            return None
    split = loc.tarsplit
    offset, length = _toc_read(loc)
    data = fetch(offset, length)
    toc_data = data[:loc.toc.length]
    split_data = data[split.offset - offset:] if length > loc.toc.length else None
    toc = parse_toc(toc_data, loc)
    tarsplit = None
    if split is not None:
        if toc.tarsplit_digest is None:
            raise _bad("the layer has a tar-split but its TOC has no tarSplitDigest")
        if split_data is None:
            split_data = fetch(split.offset, split.length)
        tarsplit = parse_tarsplit(split_data, split, toc.tarsplit_digest)
    return loc, toc, tarsplit
