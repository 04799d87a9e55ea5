"""push --compress zstd:chunked (formats/chunked_write.py) on real registries on 127.0.0.1:
the blob parses by the format's rules (zstd frames, skippable frames, footer = annotations,
TOC digest = annotation, tar-split digest = the TOC's, tar-split + TOC ranges rebuild the
diffID, TOC entries = Go's archive/tar reading of the layer, as c/storage requires), the
recipe is deterministic, reused blobs keep their annotations, a layer the format cannot
describe goes as plain zstd, and a partial pull of what we pushed moves only the missing
files (on the corpus: <= 3% of the blob bytes in <= 10 requests per layer)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import urllib.request
from datetime import datetime

import pytest
import zstandard
from registry_servers import RegistryServer

import archives as A
from helpers import differences, invoke, snapshot
from layerstore import Store
from layerstore.formats import chunked, chunked_write

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
BIG = hashlib.shake_256(b"a file of three chunks").digest(2 * chunked_write.CHUNK + 12345)
SHARED = {f"usr/lib/shared{i}.so": hashlib.shake_256(b"s%d" % i).digest(5000 + i * 997)
          for i in range(40)}
NEW = {"usr/bin/new": b"new program\n" * 300, "etc/new.conf": b"x=1\n"}


def _rich_layer() -> bytes:
    """Every kind of entry, a PAX long name, xattrs, a sub-second mtime, a file of three
    chunks, an empty file and a whiteout."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        def add(name, kind=tarfile.REGTYPE, data=b"", **kw):
            ti = tarfile.TarInfo(name)
            ti.type, ti.size, ti.mtime, ti.mode = kind, len(data), 1700000000, 0o644
            for k, v in kw.items():
                setattr(ti, k, v)
            tf.addfile(ti, io.BytesIO(data) if data else None)
        add("etc", tarfile.DIRTYPE, mode=0o755)
        add("etc/hello", data=b"hello\n", uid=1000, gid=1000)
        add("etc/" + "n" * 150, data=b"a long name\n")
        add("etc/attrs", data=b"with xattrs\n",
            pax_headers={"SCHILY.xattr.user.note": "v", "mtime": "1700000000.25"})
        add("big", data=BIG, mode=0o755)
        add("empty")
        add("etc/link", tarfile.SYMTYPE, linkname="hello")
        add("etc/hard", tarfile.LNKTYPE, linkname="etc/hello")
        add("dev-null", tarfile.CHRTYPE, devmajor=1, devminor=3)
        add("fifo", tarfile.FIFOTYPE)
        add(".wh.gone")
    return buf.getvalue()


@pytest.fixture
def registry(tmp_path):
    reg = RegistryServer(tmp_path / "registry")
    yield reg
    reg.stop()


def _get(url: str, accept: str | None = None) -> bytes:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req) as resp:
        return resp.read()


def _pushed(host: str, repo: str, tag: str) -> tuple[dict, list[bytes]]:
    """The manifest at repo:tag and its layer blobs."""
    manifest = json.loads(_get(f"http://{host}/v2/{repo}/manifests/{tag}", OCI_MANIFEST))
    return manifest, [_get(f"http://{host}/v2/{repo}/blobs/{l['digest']}")
                      for l in manifest["layers"]]


def _store(tmp_path, name: str, layers: list[bytes], tag: str = "test/app:1") -> tuple:
    store = Store(tmp_path / name)
    path = tmp_path / f"{name}.tar"
    path.write_bytes(A.docker_archive([(layers, [tag])]))
    (image,) = store.import_archive(path)
    return store, image


def _frames(blob: bytes, end: int) -> set[int]:
    """The offsets where zstd frames start in blob[:end], and end; fails unless blob[:end] is
    whole frames."""
    starts, at = set(), 0
    while at < end:
        starts.add(at)
        d = zstandard.ZstdDecompressor().decompressobj()
        d.decompress(blob[at:end])
        at = end - len(d.unused_data)
    assert at == end
    return starts | {end}


def _unzstd(data: bytes) -> bytes:
    return zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True).read()


def _check_blob(blob: bytes, annotations: dict, diff_id: str) -> tuple[list[dict], bytes]:
    """Checks blob by the format's rules; returns the TOC entries and the layer tar."""
    prefix = chunked.ANNOTATION_PREFIXES[0]
    toc_pos = [int(v) for v in annotations[prefix + "manifest-position"].split(":")]
    split_pos = [int(v) for v in annotations[prefix + "tarsplit-position"].split(":")]
    assert toc_pos[3] == 1
    # Content frames, then three skippable frames: TOC, tar-split, footer.
    content_end = toc_pos[0] - 8
    frames = _frames(blob, content_end)
    at = content_end
    skippable = []
    while at < len(blob):
        assert blob[at:at + 4] == chunked.SKIPPABLE_MAGIC
        n = int.from_bytes(blob[at + 4:at + 8], "little")
        skippable.append((at + 8, blob[at + 8:at + 8 + n]))
        at += 8 + n
    assert at == len(blob) and len(skippable) == 3
    (toc_off, toc), (split_off, split), (_, footer) = skippable
    assert (toc_off, len(toc)) == tuple(toc_pos[:2])
    assert (split_off, len(split)) == tuple(split_pos[:2])
    fields = [int.from_bytes(footer[i:i + 8], "little") for i in range(0, 56, 8)]
    assert fields == toc_pos[:3] + [1] + split_pos and footer[56:] == chunked.ZSTD_MAGIC
    assert annotations[prefix + "manifest-checksum"] == "sha256:" + hashlib.sha256(toc).hexdigest()
    toc_json = _unzstd(toc)
    assert len(toc_json) == toc_pos[2]
    doc = json.loads(toc_json)
    assert doc["version"] == 1
    assert doc["tarSplitDigest"] == "sha256:" + hashlib.sha256(split).hexdigest()
    # An ordinary zstd stream: the content frames are the layer.
    tar = _unzstd(blob[:content_end])
    assert "sha256:" + hashlib.sha256(tar).hexdigest() == diff_id
    if shutil.which("zstd"):
        out = subprocess.run(["zstd", "-dc"], input=blob, capture_output=True, check=True)
        assert out.stdout == tar
    # Each file's range is whole frames holding exactly its content; chunks likewise.
    entries = doc["entries"]
    contents = {}
    for i, e in enumerate(entries):
        if e["type"] == "chunk":
            continue
        if e["type"] != "reg" or not e.get("size"):
            assert "digest" not in e and "offset" not in e
            continue
        assert e["offset"] in frames and e["endOffset"] in frames
        data = _unzstd(blob[e["offset"]:e["endOffset"]])
        assert len(data) == e["size"]
        assert e["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
        contents[e["name"].removeprefix("./")] = data
        if e["size"] > chunked_write.CHUNK:
            chunks = [e] + [c for c in entries[i + 1:i + 4] if c["type"] == "chunk"]
            assert len(chunks) == -(-e["size"] // chunked_write.CHUNK)
            at = 0
            for c in chunks:
                assert c.get("chunkOffset", 0) == at and c["offset"] in frames
                piece = data[at:at + c["chunkSize"]]
                assert c["chunkDigest"] == "sha256:" + hashlib.sha256(piece).hexdigest()
                at += c["chunkSize"]
            assert at == e["size"]
    # The tar-split and the files rebuild the tar.
    rebuilt = bytearray()
    for line in _unzstd(split).splitlines():
        rec = json.loads(line)
        if rec["type"] == 2:
            rebuilt += base64.b64decode(rec["payload"])
        elif rec.get("size"):
            rebuilt += contents[rec["name"]]
    assert bytes(rebuilt) == tar
    return entries, tar


def _go_entries(gotar, tar: bytes) -> list[dict]:
    """The TOC entries c/storage's minimal.NewFileMetadata makes of Go's tar.Headers."""
    types = {"0": "reg", "1": "hardlink", "2": "symlink", "3": "char", "4": "block",
             "5": "dir", "6": "fifo"}
    out, seen = [], set()
    for h in gotar(tar)["headers"]:
        if h["name"] in seen:
            continue
        seen.add(h["name"])
        e = {"type": types[h["typeflag"]], "name": h["name"], "linkName": h["linkname"],
             "mode": h["mode"], "size": h["size"], "uid": h["uid"], "gid": h["gid"],
             "modtime": h["mtime_ns"], "devMajor": h["devmajor"], "devMinor": h["devminor"],
             "xattrs": {k[13:].decode(): base64.b64encode(v).decode()
                        for k, v in h["pax"].items() if k.startswith(b"SCHILY.xattr.")}}
        out.append({k: v for k, v in e.items() if v})
    return out


def _ns(stamp: str) -> int:
    whole, _, frac = stamp.rstrip("Z").partition(".")
    sec = int(datetime.fromisoformat(whole + "+00:00").timestamp())
    return sec * 10**9 + int((frac + "0" * 9)[:9])


def _toc_as_go(entries: list[dict]) -> list[dict]:
    keep = ("type", "name", "linkName", "mode", "size", "uid", "gid", "modtime", "devMajor",
            "devMinor", "xattrs")
    out = []
    for e in entries:
        if e["type"] == "chunk":
            continue
        e = {k: e[k] for k in keep if k in e}
        if "modtime" in e:
            e["modtime"] = _ns(e["modtime"])
        out.append(e)
    return out


def test_our_zstd_chunked_blob_parses_by_the_format_rules(registry, tmp_path, gotar):
    layers = [_rich_layer(), A.layer(("f", "etc/hello", b"hello again\n"), ("wh", "big"))]
    store, image = _store(tmp_path, "s", layers)
    result = store.push(image.id, f"{registry.host}/t/app:1", compress="zstd:chunked")
    assert [b.compression for b in result.layers] == ["zstd:chunked"] * 2
    manifest, blobs = _pushed(registry.host, "t/app", "1")
    assert manifest["mediaType"] == OCI_MANIFEST
    for desc, blob, diff_id, tar_in in zip(manifest["layers"], blobs, image.diff_ids, layers):
        assert desc["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
        entries, tar = _check_blob(blob, desc["annotations"], diff_id)
        assert tar == tar_in
        assert _toc_as_go(entries) == _go_entries(gotar, tar)
        # Our reader finds the same by the annotations (TOC and tar-split in one read) and
        # by the footer alone (one more, of the tail).
        for ann, reads in ((desc["annotations"], 1), (None, 2)):
            log = []

            def fetch(off, n, log=log):
                log.append((off, n))
                return blob[off:off + n]
            loc, toc, split = chunked.read_toc(fetch, len(blob), ann)
            assert loc.tarsplit is not None and split is not None and len(log) == reads
            assert [e.name for e in toc.entries] == [e["name"] for e in entries]
    kinds = {e["type"] for e in _check_blob(blobs[0], manifest["layers"][0]["annotations"],
                                            image.diff_ids[0])[0]}
    assert kinds == {"reg", "chunk", "dir", "symlink", "hardlink", "char", "fifo"}


def test_the_recipe_gives_the_same_blobs_whatever_the_threads(tmp_path, monkeypatch):
    store, image = _store(tmp_path, "s", [_rich_layer()])
    digests = []
    for cpus in (1, 2, 5):
        monkeypatch.setattr(os, "cpu_count", lambda cpus=cpus: cpus)
        reg = RegistryServer(tmp_path / f"r{cpus}")
        try:
            r = store.push(image.id, f"{reg.host}/t/app:1", compress="zstd:chunked")
        finally:
            reg.stop()
        assert r.layers[0].action == "uploaded"
        digests.append((r.digest, [b.digest for b in r.layers]))
    assert digests[0] == digests[1] == digests[2]
    # The recorded blob names its digest in advance: the next upload is one PUT.
    reg = RegistryServer(tmp_path / "again")
    try:
        r = store.push(image.id, f"{reg.host}/t/app:1", compress="zstd:chunked")
    finally:
        reg.stop()
    assert r.layers[0].upload == "monolithic" and r.digest == digests[0][0]


def test_reused_blobs_keep_their_annotations(registry, tmp_path):
    store, image = _store(tmp_path, "s", [_rich_layer()])
    first = store.push(image.id, f"{registry.host}/t/app:1", compress="zstd:chunked")
    again = store.push(image.id, f"{registry.host}/t/app:1", compress="zstd:chunked")
    assert [b.action for b in again.layers] == ["skipped"] and again.digest == first.digest
    other = store.push(image.id, f"{registry.host}/t/other:1", compress="zstd:chunked")
    assert [b.action for b in other.layers] == ["mounted"] and other.digest == first.digest
    manifest, _ = _pushed(registry.host, "t/other", "1")
    assert chunked.locate(manifest["layers"][0]["annotations"], None) is not None
    # Plain zstd is another compression: the chunked blob is not reused for it.
    plain = store.push(image.id, f"{registry.host}/t/plain:1", compress="zstd")
    assert plain.layers[0].action == "uploaded" and plain.layers[0].compression == "zstd"
    manifest, _ = _pushed(registry.host, "t/plain", "1")
    assert "annotations" not in manifest["layers"][0]


def _global_header_layer() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={"comment": "a global header"}) as tf:
        ti = tarfile.TarInfo("a")
        ti.size = 6
        tf.addfile(ti, io.BytesIO(b"first\n"))
    return buf.getvalue()


def _not_utf8_layer() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT,
                      encoding="utf-8", errors="surrogateescape") as tf:
        ti = tarfile.TarInfo(os.fsdecode(b"caf\xe9"))
        ti.size = 6
        tf.addfile(ti, io.BytesIO(b"first\n"))
    return buf.getvalue()


@pytest.mark.parametrize("make", [
    lambda: A.layer(("f", "a", b"first\n"), ("f", "a", b"second\n")),
    _global_header_layer,
    _not_utf8_layer,
], ids=["path-twice", "global-header", "name-not-utf8"])
def test_a_layer_the_format_cannot_describe_goes_as_plain_zstd(registry, tmp_path, make):
    twice = make()
    store, image = _store(tmp_path, "s", [twice, A.layer(("f", "b", b"b\n"))])
    seen = []
    result = store.push(image.id, f"{registry.host}/t/app:1", compress="zstd:chunked",
                        progress=seen.append)
    assert [b.compression for b in result.layers] == ["zstd", "zstd:chunked"]
    assert any(p.detail and "plain zstd" in p.detail for p in seen)
    manifest, blobs = _pushed(registry.host, "t/app", "1")
    assert "annotations" not in manifest["layers"][0]
    assert _unzstd(blobs[0]) == twice


def test_partial_pull_of_our_push_fetches_only_missing_files(registry, tmp_path):
    files = {**SHARED, **NEW}
    src, image = _store(tmp_path, "src", [A.layer(*[("f", k, v) for k, v in files.items()])])
    src.push(image.id, f"{registry.host}/t/app:1", compress="zstd:chunked")
    ref = f"{registry.host}/t/app:1"
    holder, _ = _store(tmp_path, "holder",
                       [A.layer(*[("f", k, v) for k, v in SHARED.items()])], "have:1")
    seen = []
    (pulled,) = holder.pull(ref, partial="always", progress=seen.append)
    (layer,) = seen[-1].layers
    assert layer.action == "partial" and pulled.id == image.id
    assert pulled.diff_ids == image.diff_ids and holder.fsck() == []
    # TOC + tar-split + the two new files' frames, in a few requests.
    assert layer.requests <= 4 and layer.bytes < 0.2 * layer.size, layer
    src.checkout(image.id, tmp_path / "want")
    holder.checkout(pulled.id, tmp_path / "got")
    assert differences(snapshot(str(tmp_path / "got"))[0],
                       snapshot(str(tmp_path / "want"))[0]) == []


def test_cli_zstd_chunked_needs_an_oci_manifest(registry, tmp_path):
    store, image = _store(tmp_path, "s", [A.layer(("f", "a", b"a\n"))])
    store.close()
    root = str(tmp_path / "s")
    code, out, err = invoke("--root", root, "push", image.id, f"{registry.host}/t/app:1",
                            "--compress", "zstd:chunked", "--format", "docker")
    assert code == 1 and "push with --format oci" in err and "Traceback" not in err
    code, out, err = invoke("--root", root, "push", image.id, f"{registry.host}/t/app:1",
                            "--compress", "zstd:chunked", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert [b["compression"] for b in doc["layers"]] == ["zstd:chunked"]


@pytest.mark.slow
def test_corpus_partial_pull_of_our_push_moves_under_3_percent(corpus_dir, registry, tmp_path):
    """corpus/rebuilt pushed by us as zstd:chunked, pulled into a store holding corpus/python
    (from its docker-archive): the same image, tree and fsck as a full pull, <= 3% of the
    blob bytes in <= 10 requests per layer."""
    with Store(tmp_path / "src") as src:
        (image,) = src.import_archive(corpus_dir / "rebuilt.docker.tar.zst")
        src.push(image.id, f"{registry.host}/corpus/rebuilt:c", compress="zstd:chunked")
    ref = f"{registry.host}/corpus/rebuilt:c"
    with Store(tmp_path / "full") as full:
        (whole,) = full.pull(ref, partial="never")
        full.checkout(whole.id, tmp_path / "want")
    want = snapshot(str(tmp_path / "want"), owners=os.geteuid() == 0)[0]
    with Store(tmp_path / "s") as store:
        store.import_archive(corpus_dir / "python.docker.tar.zst")
        seen = []
        (got,) = store.pull(ref, partial="always", progress=seen.append)
        layers = seen[-1].layers
        assert got.id == whole.id == image.id and got.diff_ids == whole.diff_ids
        assert store.fsck() == []
        store.checkout(got.id, tmp_path / "got")
        assert differences(snapshot(str(tmp_path / "got"), owners=os.geteuid() == 0)[0],
                           want) == []
    partial = [l for l in layers if l.action == "partial"]
    assert partial, layers
    blob_bytes = sum(l.size for l in layers)
    moved = sum(l.bytes for l in layers if l.action != "present")
    assert moved <= 0.03 * blob_bytes, (moved, blob_bytes)
    assert all(l.requests <= 10 for l in partial), [l.requests for l in partial]
