"""Partial pulls of zstd:chunked layers (registry/partial.py) against the loopback registry:
a store that holds most of a layer's files fetches only the rest, rebuilds the exact tar, and
ends with the same tree, diffIDs and fsck result as a full pull; each way a server answers a
multi-range GET (200, 400, 416, 501, single ranges refused) falls back without downloading
the blob twice; a TOC that lies commits nothing."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import struct
import subprocess
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from chunkedblobs import build_estargz, build_zstd_chunked
from registry_servers import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, Fault, RawPusher

import archives as A
from helpers import (context, differences, go_tool, invoke, invoke_error, oracle_env,
                     snapshot)
from layerstore import Store, errors
from layerstore.formats import chunked
from layerstore.registry import partial

ZSTD_LAYER = "application/vnd.oci.image.layer.v1.tar+zstd"
_rng = random.Random(15)
SHARED = {f"usr/lib/big{i}.so": _rng.randbytes(150_000 + i) for i in range(6)}
SHARED["etc/os-release"] = b"ID=test\n"
SHARED["usr/lib/twin.so"] = _rng.randbytes(150_000)     # the size of big0.so
NEW = {"etc/new.conf": b"fresh\n" * 10}
# New files at both ends of the layer: their ranges cannot merge into one.
SPREAD = {**NEW, **SHARED, "etc/other": b"other\n" * 400}
# eStargz: directories, symlinks and an empty file between files (their headers share the
# member of the content before them), held files of several chunks (only their last chunk's
# member is fetched, for the headers after it) and a new one.
ESTARGZ_CHUNK = 16 << 10
ESTARGZ = {"etc/": None, **NEW, "etc/link": "new.conf", "usr/": None, "usr/lib/": None,
           **SHARED, "usr/lib/empty": b"", "usr/lib/fresh.so": _rng.randbytes(40_000),
           "usr/share/": None, "usr/share/zero": bytes(20_000), "var/": None}


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _push(host: str, repo: str, blob: bytes, ann: dict | None, tar: bytes,
          media_type: str = ZSTD_LAYER) -> tuple[str, int, str, str]:
    """An image of one layer, blob (annotated with ann) whose tar is tar; (reference, blob
    size, diffID, blob digest)."""
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [_sha(tar)]}}).encode()
    pusher = RawPusher(host)
    pusher.blob(repo, blob)
    pusher.blob(repo, config)
    layer = {"mediaType": media_type, "digest": _sha(blob), "size": len(blob)}
    if ann:
        layer["annotations"] = ann
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, "digest": _sha(config),
                                      "size": len(config)},
                           "layers": [layer]}).encode()
    tag = hashlib.sha256(manifest).hexdigest()[:12]
    pusher.manifest(repo, tag, manifest, OCI_MANIFEST)
    return f"{host}/{repo}:{tag}", len(blob), _sha(tar), _sha(blob)


def _push_chunked(host: str, repo: str, files: dict, *, tarsplit=True, annotations=True,
                  lies=None, chunk_size=0) -> tuple[str, int, str, str]:
    """An image of one zstd:chunked layer of files; (reference, blob size, diffID, blob
    digest)."""
    blob, ann, tar = build_zstd_chunked(files, tarsplit=tarsplit, lies=lies,
                                        chunk_size=chunk_size)
    return _push(host, repo, blob, ann if annotations else None, tar)


def _push_estargz(host: str, repo: str, files: dict, *, annotations=True, edit=None
                  ) -> tuple[str, int, str, str]:
    """An image of one eStargz layer of ESTARGZ-like files, cut in 16 KiB chunks."""
    blob, ann = build_estargz(files, chunk_size=ESTARGZ_CHUNK, edit=edit)
    return _push(host, repo, blob, ann if annotations else None, gzip.decompress(blob),
                 OCI_LAYER_GZIP)


def _holding(tmp_path, name: str, files: dict) -> Store:
    """A store holding files from an ordinary (uncompressed) layer."""
    store = Store(tmp_path / name)
    path = tmp_path / f"{name}.tar"
    path.write_bytes(A.docker_archive([([A.layer(*[("f", k, v) for k, v in files.items()])],
                                        ["have:1"])]))
    store.import_archive(path)
    return store


def _tree(store: Store, image_id: str, dest) -> dict:
    store.checkout(image_id, dest)
    return snapshot(str(dest), owners=os.geteuid() == 0)[0]


def _pulled(store: Store, ref: str, partial: str):
    seen = []
    (image,) = store.pull(ref, partial=partial, progress=seen.append)
    (layer,) = seen[-1].layers
    return image, layer


def _blob_gets(proxy, digest: str) -> list[dict]:
    """The GETs of blob digest that moved bytes."""
    return [e for e in proxy.log if e["method"] == "GET" and e["path"].endswith(digest)
            and e["status"] in (200, 206)]


@pytest.mark.parametrize("tarsplit, annotations, chunk_size",
                         [(True, True, 0), (False, True, 0), (False, False, 0),
                          (True, True, 40_000), (False, True, 40_000)],
                         ids=["current", "old", "old-no-annotations", "current-chunks",
                              "old-chunks"])
def test_partial_pull_equals_full_pull_and_moves_little(proxy, tmp_path, tarsplit,
                                                        annotations, chunk_size):
    ref, size, diff_id, blob = _push_chunked(
        proxy.host, f"partial/t{int(tarsplit)}{int(annotations)}{chunk_size}",
        {**SHARED, **NEW}, tarsplit=tarsplit, annotations=annotations, chunk_size=chunk_size)
    with Store(tmp_path / "full") as full:
        whole, wlayer = _pulled(full, ref, "never")
        assert wlayer.action == "downloaded" and wlayer.partial is None
        want = _tree(full, whole.id, tmp_path / "want")
    proxy.reset()
    with _holding(tmp_path, "s", SHARED) as store:
        image, layer = _pulled(store, ref, "always")
        assert layer.action == "partial" and layer.partial["mode"] == "partial"
        assert layer.partial["local"] == len(SHARED) and layer.partial["files"] == len(
            SHARED) + len(NEW)
        assert list(image.diff_ids) == [diff_id] == list(whole.diff_ids)
        assert image.id == whole.id
        assert store.fsck() == []
        assert differences(_tree(store, image.id, tmp_path / "got"), want) == []
        assert layer.bytes <= 0.05 * size, (layer.bytes, size)
        assert all(e["range"] for e in _blob_gets(proxy, blob))    # never a whole-blob GET
        # The TOC's first read, sent while the config was fetched, is not sent again.
        assert len(_blob_gets(proxy, blob)) == layer.requests


def test_a_layer_held_already_costs_at_most_its_first_toc_read(proxy, tmp_path):
    """The first TOC read of each chunked layer starts with the configs, before the store
    says which layers it lacks: a layer it holds costs that one range GET, and nothing is
    left open, also when the registry answers it with the whole blob."""
    ref, _, _, blob = _push_chunked(proxy.host, "partial/held", {**SHARED, **NEW})
    with Store(tmp_path / "s") as store:
        store.pull(ref, partial="always")
        for fault in (None, Fault("status", "GET", "/blobs/", status=200, times=10)):
            proxy.reset()
            if fault is not None:
                proxy.add(fault)
            image, layer = _pulled(store, ref, "always")
            assert layer.action == "skipped" and layer.requests == 0
            assert len([e for e in proxy.log if e["path"].endswith(blob)]) <= 1
        assert not [t.name for t in threading.enumerate() if t.name.startswith("layerstore-toc")]


def test_the_content_map_is_made_by_pulls_that_want_it(proxy, tmp_path):
    """The map is filled from the pull's start when partial pulls are asked for (or the
    store has one), else only once a manifest names a chunked layer: a store that pulls
    only ordinary layers never reads its objects for it."""
    tar = A.layer(("f", "etc/plain", b"plain\n"))
    ref, _, _, _ = _push(proxy.host, "partial/plain", gzip.compress(tar, mtime=0), None, tar,
                         OCI_LAYER_GZIP)
    for mode, made in (("never", False), ("auto", False), ("always", True)):
        with Store(tmp_path / mode) as store:
            store.pull(ref, partial=mode)
            ctx = context(store)
            with ctx.index.read() as txn:
                assert ctx.index.has_sha256_map(txn) == made, mode


def test_a_toc_over_the_caps_is_a_full_pull(proxy, tmp_path):
    """Annotations that give the TOC more than the parser takes (TOC_UNCOMPRESSED_LIMIT):
    the layer is pulled whole, also with its first TOC read started early (which skips it)."""
    blob, ann, tar = build_zstd_chunked({**SHARED, **NEW})
    key = next(k for k in ann if k.endswith("zstd-chunked.manifest-position"))
    at, length, _, kind = ann[key].split(":")
    ann = {**ann, key: f"{at}:{length}:{chunked.TOC_UNCOMPRESSED_LIMIT + 1}:{kind}"}
    ref, _, diff_id, _ = _push(proxy.host, "partial/huge-toc", blob, ann, tar)
    with _holding(tmp_path, "s", SHARED) as store:
        image, layer = _pulled(store, ref, "always")
        assert list(image.diff_ids) == [diff_id] and layer.action == "downloaded"
        assert "over" in layer.partial["reason"], layer.partial


def test_auto_chooses_and_reports(proxy, tmp_path, monkeypatch):
    """auto by the cost model at a fixed link (100 Mbit/s, 20 ms: never by timing)."""
    monkeypatch.setattr(partial, "LINK", (12.5e6, 0.02))
    ref, size, _, _ = _push_chunked(proxy.host, "partial/auto", {**SHARED, **NEW})
    with _holding(tmp_path, "s", SHARED) as store:
        _, layer = _pulled(store, ref, "auto")
        assert layer.partial["mode"] == "partial" and layer.partial["reason"] == "fewer bytes"
        assert layer.partial["bandwidth"] == 12.5e6 and layer.partial["rtt"] == 0.02
    with Store(tmp_path / "empty") as store:       # nothing held: the blob is cheaper
        _, layer = _pulled(store, ref, "auto")
        assert layer.partial["mode"] == "full" and layer.action == "downloaded"
        assert layer.partial["local"] == 0


@pytest.mark.parametrize("status", [400, 416, 501])
def test_multi_range_refused_falls_back_to_single_ranges(proxy, tmp_path, status):
    files = SPREAD
    ref, size, diff_id, blob = _push_chunked(proxy.host, f"partial/refuse{status}", files)
    proxy.reset()
    proxy.add(Fault("status", "GET", "/blobs/", status=status, times=10, range=","))
    with _holding(tmp_path, "s", SHARED) as store:
        image, layer = _pulled(store, ref, "always")
        assert layer.action == "partial" and list(image.diff_ids) == [diff_id]
        assert store.fsck() == []
    refused = [e for e in proxy.log if e.get("fault") == "status"]
    assert len(refused) == 1
    assert layer.bytes <= 0.05 * size
    assert all(e["range"] for e in _blob_gets(proxy, blob))


def test_multi_range_answered_whole_streams_into_a_full_pull(proxy, tmp_path):
    files = SPREAD
    ref, size, diff_id, blob = _push_chunked(proxy.host, "partial/whole", files)
    proxy.reset()
    proxy.add(Fault("ignore_range", "GET", "/blobs/", range=","))
    with _holding(tmp_path, "s", SHARED) as store:
        image, layer = _pulled(store, ref, "always")
        assert list(image.diff_ids) == [diff_id] and store.fsck() == []
        assert layer.action == "downloaded" and layer.partial["mode"] == "full"
    whole = [e for e in _blob_gets(proxy, blob) if e["status"] == 200]
    assert len(whole) == 1                          # the 200 was read, not a second GET
    assert size <= layer.bytes <= size + 4096       # the blob once, plus the TOC


def test_ranges_refused_altogether_pulls_whole(proxy, tmp_path):
    ref, size, diff_id, blob = _push_chunked(proxy.host, "partial/norange", {**SHARED, **NEW})
    proxy.reset()
    proxy.add(Fault("status", "GET", "/blobs/", status=416, times=100, range="bytes"))
    with _holding(tmp_path, "s", SHARED) as store:
        image, layer = _pulled(store, ref, "always")
        assert list(image.diff_ids) == [diff_id] and layer.action == "downloaded"
        assert layer.partial["mode"] == "full"


@pytest.mark.parametrize("lie", ["fetched", "local", "local-size"])
def test_a_lying_toc_commits_nothing(proxy, tmp_path, lie):
    """The manifest vouches for a TOC whose digest for a file is wrong: a fetched file fails
    its TOC check (InvalidTOC); a file the TOC maps onto another stored file of its size
    makes a tar whose diffID is not the config's (DigestMismatch); one the TOC maps onto a
    stored file of another size is not taken from the store, so it is fetched and fails its
    check.  Either way nothing is committed."""
    target = "usr/lib/big0.so" if lie == "local" else "etc/new.conf"
    other = _sha(b"not it") if lie == "fetched" else _sha(SHARED["usr/lib/twin.so"])
    ref, _, _, _ = _push_chunked(proxy.host, f"partial/lie-{lie}", {**SHARED, **NEW},
                              lies={target: other})
    with _holding(tmp_path, "s", SHARED) as store:
        before = [i.id for i in store.images()]
        error = errors.DigestMismatch if lie == "local" else errors.InvalidTOC
        with pytest.raises(error):
            store.pull(ref, partial="always")
        # The content map's fill and the layers' preparers use the index: none outlives
        # the pull (the caller may close the store at once).
        assert not [t.name for t in threading.enumerate()
                    if t.name.startswith(("layerstore-contentmap", "layerstore-partial"))]
        assert [i.id for i in store.images()] == before
        assert store.fsck() == []


# -- the planner and the multipart parser, without a registry ------------------------------------

class _RangeClient:
    """A registry client for partial.fetch: each blob GET answers status with one part that
    covers every range asked for, and is logged with the thread that sent it."""

    def __init__(self, data: bytes, status: int = 206):
        self.data, self.status, self.log = data, status, []

    def get_blob_ranges(self, repo, digest, ranges):
        self.log.append((threading.current_thread().name, len(ranges)))
        start, end = ranges[0][0], ranges[-1][1]
        body = self.data[start:end]
        status, headers = self.status, {"Content-Range": f"bytes {start}-{end - 1}/*"}

        class Answer:
            def __init__(self):
                self.status, self.at = status, 0

            def header(self, name):
                return headers.get(name)

            def read(self, n):
                self.at += n
                return body[self.at - n:self.at]

            def close(self):
                pass
        return Answer()


def test_the_first_range_get_goes_alone_until_the_server_has_answered_multi_range():
    """A layer's first GET goes alone: its answer says how the server takes ranges.  Once a
    multi-range GET of the pull was answered 206, a later layer's GETs all go at once, and
    the rebuild waits for each when it needs it; one answered otherwise then fails the pull
    (the server said yes before), asking for a full pull."""
    data = bytes(range(256)) * 64
    requests = [[(0, 10), (100, 110)], [(1000, 1010), (2000, 2010)]]
    answered = threading.Event()
    client = _RangeClient(data)
    out, pending = partial.fetch(client, "r", "d", len(data), requests, lambda *a: None,
                                 answered)
    assert set(out) == {(0, 10), (100, 110)} and answered.is_set()
    assert client.log[0] == (threading.current_thread().name, 2)
    assert pending[0][1].result()[(2000, 2010)] == data[2000:2010]
    client = _RangeClient(data)
    out, pending = partial.fetch(client, "r", "d", len(data), requests, lambda *a: None,
                                 answered)
    assert out == {} and len(pending) == 2
    got = {}
    for _, future in pending:
        got.update(future.result())
    assert got[(100, 110)] == data[100:110]
    assert all(name.startswith("layerstore-ranges") for name, _ in client.log)
    client = _RangeClient(data, status=200)
    _, pending = partial.fetch(client, "r", "d", len(data), requests, lambda *a: None,
                               answered)
    with pytest.raises(errors.RegistryError, match="--partial never"):
        pending[0][1].result()


def test_coalesce_merges_small_gaps_and_caps_ranges_and_requests():
    ranges = [(i * 10_000, i * 10_000 + 100) for i in range(50)] + [(500_050, 500_060)]
    out = partial.coalesce(ranges, per_request=4, max_requests=3)
    flat = [r for req in out for r in req]
    assert len(out) <= 3 and all(len(req) <= 4 for req in out)
    assert flat == sorted(flat)
    assert all(any(s <= a and b <= e for s, e in flat) for a, b in ranges)
    assert partial.coalesce([(0, 10), (500, 600), (5000, 5001)]) == [[(0, 600), (5000, 5001)]]


def _multipart(parts: list[tuple[int, bytes]], boundary: str = "B0UND") -> bytes:
    out = b""
    for start, data in parts:
        out += (f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Range: bytes {start}-{start + len(data) - 1}/99999\r\n\r\n").encode()
        out += data
    return out + f"\r\n--{boundary}--\r\n".encode()


def test_multipart_parts_sliced_to_what_was_asked():
    body = _multipart([(0, b"abc"), (100, b"--B0UND in the data")])
    got = partial.parse_multipart(body, "multipart/byteranges; boundary=B0UND",
                                  [(0, 3), (103, 108)])
    assert got == {(0, 3): b"abc", (103, 108): b"0UND "}
    with pytest.raises(errors.RegistryError, match="did not send"):
        partial.parse_multipart(body, "multipart/byteranges; boundary=B0UND", [(3, 5)])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(0, 399), st.binary(max_size=8))
def test_fuzz_multipart(junk, at, insert):
    """Any damage to a multipart body: the asked ranges with their exact bytes, or
    RegistryError, never another exception."""
    body = _multipart([(0, b"abc"), (100, b"0123456789")])
    body = body[:at] + insert + body[at + len(insert):] if junk else body + junk
    asked = [(0, 3), (100, 110)]
    try:
        got = partial.parse_multipart(body, "multipart/byteranges; boundary=B0UND", asked)
    except errors.RegistryError:
        return
    assert {k: len(v) for k, v in got.items()} == {(0, 3): 3, (100, 110): 10}


def test_cli_partial_choice_in_json_and_lying_toc_one_error_line(proxy, tmp_path, monkeypatch):
    ref, _, diff_id, _ = _push_chunked(proxy.host, "partial/cli", {**SHARED, **NEW})
    liar, _, _, _ = _push_chunked(proxy.host, "partial/cli-lie", {**SHARED, "x": b"y" * 99},
                                  lies={"x": _sha(b"z")})
    _holding(tmp_path, "s", SHARED).close()
    monkeypatch.setenv("LAYERSTORE_ROOT", str(tmp_path / "s"))
    err = invoke_error(["pull", "--partial", "always", liar])
    assert "TOC" in err
    rc, out, err = invoke("pull", "--partial", "always", "--json", ref)
    assert rc == 0, err
    (layer,) = json.loads(out)["layers"]
    assert layer["action"] == "partial" and layer["diffID"] == diff_id
    assert layer["partial"]["mode"] == "partial" and layer["partial"]["local"] == len(SHARED)
    rc, out, _ = invoke("pull", "--partial", "never", "--json", ref)
    assert rc == 0 and json.loads(out)["layers"][0]["action"] == "skipped"


def test_single_ranges_that_would_move_most_of_the_blob_pull_it_whole(proxy, tmp_path):
    """Old format, every other file held: refused multi-range, the single-range re-plan
    (at most 64 GETs) would merge across held files and move most of the blob: a full
    pull instead, the blob downloaded once."""
    files = {f"f{i:03}": _rng.randbytes(3000) for i in range(200)}
    ref, size, diff_id, blob = _push_chunked(proxy.host, "partial/most", files,
                                             tarsplit=False)
    proxy.reset()
    proxy.add(Fault("status", "GET", "/blobs/", status=501, times=10, range=","))
    held = {k: v for i, (k, v) in enumerate(files.items()) if i % 2 == 0}
    with _holding(tmp_path, "s", held) as store:
        image, layer = _pulled(store, ref, "always")
        assert list(image.diff_ids) == [diff_id] and store.fsck() == []
        assert layer.action == "downloaded" and layer.partial["mode"] == "full"
    gets = _blob_gets(proxy, blob)
    assert [e["range"] is None for e in gets].count(True) == 1
    assert layer.bytes <= size + 64 * 1024      # the blob once, plus the TOC read


# -- eStargz --------------------------------------------------------------------------------------

def _objects(tmp_path, files: dict):
    """have() and object_path() over files kept as objects named by their content's SHA-256
    (what the content map and the object store give a partial pull)."""
    tmp_path.mkdir(exist_ok=True)
    for data in files.values():
        if isinstance(data, bytes) and data:
            (tmp_path / hashlib.sha256(data).hexdigest()).write_bytes(data)
    held = {_sha(v) for v in files.values() if isinstance(v, bytes) and v}
    return (lambda d, n: bytes.fromhex(d[7:]) if d in held else None), (lambda h: tmp_path / h)


def _stream(rebuilt, object_path=None):
    """The tar stream rebuilt's recipes describe, the objects read through object_path
    (the C ingest's reading of them, in Python: an oracle for the recipes)."""
    for recipe in rebuilt.recipes():
        at = 0
        while at < len(recipe):
            kind, n = struct.unpack_from("<cQ", recipe, at)
            at += 9
            if kind == b"D":
                yield recipe[at:at + n]
                at += n
            else:
                assert kind == b"O"
                data = object_path(recipe[at:at + 32].hex()).read_bytes()
                assert len(data) == n
                yield data
                at += 32


def _read(rebuilt, object_path) -> bytes:
    return b"".join(_stream(rebuilt, object_path))


@pytest.mark.parametrize("held", ["none", "shared", "all"])
def test_estargz_pieces_decompress_to_exactly_the_tar(tmp_path, held):
    """The ranges between and around files (the first member's headers, each file's content
    and the tar bytes after it, the TOC entry with the end-of-archive blocks, the footer)
    rebuild the blob's tar byte for byte, whichever files are held."""
    blob, ann = build_estargz(ESTARGZ, chunk_size=ESTARGZ_CHUNK)
    loc, toc, _ = chunked.read_toc(lambda o, n: blob[o:o + n], len(blob), ann)
    have, path = _objects(tmp_path, {"none": {}, "shared": SHARED, "all": ESTARGZ}[held])
    p = partial.plan(loc, toc, None, have)
    assert p.format == chunked.ESTARGZ
    assert p.local == {"none": 0, "shared": len(SHARED), "all": p.files}[held]
    fetched = {r: blob[r[0]:r[1]] for r in p.ranges}
    assert _read(partial.Rebuilt(p, fetched, "t"), path) == gzip.decompress(blob)
    if held == "shared":        # a held file of several chunks costs its last one only
        assert p.wire_bytes < 0.2 * len(blob)


@pytest.mark.parametrize("annotations", [True, False], ids=["annotation", "footer"])
def test_estargz_partial_pull_equals_full_pull_and_moves_little(proxy, tmp_path, annotations):
    ref, size, diff_id, blob = _push_estargz(proxy.host, f"partial/esgz{int(annotations)}",
                                             ESTARGZ, annotations=annotations)
    with Store(tmp_path / "full") as full:
        whole, wlayer = _pulled(full, ref, "never")
        want = _tree(full, whole.id, tmp_path / "want")
    assert "stargz.index.json" in want          # the TOC is a tar entry like any other
    proxy.reset()
    with _holding(tmp_path, "s", SHARED) as store:
        image, layer = _pulled(store, ref, "always")
        assert layer.action == "partial" and layer.partial["format"] == "estargz"
        assert layer.partial["local"] == len(SHARED)
        assert list(image.diff_ids) == [diff_id] == list(whole.diff_ids)
        assert image.id == whole.id and store.fsck() == []
        assert differences(_tree(store, image.id, tmp_path / "got"), want) == []
        assert layer.bytes <= 0.2 * size, (layer.bytes, size)
        assert all(e["range"] for e in _blob_gets(proxy, blob))


def test_estargz_without_annotation_is_probed_only_when_asked(proxy, tmp_path, monkeypatch):
    """A gzip layer without the TOC digest annotation costs no tail read in auto mode."""
    monkeypatch.setattr(partial, "LINK", (12.5e6, 0.02))
    ref, size, diff_id, blob = _push_estargz(proxy.host, "partial/esgz-auto", ESTARGZ,
                                             annotations=False)
    proxy.reset()
    with _holding(tmp_path, "s", SHARED) as store:
        _, layer = _pulled(store, ref, "auto")
        assert layer.action == "downloaded" and layer.partial is None
    assert [e["range"] for e in _blob_gets(proxy, blob)] == [None]


def _lie(name: str, **change):
    def edit(entries):
        for e in entries:
            if e["name"] == name and e["type"] == "reg":
                for k, v in change.items():
                    e[k] = v(e) if callable(v) else v
    return edit


def _offset_of(name: str, delta: int):
    def edit(entries):
        (e,) = [e for e in entries if e["name"] == name and e["type"] == "reg"]
        e["offset"] += delta
    return edit


def _last_chunk_digest(name: str):
    def edit(entries):
        [e for e in entries if e["name"] == name and "chunkDigest" in e][-1]["chunkDigest"] = \
            _sha(b"not it")
    return edit


@pytest.mark.parametrize("edit", [
    _lie("usr/lib/fresh.so", digest=_sha(b"not it")),
    _lie("etc/new.conf", size=lambda e: e["size"] + 1),
    _lie("usr/lib/big1.so", size=lambda e: e["size"] - 1),
    _offset_of("usr/lib/fresh.so", 1),
    _offset_of("etc/new.conf", -5),
    _last_chunk_digest("usr/lib/big2.so"),
], ids=["digest", "size-fetched", "size-held", "offset", "offset-back", "chunk-held"])
def test_estargz_lying_toc_commits_nothing(proxy, tmp_path, edit):
    """The annotation vouches for a TOC that lies about a file it fetches (digest, size,
    where its member starts) or one it holds (its size, its last chunk): InvalidTOC, before
    the diffID, and nothing committed."""
    ref, _, _, _ = _push_estargz(proxy.host, f"partial/esgz-lie-{id(edit)}", ESTARGZ,
                                 edit=edit)
    with _holding(tmp_path, "s", SHARED) as store:
        before = [i.id for i in store.images()]
        with pytest.raises(errors.InvalidTOC):
            store.pull(ref, partial="always")
        assert [i.id for i in store.images()] == before
        assert store.fsck() == []


def test_estargz_files_sharing_a_member_are_pulled_whole(proxy, tmp_path):
    """stargz's MinChunkSize puts small files in one member (innerOffset): valid, but not
    rebuildable from ranges: a full pull, which says why."""
    def share(entries):
        regs = [e for e in entries if e.get("offset")]
        regs[1]["offset"] = regs[0]["offset"]
    ref, _, diff_id, _ = _push_estargz(proxy.host, "partial/esgz-shared", ESTARGZ, edit=share)
    with _holding(tmp_path, "s", SHARED) as store:
        image, layer = _pulled(store, ref, "always")
        assert list(image.diff_ids) == [diff_id] and layer.action == "downloaded"
        assert "share a gzip member" in layer.partial["reason"]


# -- eStargz blobs made by Go (tests/tools/goesgz), not by the tests' builder ---------------------

@pytest.fixture(scope="session")
def goesgz(tmp_path_factory):
    """tests/tools/goesgz built once: (tar, chunk size) -> (eStargz blob, its annotations)."""
    out = go_tool("goesgz", tmp_path_factory)

    def make(tar: bytes, chunk_size: int) -> tuple[bytes, dict]:
        proc = subprocess.run([str(out), str(chunk_size)], input=tar, capture_output=True,
                              check=True, env=oracle_env())
        return proc.stdout, {chunked.ESTARGZ_TOC_DIGEST: proc.stderr.decode().strip()}
    return make


GO_FILES = {f"usr/lib/python3/{'long-' * 30}{i}.py": _rng.randbytes(3000 + i)
            for i in range(4)}
GO_FILES.update({"usr/bin/big": _rng.randbytes(300_000), "etc/motd": b"hi\n",
                 "usr/share/doc/copyright": b"(c)\n" * 2000})


def _go_tar() -> bytes:
    """A layer with what sits between files in real ones: directories, symlinks, a hardlink,
    empty files, PAX headers (long names), and files of one and several chunks."""
    dirs = ("etc", "usr", "usr/bin", "usr/lib", "usr/lib/python3", "usr/share", "usr/share/doc")
    files = [item for name, data in GO_FILES.items()
             for item in (("f", name, data), ("f", name + ".empty", b""))]
    return A.layer(*[("d", d) for d in dirs], *files, ("h", "usr/bin/tool", "usr/bin/big"),
                     ("l", "usr/bin/alias", "big"))


@pytest.mark.parametrize("held", ["none", "half", "all"])
def test_go_made_estargz_rebuilds_byte_for_byte(goesgz, tmp_path, held):
    """Go's archive/tar re-encodes the headers and Go's gzip cuts the members: the pieces
    still rebuild the blob's tar exactly, and a held file of several chunks costs its last."""
    blob, ann = goesgz(_go_tar(), 64 << 10)
    loc, toc, _ = chunked.read_toc(lambda o, n: blob[o:o + n], len(blob), ann)
    kept = {"none": {}, "half": dict(list(GO_FILES.items())[::2]), "all": GO_FILES}[held]
    have, path = _objects(tmp_path, kept)
    p = partial.plan(loc, toc, None, have)
    assert p.files == len(GO_FILES) and p.local == len(kept)
    fetched = {r: blob[r[0]:r[1]] for r in p.ranges}
    assert _read(partial.Rebuilt(p, fetched, "t"), path) == gzip.decompress(blob)
    if held == "all":       # usr/bin/big's first four chunks are not fetched
        assert p.wire_bytes < len(blob) - 250_000


def test_go_made_estargz_partial_pull_equals_full_pull(goesgz, proxy, tmp_path):
    blob, ann = goesgz(_go_tar(), 64 << 10)
    ref, size, diff_id, digest = _push(proxy.host, "partial/goesgz", blob, ann,
                                       gzip.decompress(blob), OCI_LAYER_GZIP)
    with Store(tmp_path / "full") as full:
        whole, _ = _pulled(full, ref, "never")
        want = _tree(full, whole.id, tmp_path / "want")
    with _holding(tmp_path, "s", GO_FILES) as store:
        image, layer = _pulled(store, ref, "always")
        assert layer.action == "partial" and layer.partial["local"] == len(GO_FILES)
        assert list(image.diff_ids) == [diff_id] and image.id == whole.id
        assert store.fsck() == []
        assert differences(_tree(store, image.id, tmp_path / "got"), want) == []
        assert layer.bytes < size - 250_000


# -- caps on what a range decompresses to, and the cost model -------------------------------------

@pytest.mark.parametrize("fmt", [chunked.ZSTD_CHUNKED, chunked.ESTARGZ])
def test_a_bomb_between_files_is_cut_short(fmt, monkeypatch):
    """A range of tar headers that expands without bound (64 MiB of zeros from 2 KB of
    zstd): InvalidTOC once it is over the cap, having handed on no more than that.
    Deflate stops at 1032x by itself: the gzip case checks the cut at a lower ratio."""
    zeros = bytes(64 << 20)
    if fmt == chunked.ESTARGZ:
        monkeypatch.setattr(partial, "TAR_RATIO", 64)
        bomb = gzip.compress(zeros, 9, mtime=0)
    else:
        import zstandard
        bomb = zstandard.ZstdCompressor(level=19).compress(zeros)
    cap = max(partial.TAR_FLOOR, partial.TAR_RATIO * len(bomb))
    assert cap < len(zeros)
    p = partial.Plan([partial.Piece(offset=0, end=len(bomb))], [[(0, len(bomb))]],
                     format=fmt)
    rebuilt = partial.Rebuilt(p, {(0, len(bomb)): bomb}, "t")
    got = 0
    with pytest.raises(errors.InvalidTOC, match="tar headers"):
        for data in _stream(rebuilt):
            got += len(data)
    assert got <= cap


def test_tiny_reads_do_not_measure_the_link():
    """A footer and a small TOC, each in about one round trip: the time left for transfer
    is noise (here none), which made the bandwidth 4 GB/s and a 50 MB blob look cheaper
    whole than 12 small requests.  Such reads assume the 100 Mbit/s, 20 ms link."""
    bandwidth, rtt, how = partial.measured_link([(72, 0.02), (4000, 0.02)])
    assert how == "assumed" and (bandwidth, rtt) == partial.ASSUMED_LINK
    p = partial.Plan([], [[(i << 22, (i << 22) + 100_000)] for i in range(12)], files=20,
                     local=18)
    assert partial.worth_it(p, 50_000_000, bandwidth, rtt)
    assert not partial.worth_it(p, 1_500_000, bandwidth, rtt)    # 12 requests cost more
    bandwidth, rtt, how = partial.measured_link([(72, 0.02), (2_000_000, 0.18)])
    assert how == "measured" and rtt == 0.02 and round(bandwidth) == 12_500_450
