"""zstd:chunked and eStargz tables of contents (layerstore/formats/chunked.py): found from the
annotations (current and old keys) or from the footer alone, checked against their digest,
capped, and parsed so that hostile bytes end in errors.CorruptArchive (InvalidTOC or
LimitExceeded) and nothing else.  Blobs are built here in the format's layout; the corpus
test reads what Debian's skopeo 1.9.3 writes (the old format)."""

from __future__ import annotations

import base64
import gzip
import json
import re
import shutil
import struct
import subprocess
from unittest import mock

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chunkedblobs import _sha, _skippable, _z, build_estargz, build_zstd_chunked
from layerstore import errors
from layerstore.formats import chunked as c


FILES = {"etc/hostname": b"box\n", "usr/bin/tool": bytes(range(256)) * 300,
         "empty": b"", "usr/lib/x.so": b"\x7fELF" + b"z" * 70000}


def _fetch(blob: bytes, log: list | None = None):
    def fetch(offset: int, length: int) -> bytes:
        if log is not None:
            log.append((offset, length))
        return blob[offset:offset + length]
    return fetch


def _content(blob: bytes, f: c.File) -> bytes:
    return zstandard.ZstdDecompressor().stream_reader(blob[f.offset:f.end_offset],
                                                      read_across_frames=True).read()


@pytest.mark.parametrize("tarsplit", [True, False], ids=["current", "old"])
@pytest.mark.parametrize("with_annotations", [True, False], ids=["annotations", "footer"])
def test_zstd_chunked_toc_found_checked_and_ranges_hold_files(tarsplit, with_annotations):
    blob, ann, tar = build_zstd_chunked(FILES, tarsplit=tarsplit)
    log: list = []
    loc, toc, split = c.read_toc(_fetch(blob, log), len(blob),
                                 ann if with_annotations else None)
    assert loc.format == c.ZSTD_CHUNKED
    assert loc.source == ("annotations" if with_annotations else "footer")
    assert toc.verified is with_annotations
    # Annotations: no tail read; footer: exactly one, of the blob's last bytes.
    assert (log[0] == (len(blob) - c.TAIL_SIZE, c.TAIL_SIZE)) is not with_annotations
    assert {f.name: _content(blob, f) for f in toc.files()} == \
        {k: v for k, v in FILES.items() if v}
    if tarsplit:
        rebuilt = b"".join(e.segment if e.segment is not None else FILES[e.name]
                           for e in split)
        assert rebuilt == tar
    else:
        assert split is None and loc.tarsplit is None


def test_old_annotation_keys_and_current_keys_win():
    blob, ann, _ = build_zstd_chunked(FILES, tarsplit=False)
    assert c.locate(ann, len(blob)).digest == ann["io.containers.zstd-chunked.manifest-checksum"]
    both = dict(ann)
    both["io.github.containers.zstd-chunked.manifest-checksum"] = "sha256:" + "0" * 64
    both["io.github.containers.zstd-chunked.manifest-position"] = "1:2:3:1"
    assert c.locate(both, len(blob)).toc == c.Span(1, 2, 3)
    assert c.locate({"org.opencontainers.image.title": "x"}, len(blob)) is None
    assert c.locate(None, len(blob)) is None


def test_plain_blob_is_not_chunked():
    blob = _z(b"just a tar" * 100)
    assert c.read_toc(_fetch(blob), len(blob), None) is None
    assert c.read_toc(_fetch(b"ab"), 2, None) is None


def test_estargz_toc_from_footer_checked_against_annotation():
    blob, ann = build_estargz(FILES)
    loc, toc, split = c.read_toc(_fetch(blob), len(blob), ann)
    assert loc.format == c.ESTARGZ and toc.verified and split is None
    contents = {f.name: gzip.decompress(blob[f.offset:f.end_offset])[:f.size]
                for f in toc.files()}
    assert contents == {k: v for k, v in FILES.items() if v}
    with pytest.raises(errors.InvalidTOC, match="not .* as the layer says"):
        c.read_toc(_fetch(blob), len(blob), {c.ESTARGZ_TOC_DIGEST: "sha256:" + "1" * 64})


def _replace(ann: dict, key: str, value: str) -> dict:
    return {k: (value if k.endswith(key) else v) for k, v in ann.items()}


@pytest.mark.parametrize("change, error", [
    (lambda a, n: _replace(a, "manifest-checksum", "sha256:" + "0" * 64), errors.InvalidTOC),
    (lambda a, n: _replace(a, "manifest-checksum", "md5:x"), errors.InvalidTOC),
    (lambda a, n: _replace(a, "manifest-position", f"{n}:10:10:1"), errors.InvalidTOC),
    (lambda a, n: _replace(a, "manifest-position", "1:2:3:2"), errors.InvalidTOC),
    (lambda a, n: _replace(a, "manifest-position", "1:2:-3:1"), errors.InvalidTOC),
    (lambda a, n: _replace(a, "manifest-position", "0:0:0:1"), errors.InvalidTOC),
    (lambda a, n: _replace(a, "manifest-position", f"0:{n}:{1 << 40}:1"), errors.LimitExceeded),
    (lambda a, n: _replace(a, "tarsplit-position", f"{n}:1:1"), errors.InvalidTOC),
], ids=["digest", "not-digest", "past-end", "type", "negative", "empty", "cap", "tarsplit"])
def test_annotations_that_lie_are_refused(change, error):
    blob, ann, _ = build_zstd_chunked(FILES)
    with pytest.raises(error):
        c.read_toc(_fetch(blob), len(blob), change(ann, len(blob)))


def _with_toc(entries: list, tarsplit_digest=None) -> tuple[bytes, dict]:
    """A zstd:chunked blob around a TOC of these entries (content: 4 KiB of zstd)."""
    content = _z(b"a" * 4096) * 4
    doc = {"version": 1, "entries": entries}
    if tarsplit_digest:
        doc["tarSplitDigest"] = tarsplit_digest
    raw = json.dumps(doc).encode()
    toc_z = _z(raw)
    blob = content + _skippable(toc_z)
    blob += _skippable(struct.pack("<4Q", len(content) + 8, len(toc_z), len(raw), 1)
                       + c.ZSTD_MAGIC)
    return blob, {"io.containers.zstd-chunked.manifest-checksum": _sha(toc_z),
                  "io.containers.zstd-chunked.manifest-position":
                      f"{len(content) + 8}:{len(toc_z)}:{len(raw)}:1"}


REG = {"type": "reg", "name": "f", "size": 4096, "digest": _sha(b"a" * 4096), "offset": 0,
       "endOffset": 10}


@pytest.mark.parametrize("entries, message", [
    ([REG, REG], "listed twice"),
    ([{"type": "chunk", "offset": 0}], "follows no regular file"),
    ([REG, {"type": "chunk", "name": "g", "offset": 1}], "follows no regular file"),
    ([REG, {"type": "chunk", "offset": 11}], "outside its file"),
    ([{**REG, "endOffset": 1 << 20}], "past the content"),
    ([{**REG, "offset": 9, "endOffset": 3}], "ends before it starts"),
    ([{**REG, "digest": ""}], "has no digest"),
    ([{**REG, "digest": "sha256:XYZ"}], "not a sha256 digest"),
    ([{**REG, "type": "socket"}], "unknown type"),
    ([{**REG, "size": -1}], "non-negative"),
    ([{**REG, "size": True}], "non-negative"),
    ([{**REG, "name": ""}], "no name"),
    ([{**REG, "name": "a\0b"}], "not a string"),
    ([{**REG, "xattrs": {"user.x": "!!"}}], "not base64"),
    ([{**REG, "xattrs": {"user.x": "\u00e9AAA"}}], "not base64"),
    (["x"], "not an object"),
], ids=["dup", "orphan-chunk", "chunk-other-name", "chunk-outside", "past-content",
        "backwards", "no-digest", "bad-digest", "type", "negative", "bool", "no-name", "nul",
        "xattr", "xattr-not-ascii", "not-object"])
def test_toc_entries_that_lie_are_refused(entries, message):
    blob, ann = _with_toc(entries)
    for given_ann in (ann, None):
        with pytest.raises(errors.InvalidTOC, match=message):
            c.read_toc(_fetch(blob), len(blob), given_ann)


_INTS = ([0, (1 << 63) - 1], [-1, -(1 << 70), 1 << 63, True, 1.0, None, "1"])
_NAMES = (["x", "x" * c.NAME_LIMIT], [5, None, ["x"], "a\0b", "x" * (c.NAME_LIMIT + 1)])
_DIGESTS = (["", _sha(b"x")], [0, None, "sha256:" + "0" * 63, "md5:0", _sha(b"x").upper()])


@pytest.mark.parametrize("key, values", [
    *[(key, _INTS) for key in ("size", "mode", "uid", "gid", "offset", "endOffset",
                               "chunkOffset", "chunkSize", "devMajor", "devMinor")],
    ("name", _NAMES), ("linkName", _NAMES), ("digest", _DIGESTS), ("chunkDigest", _DIGESTS),
    ("chunkType", (["", "x" * 16], [0, "x" * 17, "a\0"])),
])
def test_every_entry_field_is_checked_and_named(key, values):
    """Each field alone, at its limits and past them (the entry's fields are checked at
    once, and the field to name looked for only then)."""
    valid, invalid = values
    for value in valid:
        blob, ann = _with_toc([{"type": "dir", "name": "d", key: value}])
        assert c.read_toc(_fetch(blob), len(blob), ann)[1].entries
    for value in invalid:
        blob, ann = _with_toc([{"type": "dir", "name": "d", key: value}])
        with pytest.raises(errors.InvalidTOC, match=f": {key} is not a"):
            c.read_toc(_fetch(blob), len(blob), ann)


def test_toc_documents_that_are_not_tocs():
    for doc in (b"[]", b'{"version": 2, "entries": []}', b'{"version": 1}', b"{" * 100000):
        toc_z = _z(doc)
        loc = c.TocLocation(c.ZSTD_CHUNKED, c.Span(0, len(toc_z), len(doc)), None, None, "x")
        with pytest.raises(errors.InvalidTOC):
            c.parse_toc(toc_z, loc)
    # A zstd bomb stops at the cap, whatever the position says.
    bomb = _z(b"\0" * (c.TOC_UNCOMPRESSED_LIMIT + 10))
    loc = c.TocLocation(c.ZSTD_CHUNKED, c.Span(0, len(bomb), 5), None, None, "x")
    with pytest.raises(errors.LimitExceeded):
        c.parse_toc(bomb, loc)


def test_tarsplit_digest_and_records_checked():
    blob, ann, _ = build_zstd_chunked(FILES)
    loc = c.locate(ann, len(blob))
    data = blob[loc.tarsplit.offset:loc.tarsplit.end]
    with pytest.raises(errors.InvalidTOC, match="tar-split is sha256"):
        c.parse_tarsplit(data, loc.tarsplit, "sha256:" + "2" * 64)
    for line in (b'{"type": 3}', b'{"type": 2, "payload": "@@"}', b'{"type": 1}', b"[1]",
                 '{"type": 2, "payload": "\u00e9AAA"}'.encode(),
                 b'{"type": 1, "name": "x", "size": -4}', b"nope"):
        z = _z(line)
        with pytest.raises(errors.InvalidTOC):
            c.parse_tarsplit(z, c.Span(0, len(z), len(line)), None)
    # Its size as the layer says, whatever the pieces it is read in.
    lines = b'{"type": 2, "payload": "AAAA"}\n' * 100
    z = _z(lines)
    for step in (7, 64 << 10):
        with mock.patch.object(c, "LINES_STEP", step):
            for size in (len(lines) - 1, len(lines) + 1):
                with pytest.raises(errors.InvalidTOC,
                                   match=f"decompresses to {len(lines)} bytes, not {size}"):
                    c.parse_tarsplit(z, c.Span(0, len(z), size), None)
            with mock.patch.object(c, "TARSPLIT_UNCOMPRESSED_LIMIT", 100), \
                    pytest.raises(errors.LimitExceeded):
                c.parse_tarsplit(z, c.Span(0, len(z), 50), None)
    # A TOC that points at a tar-split must say its digest.
    toc_blob, toc_ann = _with_toc([REG])
    with pytest.raises(errors.InvalidTOC, match="no tarSplitDigest"):
        c.read_toc(_fetch(toc_blob), len(toc_blob), {
            **toc_ann, "io.containers.zstd-chunked.tarsplit-position": "0:10:10"})


HOSTILE = (errors.InvalidTOC, errors.LimitExceeded)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_blobs_end_in_a_clean_error(data):
    """Any byte of a valid blob's TOC, tar-split or footer changed: the parse succeeds with
    checked fields, or ends in InvalidTOC/LimitExceeded, never another exception."""
    tarsplit = data.draw(st.booleans())
    blob, ann, _ = build_zstd_chunked(FILES, tarsplit=tarsplit)
    start = c.locate(ann, len(blob)).toc.offset - 8
    pos = data.draw(st.integers(start, len(blob) - 1))
    blob = bytearray(blob)
    blob[pos] = data.draw(st.integers(0, 255))
    blob = bytes(blob)
    use_ann = data.draw(st.booleans())
    try:
        got = c.read_toc(_fetch(blob), len(blob), ann if use_ann else None)
    except HOSTILE:
        return
    if got is not None:
        for f in got[1].files():
            assert 0 <= f.offset <= f.end_offset <= got[0].toc.offset


_json = st.recursive(st.none() | st.booleans() | st.integers(-2, 1 << 64) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
_count = st.sampled_from([0, 1, (1 << 63) - 1, 1 << 63, -1, True, 1.0]) | _json
_digest = st.sampled_from(["", _sha(b"")]) | _json
_entry = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(c.ENTRY_TYPES + ("x",)), "name": st.text(max_size=6) | _json,
    "size": st.integers(-1, 1 << 64) | _json, "digest": _digest, "chunkDigest": _digest,
    "offset": st.integers(-1, 100), "endOffset": st.integers(-1, 100), "xattrs": _json,
    "mode": _count, "uid": _count, "gid": _count, "chunkOffset": _count, "chunkSize": _count,
    "devMajor": _count, "devMinor": _count, "linkName": _json, "chunkType": _json})


@settings(max_examples=300, deadline=None)
@given(st.lists(_entry | _json, max_size=6), _json)
def test_fuzz_toc_json(entries, extra):
    doc = {"version": 1, "entries": entries, "tarSplitDigest": extra}
    raw = json.dumps(doc).encode()
    z = _z(raw)
    loc = c.TocLocation(c.ZSTD_CHUNKED, c.Span(50, len(z), len(raw)), None, None, "x")
    try:
        toc = c.parse_toc(z, loc)
    except HOSTILE as exc:
        # The entry check (all fields at once) and the search for the field to name agree.
        assert "is not a valid entry" not in str(exc)
        return
    for e in toc.entries:
        assert e.type in c.ENTRY_TYPES and isinstance(e.name, str)
        for n in (e.size, e.mode, e.uid, e.gid, e.offset, e.end_offset, e.chunk_offset,
                  e.chunk_size, e.dev_major, e.dev_minor):
            assert type(n) is int and 0 <= n < 1 << 63
    for f in toc.files():
        assert f.digest.startswith("sha256:") and 0 <= f.offset <= f.end_offset <= 50


_record = (st.builds(lambda data, at: {"type": 2, "payload": base64.b64encode(data).decode(),
                                        "position": at}, st.binary(max_size=40), st.integers(0, 9))
           | st.builds(lambda name, size: {"type": 1, "name": name, "size": size,
                                           "payload": None, "position": 1},
                       st.text(max_size=6) | _json, st.integers(-1, 1 << 64) | _json)
           | _json)
# Lines that are not one JSON record: two on a line, none, a payload that is not ASCII.
_odd_lines = st.sampled_from(["nope", "{", '{"type": 2} {"type": 2}', "1 2",
                              '{"type": 2, "payload": "\\u00e9AAA"}'])


@settings(max_examples=300, deadline=None)
@given(st.lists(_record.map(json.dumps) | _odd_lines, max_size=8), st.sampled_from([1, 7, 64]))
def test_fuzz_tarsplit_read_at_once_or_line_by_line(lines, step):
    """A tar-split as Go writes it (one record a line, each ending in "\\n") is parsed a
    piece of lines at once; one with "\\r\\n" and blank lines line by line: both give the
    same records, or the same error naming the same line, however it is cut in pieces."""
    def parse(raw: bytes, line_of=lambda n: n):
        z = _z(raw)
        try:
            with mock.patch.object(c, "LINES_STEP", step):
                return c.parse_tarsplit(z, c.Span(0, len(z), len(raw)), None)
        except HOSTILE as exc:
            return re.sub(r"line (\d+)", lambda m: f"line {line_of(int(m[1]))}", str(exc))

    go = "".join(line + "\n" for line in lines).encode()
    other = "".join(line + "\r\n\r\n" for line in lines).encode()   # line k is 2k - 1 here
    assert parse(go) == parse(other, lambda n: (n + 1) // 2)
    if go:      # the last line's "\n" is optional
        assert parse(go) == parse(go[:-1])


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=c.TAIL_SIZE), st.integers(0, 1 << 40))
def test_fuzz_footer(tail, extra):
    try:
        loc = c.parse_footer(tail, len(tail) + extra)
    except HOSTILE:
        return
    if loc is not None:
        assert loc.toc.end <= len(tail) + extra


def test_skopeo_zstd_chunked_old_format(corpus_images, tmp_path):
    """What Debian's skopeo writes (the old format, no tar-split): the TOC found from the
    annotations and from the footer alike, verified, and every file range decompresses to
    content of the TOC's digest."""
    if shutil.which("skopeo") is None:
        pytest.skip("needs skopeo")
    image = min(corpus_images, key=lambda i: sum(p.stat().st_size for p in i.layers))
    archive = tmp_path / "image.tar"
    with open(image.archive, "rb") as f, open(archive, "wb") as out:
        zstandard.ZstdDecompressor().copy_stream(f, out)
    layout = tmp_path / "oci"
    subprocess.run(["skopeo", "copy", "-q", "--format", "oci", "--dest-compress-format",
                    "zstd:chunked", f"docker-archive:{archive}", f"oci:{layout}:x"],
                   check=True, capture_output=True)
    blobs = layout / "blobs" / "sha256"
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_bytes())
    for layer in manifest["layers"]:
        blob = (blobs / layer["digest"][7:]).read_bytes()
        found = [c.read_toc(_fetch(blob), len(blob), ann)
                 for ann in (layer.get("annotations"), None)]
        assert found[0][0].source == "annotations" and found[0][1].verified
        assert found[1][0].source == "footer" and found[0][1].entries == found[1][1].entries
        files = found[0][1].files()
        assert files
        for f in files:
            data = _content(blob, f)
            assert len(data) == f.size and _sha(data) == f.digest
