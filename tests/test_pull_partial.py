"""Partial pulls of zstd:chunked layers (registry/partial.py) against the loopback registry:
a store that holds most of a layer's files fetches only the rest, rebuilds the exact tar, and
ends with the same tree, diffIDs and fsck result as a full pull; each way a server answers a
multi-range GET (200, 400, 416, 501, single ranges refused) falls back without downloading
the blob twice; a TOC that lies commits nothing."""

from __future__ import annotations

import hashlib
import json
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from chunkedblobs import build_zstd_chunked
from registry_servers import OCI_CONFIG, OCI_MANIFEST, Fault, RawPusher

import archives as A
from helpers import differences, invoke, invoke_error, snapshot
from layerstore import Store, errors
from layerstore.registry import partial

ZSTD_LAYER = "application/vnd.oci.image.layer.v1.tar+zstd"
_rng = random.Random(15)
SHARED = {f"usr/lib/big{i}.so": _rng.randbytes(150_000 + i) for i in range(6)}
SHARED["etc/os-release"] = b"ID=test\n"
SHARED["usr/lib/twin.so"] = _rng.randbytes(150_000)     # the size of big0.so
NEW = {"etc/new.conf": b"fresh\n" * 10}
# New files at both ends of the layer: their ranges cannot merge into one.
SPREAD = {**NEW, **SHARED, "etc/other": b"other\n" * 400}


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _push_chunked(host: str, repo: str, files: dict, *, tarsplit=True, annotations=True,
                  lies=None) -> tuple[str, int, str, str]:
    """An image of one zstd:chunked layer of files; (reference, blob size, diffID, blob
    digest)."""
    blob, ann, tar = build_zstd_chunked(files, tarsplit=tarsplit, lies=lies)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [_sha(tar)]}}).encode()
    pusher = RawPusher(host)
    pusher.blob(repo, blob)
    pusher.blob(repo, config)
    layer = {"mediaType": ZSTD_LAYER, "digest": _sha(blob), "size": len(blob)}
    if annotations:
        layer["annotations"] = ann
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, "digest": _sha(config),
                                      "size": len(config)},
                           "layers": [layer]}).encode()
    tag = hashlib.sha256(manifest).hexdigest()[:12]
    pusher.manifest(repo, tag, manifest, OCI_MANIFEST)
    return f"{host}/{repo}:{tag}", len(blob), _sha(tar), _sha(blob)


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


@pytest.mark.parametrize("tarsplit, annotations",
                         [(True, True), (False, True), (False, False)],
                         ids=["current", "old", "old-no-annotations"])
def test_partial_pull_equals_full_pull_and_moves_little(proxy, tmp_path, tarsplit,
                                                        annotations):
    ref, size, diff_id, blob = _push_chunked(proxy.host, f"partial/t{int(tarsplit)}{int(annotations)}",
                                       {**SHARED, **NEW}, tarsplit=tarsplit,
                                       annotations=annotations)
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


@pytest.mark.parametrize("lie", ["fetched", "local"])
def test_a_lying_toc_commits_nothing(proxy, tmp_path, lie):
    """The manifest vouches for a TOC whose digest for a file is wrong: a fetched file fails
    its TOC check (InvalidTOC); a file the TOC maps onto another stored file makes a tar
    whose diffID is not the config's (DigestMismatch).  Either way nothing is committed."""
    target = "etc/new.conf" if lie == "fetched" else "usr/lib/big0.so"
    other = _sha(SHARED["usr/lib/twin.so"]) if lie == "local" else _sha(b"not it")
    ref, _, _, _ = _push_chunked(proxy.host, f"partial/lie-{lie}", {**SHARED, **NEW},
                              lies={target: other})
    with _holding(tmp_path, "s", SHARED) as store:
        before = [i.id for i in store.images()]
        error = errors.InvalidTOC if lie == "fetched" else errors.DigestMismatch
        with pytest.raises(error):
            store.pull(ref, partial="always")
        assert [i.id for i in store.images()] == before
        assert store.fsck() == []


# -- the planner and the multipart parser, without a registry ------------------------------------

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
