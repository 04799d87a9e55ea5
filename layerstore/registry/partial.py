"""Partial pulls of zstd:chunked and eStargz layers: fetch only the files the store lacks,
rebuild the exact tar stream, and let the C ingest's diffID decide (research/registry.md C.3).

plan() turns a layer's TOC (formats/chunked.py) into the pieces of its tar stream, in order:
raw tar bytes from the tar-split, files the store holds (found by content SHA-256 in
store/contentmap.py), and byte ranges of the blob to fetch.  Without a tar-split the tar
headers come from the blob too: in zstd:chunked's old format from the frames between files;
in eStargz a gzip member starts at each chunk of a file's content and holds the padding and
the headers that follow it (up to the next content), so a file's range decompresses to its
content and then tar bytes, and a held file still costs its last chunk's member; the TOC is
the last tar entry, read already.  The ranges are coalesced (gaps under MERGE_GAP) and
capped: at most RANGES_PER_REQUEST per GET and REQUESTS_PER_LAYER GETs, merging the
cheapest gaps first.

fetch() sends multi-range GETs and goes by the answer to the first: 206
multipart/byteranges (or one part covering what was asked) is used; 200 means the server
sends the whole blob, and that response is handed back to stream into a full pull (never
downloaded twice); 400, 416 and 501 refuse multi-range: the plan is re-coalesced to
single-range GETs, and a refusal of those too ends in a full pull.  Once the server has
answered 206, the other GETs go PARALLEL at a time and the rebuild waits for each only when
it reaches its ranges (a server that refuses one of them then fails the pull: it said yes
before).

Rebuilt is the tar stream as recipes for the C ingest (LayerIngest.feed_recipe): raw tar
bytes and fetched content inline, each held file as its object's id, which the ingest reads
itself (a rebuilt layer is mostly held files: read in Python they cost more than the rest of
the ingest).  Every fetched range is decompressed by the layer's format (zstd frames, or gzip
members, several per range), every file's content to its TOC size and SHA-256, the tar bytes
around them capped (TAR_FLOOR, TAR_RATIO), or the rebuild raises errors.InvalidTOC (a lying
TOC fails before anything is committed); the pipeline then checks the stream's diffID against
the config, which is what vouches for the tar headers and the held files.
"""

from __future__ import annotations

import bisect
import hashlib
import re
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import zstandard

from .. import errors
from ..formats import chunked

MERGE_GAP = 1024                # bytes between ranges always fetched rather than split
RANGES_PER_REQUEST = 1024
REQUESTS_PER_LAYER = 64
SINGLE_RANGE_REQUESTS = 64      # when the server refuses multi-range
PARALLEL = 3                    # range GETs of a layer at once, after the first
PART_OVERHEAD = 160             # multipart framing per part (registry 2.8 sends ~157)
FETCH_LIMIT = 256 << 20         # fetched bytes are held in memory until the rebuild reads them
READ_CHUNK = 1 << 20
RECIPE_BYTES = 4 << 20          # stream bytes per recipe: few hand-overs, the ingest kept busy
GZIP_STEP = 1 << 14             # compressed bytes per zlib call: <= ~16 MiB out (deflate's
                                # ratio is at most 1032)
# The tar bytes a fetched range may decompress to besides file content: headers and padding
# of the entries between two files.  The 7,000 gaps of the corpus images compress at most 72x
# (zstd -3; gzip -9 68x); the worst legitimate case found is a long run of empty files'
# headers with sequential names (10,000 of them: 200x at zstd -3, 300x at -19); runs of
# zeros go further but are short (end-of-archive blocks, a record's padding), which the
# 1 MiB floor covers.  1024x keeps a 3x margin over that and bounds a bomb hidden between
# files by the bytes the plan fetched, before the diffID, which comes last, could catch it:
# zstd reaches 10^4-10^5x; deflate stops at 1032x by itself.
TAR_FLOOR = 1 << 20
TAR_RATIO = 1024

CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)\Z")


# Made by the thousand per layer on a partial pull's critical path: slotted and not frozen
# (a frozen dataclass's __init__ costs 6x as much; plan() makes them, nothing changes them).
@dataclass(slots=True)
class Piece:
    """One piece of the tar stream: raw bytes (data), a stored object (oid), or the blob
    range [offset, end) - a file's frames (digest, size) or frames of headers (digest "").
    A file's range may end in tar bytes after the content (tail: eStargz); skip: bytes of
    content the range starts with that a stored object stands for (a held file's last chunk,
    checked against skip_digest), followed by tar bytes."""

    data: bytes | None = None
    oid: bytes | None = None
    offset: int = 0
    end: int = 0
    digest: str = ""
    size: int = 0
    tail: bool = False
    skip: int = 0
    skip_digest: str = ""


@dataclass
class Plan:
    pieces: list[Piece]
    requests: list[list[tuple[int, int]]]   # per GET, its (start, end) ranges
    files: int = 0                          # regular files with content
    local: int = 0                          # of them, read from the store
    format: str = chunked.ZSTD_CHUNKED

    @property
    def ranges(self) -> list[tuple[int, int]]:
        return [r for request in self.requests for r in request]

    @property
    def wire_bytes(self) -> int:
        return sum(e - s for s, e in self.ranges) + PART_OVERHEAD * len(self.ranges)


# (bytes per second, seconds per request) to use instead of what the TOC's reads measured:
# set by tests (and benchmarks) that must not depend on timing.
LINK: tuple[float, float] | None = None
# When the TOC's reads moved too little to time a transfer, the link is assumed to be the
# issue's 100 Mbit/s at 20 ms: a request then costs what 250 KB do.
ASSUMED_LINK = (12.5e6, 0.02)
MEASURE_BYTES = 256 << 10


def measured_link(timing: list[tuple[int, float]]) -> tuple[float, float, str]:
    """(bandwidth, round trip, how) from the (bytes, seconds) of the reads so far: the
    quickest is taken as the round trip, the rest of the time as transfer.  The bandwidth is
    only as good as that rest: a few KB (a footer, a small TOC) move within the jitter of
    the round trips, and the estimate comes out anywhere from bytes to terabytes a second,
    which would tip the model either way.  Below MEASURE_BYTES, or when the transfer took
    less than one round trip, the link is ASSUMED_LINK instead ("assumed"; "set": LINK)."""
    if LINK is not None:
        return LINK[0], LINK[1], "set"
    rtt = min(t for _, t in timing)
    moved, took = sum(n for n, _ in timing), sum(t for _, t in timing)
    transfer = took - rtt * len(timing)
    if moved < MEASURE_BYTES or transfer < rtt:
        return ASSUMED_LINK[0], ASSUMED_LINK[1], "assumed"
    return moved / transfer, rtt, "measured"


def worth_it(plan: "Plan", blob_size: int, bandwidth: float, rtt: float) -> bool:
    """The cost model: partial when the store holds some of the files and the plan's bytes
    and requests take less time than the blob in one request."""
    partial = plan.wire_bytes / bandwidth + len(plan.requests) * rtt
    return plan.local > 0 and partial < blob_size / bandwidth + rtt


def _norm(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


class Unplannable(Exception):
    """A valid layer whose layout a partial pull cannot rebuild: pulled whole."""


def plan(loc: chunked.TocLocation, toc: chunked.Toc,
         tarsplit: list[chunked.TarSplitEntry] | None, have,
         per_request: int = RANGES_PER_REQUEST,
         max_requests: int = REQUESTS_PER_LAYER,
         known: tuple[tuple[int, int], ...] = ()) -> Plan:
    """The pieces of the layer's tar stream and the GETs that fetch what is missing.
    have(digest, size) -> a stored object id with that content and size, or None.
    known: (start, end) ranges of the blob in hand already (the TOC's reads), never
    requested."""
    files = toc.files()
    pieces: list[Piece] = []
    local = 0
    estargz = loc.format == chunked.ESTARGZ

    def file_pieces(f: chunked.File) -> list[Piece]:
        nonlocal local
        oid = have(f.digest, f.size)
        if oid is not None:
            local += 1
            if not estargz:
                return [Piece(oid=oid, digest=f.digest, size=f.size)]
            # The tar bytes after the file are in its last chunk's member.
            return [Piece(oid=oid, digest=f.digest, size=f.size),
                    Piece(offset=f.last_offset, end=f.end_offset, skip=f.size - f.last_start,
                          skip_digest=f.last_digest)]
        return [Piece(offset=f.offset, end=f.end_offset, digest=f.digest, size=f.size,
                      tail=estargz)]

    if tarsplit is not None:
        by_name = {_norm(f.name): f for f in files}
        used = 0
        for rec in tarsplit:
            if rec.segment is not None:
                if rec.segment:
                    pieces.append(Piece(data=rec.segment))
            elif rec.size > 0:
                f = by_name.get(_norm(rec.name))
                if f is None or f.size != rec.size:
                    raise errors.InvalidTOC(f"the tar-split's file {rec.name!r} "
                                            f"({rec.size} bytes) is not in the TOC")
                used += 1
                pieces.extend(file_pieces(f))
        if used != len(files):
            raise errors.InvalidTOC(f"the TOC lists {len(files)} files with content, the "
                                    f"tar-split {used}")
    else:
        # zstd:chunked's old format: the frames between files hold the tar headers and
        # padding; eStargz: so do the gzip members files' content ends in (file_pieces).
        if estargz:
            starts = [e.offset for e in toc.entries if e.type == "chunk"
                      or (e.type == "reg" and e.size > 0)]
            if len(set(starts)) != len(starts):
                # Several files' content in one member (stargz's MinChunkSize, innerOffset).
                raise Unplannable("files share a gzip member")
        content_end = loc.toc.offset if estargz else loc.toc.offset - 8
        at = 0
        for f in sorted(files, key=lambda f: f.offset):
            if f.offset < at or f.end_offset <= f.offset:
                raise errors.InvalidTOC(f"the TOC's range of {f.name!r} overlaps another "
                                        "or is empty")
            if estargz and not (f.offset <= f.last_offset < f.end_offset
                                and 0 <= f.last_start < f.size):
                raise errors.InvalidTOC(f"the TOC's chunks of {f.name!r} are out of order")
            if f.offset > at:
                pieces.append(Piece(offset=at, end=f.offset))
            pieces.extend(file_pieces(f))
            at = f.end_offset
        if at < content_end:
            pieces.append(Piece(offset=at, end=content_end))
        if estargz:
            # The TOC's member (the last tar entry and the end-of-archive blocks) and the
            # footer (an empty member), each decompressed on its own.
            pieces.append(Piece(offset=loc.toc.offset, end=loc.toc.end))
            pieces.append(Piece(offset=loc.toc.end, end=loc.toc.end + chunked.ESTARGZ_FOOTER_SIZE))
    wanted = {(p.offset, p.end) for p in pieces if p.data is None and p.oid is None}
    for s, e in known:      # (a loop over the few known, not an any() per range)
        wanted = {r for r in wanted if not (s <= r[0] and r[1] <= e)}
    return Plan(pieces, coalesce(sorted(wanted), per_request, max_requests), len(files),
                local, loc.format)


def coalesce(ranges: list[tuple[int, int]], per_request: int = RANGES_PER_REQUEST,
             max_requests: int = REQUESTS_PER_LAYER) -> list[list[tuple[int, int]]]:
    """Sorted (start, end) ranges merged where the gap is under MERGE_GAP, then, while over
    per_request * max_requests, across the smallest gaps; cut into GETs."""
    merged: list[list[int]] = []
    for s, e in sorted(ranges):
        if merged and s - merged[-1][1] < MERGE_GAP:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    limit = per_request * max_requests
    if len(merged) > limit:
        gaps = sorted(range(1, len(merged)), key=lambda i: merged[i][0] - merged[i - 1][1])
        join = set(gaps[:len(merged) - limit])
        out: list[list[int]] = []
        for i, r in enumerate(merged):
            if i in join:
                out[-1][1] = r[1]
            else:
                out.append(list(r))
        merged = out
    flat = [(s, e) for s, e in merged]
    return [flat[i:i + per_request] for i in range(0, len(flat), per_request)]


# -- fetching ----------------------------------------------------------------------------------

class WholeBlob(Exception):
    """The server answered a range GET with the whole blob (200): response streams it."""

    def __init__(self, response):
        super().__init__("the server sent the whole blob")
        self.response = response


class Refused(Exception):
    """The server refused ranges (400, 416, 501) even one at a time."""


def parse_multipart(body: bytes, content_type: str, asked: list[tuple[int, int]]
                    ) -> dict[tuple[int, int], bytes]:
    """The parts of a multipart/byteranges body, by (start, end); each must be one of the
    ranges asked for or cover some of them (a server may merge ranges)."""
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not m:
        raise errors.RegistryError("a multipart answer without a boundary")
    boundary = b"--" + m.group(1).encode()
    parts: dict[tuple[int, int], bytes] = {}
    at = 0
    while True:
        start = body.find(boundary, at)
        if start < 0:
            raise errors.RegistryError("a multipart answer that does not end")
        at = start + len(boundary)
        if body[at:at + 2] == b"--":
            break
        head_end = body.find(b"\r\n\r\n", at)
        if head_end < 0:
            raise errors.RegistryError("a multipart part without headers")
        headers = body[at:head_end].decode("latin-1").split("\r\n")
        cr = next((h.split(":", 1)[1].strip() for h in headers
                   if h.lower().startswith("content-range:")), "")
        rm = CONTENT_RANGE.match(cr)
        if not rm:
            raise errors.RegistryError(f"a multipart part with Content-Range {cr!r}")
        s, e = int(rm.group(1)), int(rm.group(2)) + 1
        data = body[head_end + 4:head_end + 4 + (e - s)]
        if e <= s or len(data) != e - s:
            raise errors.RegistryError("a multipart part shorter than its Content-Range")
        parts[(s, e)] = data
        at = head_end + 4 + (e - s)
    return _cover(parts, asked)


def _cover(parts: dict[tuple[int, int], bytes], asked: list[tuple[int, int]]
           ) -> dict[tuple[int, int], bytes]:
    spans = sorted(parts.items())
    starts = [ps for (ps, _), _ in spans]
    out = {}
    for s, e in asked:
        # The part starting last at or before s covers it, if any does (parts may overlap
        # when a server merges ranges: then one of the earlier ones).
        i = bisect.bisect_right(starts, s) - 1
        while i >= 0:
            (ps, pe), data = spans[i]
            if e <= pe:
                out[(s, e)] = data[s - ps:e - ps]
                break
            i -= 1
        else:
            raise errors.RegistryError(f"the server did not send bytes {s}-{e - 1}")
    return out


def fetch(client, repo: str, digest: str, blob_size: int, requests: list[list[tuple[int, int]]],
          counted, multi_range: threading.Event | None = None
          ) -> tuple[dict[tuple[int, int], bytes], list]:
    """The ranges of requests: (those of the first GET, by (start, end); the later GETs as
    (ranges asked, future of their ranges)).  Raises WholeBlob (a 200: stream it) or Refused
    (ranges refused even one at a time).  counted(requests, bytes) is called as they go.
    The first GET goes alone and says how the server answers ranges; once it has answered
    206, the rest go PARALLEL at a time, and the rebuild waits for each only when it gets
    there (a registry answering 1,024 ranges takes a while to make each answer, and a
    link's round trips add up: the ingest of what came overlaps them).  multi_range: set
    once the server has answered a multi-range GET of the pull with 206; then no GET goes
    alone, and the ingest of the layer starts while they are on their way."""
    out: dict[tuple[int, int], bytes] = {}
    todo = list(requests)
    single = False
    while todo and not (multi_range is not None and multi_range.is_set()):
        asked = todo.pop(0)
        resp = client.get_blob_ranges(repo, digest, asked)
        counted(1, 0)
        if resp.status == 200:
            raise WholeBlob(resp)
        if resp.status != 206:
            resp.close()
            if single:
                raise Refused(f"answered {resp.status} to a single range")
            # Multi-range refused: the rest again as single ranges, merged to a few GETs.
            single = True
            todo = coalesce([r for req in [asked] + todo for r in req], 1,
                            SINGLE_RANGE_REQUESTS)
            if sum(e - s for req in todo for s, e in req) > blob_size // 2:
                raise Refused("single ranges would move most of the blob")
            continue
        out.update(_parts(resp, asked, counted))
        if multi_range is not None and len(asked) > 1 and not single:
            multi_range.set()
        break
    pending = []
    if todo:
        pool = ThreadPoolExecutor(min(PARALLEL, len(todo)),
                                  thread_name_prefix="layerstore-ranges")
        pending = [(asked, pool.submit(_one, client, repo, digest, asked, counted))
                   for asked in todo]
        pool.shutdown(wait=False)       # its threads end when the GETs are done
    return out, pending


def _one(client, repo: str, digest: str, asked: list[tuple[int, int]], counted
         ) -> dict[tuple[int, int], bytes]:
    """One more GET of a server that has answered ranges before."""
    resp = client.get_blob_ranges(repo, digest, asked)
    counted(1, 0)
    if resp.status != 206:
        resp.close()
        raise errors.RegistryError(f"answered {resp.status} to a range GET after answering "
                                   "others with 206: pull again with --partial never",
                                   status=resp.status)
    return _parts(resp, asked, counted)


def _parts(resp, asked: list[tuple[int, int]], counted) -> dict[tuple[int, int], bytes]:
    """The ranges asked for, from a 206 answer (multipart, or one part covering them)."""
    try:
        limit = sum(e - s for s, e in asked) + PART_OVERHEAD * len(asked) + 4096
        body = read_all(resp, limit)
    finally:
        resp.close()
    counted(0, len(body))
    ctype = resp.header("Content-Type") or ""
    if ctype.lower().startswith("multipart/byteranges"):
        return parse_multipart(body, ctype, asked)
    rm = CONTENT_RANGE.match(resp.header("Content-Range") or "")
    if not rm or int(rm.group(2)) + 1 - int(rm.group(1)) != len(body):
        raise errors.RegistryError("a 206 answer without a matching Content-Range")
    return _cover({(int(rm.group(1)), int(rm.group(2)) + 1): body}, asked)


def read_all(resp, limit: int) -> bytes:
    chunks, n = [], 0
    while True:
        data = resp.read(READ_CHUNK)
        if not data:
            return b"".join(chunks)
        n += len(data)
        if n > limit:
            raise errors.RegistryError(f"a range answer over the {limit} bytes asked for")
        chunks.append(data)


# -- the rebuilt stream ------------------------------------------------------------------------

_DATA = struct.Struct("<cQ")          # b"D", n: the next n bytes of the recipe
_OBJECT = struct.Struct("<cQ32s")     # b"O", size, id: a stored object's content


class Rebuilt:
    """The layer's tar stream as recipes (see the module's doc): raw bytes, stored objects,
    and fetched frames decompressed (a file's checked against its TOC size and digest)."""

    def __init__(self, plan: Plan, fetched: dict[tuple[int, int], bytes], label: str,
                 pending=()):
        self.plan, self.label = plan, label
        self._ranges = sorted(fetched.items())
        self._starts = [s for (s, _), _ in self._ranges]
        self._pending = list(pending)       # (ranges asked, future): fetch's later GETs

    def recipes(self):
        """The stream in recipes of about RECIPE_BYTES each (the GETs not waited for yet
        are cancelled when the rebuild stops early)."""
        parts: list[bytes] = []
        n = 0
        try:
            for size, *recipe in self._parts():
                parts += recipe
                n += size
                if n >= RECIPE_BYTES:
                    yield b"".join(parts)
                    parts, n = [], 0
            if parts:
                yield b"".join(parts)
        finally:
            for _, future in self._pending:
                future.cancel()

    def _parts(self):
        """(stream bytes, its recipe...) for each part of the stream, in order."""
        for p in self.plan.pieces:
            if p.oid is not None:
                # The content map gave an object of this size whose content has the digest.
                yield p.size, _OBJECT.pack(b"O", p.size, p.oid)
            else:
                for data in (p.data,) if p.data is not None else self._range(p):
                    yield len(data), _DATA.pack(b"D", len(data)), data

    def _slice(self, s: int, e: int) -> bytes:
        for k, (asked, future) in enumerate(self._pending):
            if asked[0][0] <= s < asked[-1][1]:
                del self._pending[k]
                self._ranges = sorted([*self._ranges, *future.result().items()])
                self._starts = [rs for (rs, _), _ in self._ranges]
                break
        i = bisect.bisect_right(self._starts, s) - 1
        if i >= 0 and e <= self._ranges[i][0][1]:
            return self._ranges[i][1][s - self._starts[i]:e - self._starts[i]]
        for (rs, re_), data in self._ranges:    # ranges that overlap (the TOC's reads)
            if rs <= s and e <= re_:
                return data[s - rs:e - rs]
        raise errors.InvalidTOC(f"{self.label}: bytes {s}-{e - 1} were not fetched")

    def _inflate(self, p: Piece):
        """The bytes of p's range decompressed: zstd frames, or gzip members (each member's
        end starts a new decompressor)."""
        data = self._slice(p.offset, p.end)
        try:
            if self.plan.format != chunked.ESTARGZ:
                reader = zstandard.ZstdDecompressor().stream_reader(data,
                                                                    read_across_frames=True)
                while out := reader.read(READ_CHUNK):
                    yield out
                return
            view, at, d = memoryview(data), 0, None
            while at < len(view):
                d = d or zlib.decompressobj(31)
                step = view[at:at + GZIP_STEP]
                out = d.decompress(step)
                at += len(step) - len(d.unused_data)
                if d.eof:
                    d = None
                if out:
                    yield out
            if d is not None:
                raise zlib.error("the last member is cut short")
        except (zstandard.ZstdError, zlib.error) as exc:
            kind = "gzip members" if self.plan.format == chunked.ESTARGZ else "zstd frames"
            raise errors.InvalidTOC(f"{self.label}: bytes {p.offset}-{p.end - 1} are not "
                                    f"{kind}: {exc}") from None

    def _range(self, p: Piece):
        """p's range as tar bytes: the held content it starts with skipped (and checked),
        a file's content checked against its TOC size and digest, and the tar bytes around
        it capped (TAR_FLOOR, TAR_RATIO)."""
        where = f"{self.label}: bytes {p.offset}-{p.end - 1}"
        skip, content = p.skip, p.size if p.digest else 0
        skip_sha, sha = hashlib.sha256(), hashlib.sha256()
        tar_bytes = 0
        tar_limit = 0 if p.digest and not p.tail else \
            max(TAR_FLOOR, TAR_RATIO * (p.end - p.offset))
        for data in self._inflate(p):
            if skip:
                skip_sha.update(data[:skip])
                data, skip = data[skip:], skip - min(skip, len(data))
            if content and data:
                sha.update(data[:content])
                yield data[:content]
                data, content = data[content:], content - min(content, len(data))
            if data:
                tar_bytes += len(data)
                if tar_bytes > tar_limit:
                    if not tar_limit:
                        raise errors.InvalidTOC(f"{where}: the file there is over the "
                                                f"{p.size} bytes of {p.digest} the TOC says")
                    raise errors.InvalidTOC(f"{where} decompress to over {tar_limit} bytes "
                                            "of tar headers")
                yield data
        if skip or (p.skip_digest and "sha256:" + skip_sha.hexdigest() != p.skip_digest):
            raise errors.InvalidTOC(f"{where}: the last {p.skip} bytes of a file held are "
                                    f"not its last chunk, {p.skip_digest or 'as long'}, as "
                                    "the TOC says")
        if content or (p.digest and "sha256:" + sha.hexdigest() != p.digest):
            raise errors.InvalidTOC(f"{where}: the file there is not the {p.size} bytes of "
                                    f"{p.digest} the TOC says")
