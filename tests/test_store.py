"""Store and import on archives built in the tests: formats, verification, atomicity,
dedup, layer semantics and checkout."""

import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import textwrap
import threading

import pytest

import archives as A
from helpers import context, python_env, state
from layerstore import Store, _native, errors
from layerstore.formats import archive
from layerstore.store import pipeline


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store") as s:
        yield s


L1 = A.layer(("d", "etc"), ("f", "etc/os-release", b"NAME=test\n"), ("f", "bin/sh", b"\x7fELF" * 300, 0o755),
             ("l", "bin/bash", "sh"), ("f", "etc/empty", b""))
L2 = A.layer(("f", "app/main.py", b"print('hi')\n"), ("wh", "etc/os-release"),
             ("h", "app/sh-link", "bin/sh"))
L3 = A.layer(("f", "data/x", b"x" * 5000))


def test_store_root_is_private(tmp_path):
    with Store(tmp_path / "s"):
        pass
    assert os.stat(tmp_path / "s").st_mode & 0o777 == 0o700
    assert sorted(os.listdir(tmp_path / "s")) == ["index", "lock", "objects", "tmp"]


def test_default_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("LAYERSTORE_ROOT")
    with Store() as s:
        assert s.root == str(tmp_path / "xdg" / "layerstore")


@pytest.mark.parametrize("form", ["docker", "docker-symlinked", "docker-gzip", "docker-zstd",
                                  "docker-oci", "oci-dir", "oci-tar", "oci-gzip-layers",
                                  "oci-zstd-layers", "oci-tar-zstd"])
def test_every_format_imports_the_same_image(store, tmp_path, form):
    layers = [L1, L2]
    tags = ["example.com/team/app:1.0"]
    if form.startswith("docker"):
        if form == "docker-oci":
            data = A.docker_oci_archive(layers, tags)
        else:
            data = A.docker_archive([(layers, tags)], symlinked=form == "docker-symlinked")
            data = A.compress(data, form.split("-")[1] if form in ("docker-gzip",
                                                                   "docker-zstd") else "none")
        source = tmp_path / "archive"
        source.write_bytes(data)
    else:
        comp = {"oci-gzip-layers": "gzip", "oci-zstd-layers": "zstd"}.get(form)
        files = A.oci_layout(layers, tags, comp)
        if form == "oci-dir":
            source = tmp_path / "layout"
            A.write_dir(files, source)
        else:
            source = tmp_path / "layout.tar"
            data = A.tar_of(files)
            source.write_bytes(A.compress(data, "zstd") if form == "oci-tar-zstd" else data)
    (image,) = store.import_archive(source)
    assert image.id == A.digest(A.config(layers))
    assert image.diff_ids == (A.digest(L1), A.digest(L2))
    assert image.tags == ("example.com/team/app:1.0",)
    assert store.image("example.com/team/app:1.0") == image
    assert store.image(image.id[7:19]) == image
    paths = {e.path: e for e in store.image_entries(image.id)}
    assert "etc/os-release" not in paths            # whited out by L2
    assert paths["app/sh-link"].object_id == paths["bin/sh"].object_id
    assert paths["bin/bash"].link == "sh"


def test_import_from_a_pipe_reads_once(store, tmp_path):
    data = A.compress(A.docker_archive([([L1, L2], ["app:1"])]), "gzip")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:    # pragma: no cover - the writer
        os.close(r)
        with os.fdopen(w, "wb") as f:
            f.write(data)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        (image,) = store.import_archive(f)
    os.waitpid(pid, 0)
    assert image.tags == ("docker.io/library/app:1",)


def test_metadata_may_come_first_or_last(store, tmp_path):
    for last in (True, False):
        data = A.compress(A.docker_archive([([L1], ["a:1"])], manifest_last=last), "zstd")
        (image,) = store.import_archive(io.BytesIO(data))
        assert image.diff_ids == (A.digest(L1),)


def test_layers_read_side_by_side_make_the_same_image(store, tmp_path, monkeypatch):
    """A source may let several threads read its blobs at once (a registry will fetch layers
    in parallel): their chunks reach the ingest interleaved, one C ingest per layer in flight,
    and the image is the one a serial read makes.  Here a seekable archive is read by two
    threads, each held until the other is inside a layer too."""
    rng = random.Random(11)
    layers = [A.layer(("f", f"d{i}/big", rng.randbytes(3 << 20)), ("f", f"d{i}/small", b"s" * i),
                      ("h", f"d{i}/link", f"d{i}/big")) for i in range(4)]
    (tmp_path / "a.tar").write_bytes(A.docker_archive([(layers, ["side:1"])]))
    with Store(tmp_path / "serial") as serial:
        (want,) = serial.import_archive(tmp_path / "a.tar")
        want_layers = sorted(serial.layers(), key=lambda layer: layer.diff_id)
        want_entries = list(serial.image_entries(want.id))
    both_inside = threading.Barrier(2, timeout=30)
    readers = set()
    read_blob = pipeline._read_blob

    def side_by_side(blob, emit):
        # Each reader waits, with its layer begun, until the other's has begun too: neither
        # layer can end (and its ingest close) before both ingests are open.
        readers.add(threading.get_ident())
        begun = False

        def emit_then_wait(event):
            nonlocal begun
            emit(event)
            if not begun and isinstance(event, pipeline.LayerChunk):
                begun = True
                both_inside.wait()
        read_blob(blob, emit_then_wait)

    in_flight = [0, 0]      # ingests open now, the most at once

    class Counted(_native.LayerIngest):
        def __init__(self, *a):
            super().__init__(*a)
            in_flight[0] += 1
            in_flight[1] = max(in_flight)

        def close(self):
            in_flight[0] -= 1
            super().close()

    monkeypatch.setattr(archive.TarSource, "readers", 2)
    monkeypatch.setattr(pipeline, "_read_blob", side_by_side)
    monkeypatch.setattr(_native, "LayerIngest", Counted)
    (got,) = store.import_archive(tmp_path / "a.tar")
    assert len(readers) == 2 and in_flight == [0, 2]
    assert got == want
    assert sorted(store.layers(), key=lambda layer: layer.diff_id) == want_layers
    assert list(store.image_entries(got.id)) == want_entries
    assert store.fsck() == []


def test_shared_layers_are_stored_once(store, tmp_path):
    (tmp_path / "a.tar").write_bytes(A.docker_archive([([L1, L2], ["a:1"])]))
    (tmp_path / "b.tar").write_bytes(A.docker_archive([([L1, L3], ["b:1"])]))
    store.import_archive(tmp_path / "a.tar")
    before = state(store.root)
    (b,) = store.import_archive(tmp_path / "b.tar")
    after = state(store.root)
    assert after["layers"][A.digest(L1).encode().hex()] == 2
    assert len(after["layers"]) == 3
    # Only L3's one object is new; L1 was skipped without reading (seekable archive).
    assert after["object_files"] == before["object_files"] + 1
    assert store.layer(A.digest(L3)).new_objects == 1
    assert b.size == store.layer(A.digest(L1)).file_bytes + store.layer(A.digest(L3)).file_bytes


def test_streamed_shared_layer_writes_no_objects(store, tmp_path):
    store.import_archive(io.BytesIO(A.compress(A.docker_archive([([L1], ["a:1"])]), "gzip")))
    before = state(store.root)
    store.import_archive(io.BytesIO(A.compress(A.docker_archive([([L1, L3], ["b:1"])]), "gzip")))
    after = state(store.root)
    assert after["object_files"] == before["object_files"] + 1


def test_retagging_moves_the_tag(store, tmp_path):
    (tmp_path / "a.tar").write_bytes(A.docker_archive([([L1], ["app:latest"])]))
    (tmp_path / "b.tar").write_bytes(A.docker_archive([([L1, L3], ["app:latest"])]))
    (a,) = store.import_archive(tmp_path / "a.tar")
    (b,) = store.import_archive(tmp_path / "b.tar", tags=["app:old"])
    assert store.image(a.id).tags == ()
    assert set(store.image("app").tags) == {"docker.io/library/app:latest",
                                           "docker.io/library/app:old"}
    assert store.image("docker.io/library/app:latest").id == b.id


def test_platform_selection(store, tmp_path):
    amd = A.layer(("f", "arch", b"amd64"))
    arm = A.layer(("f", "arch", b"arm64"))
    blobs_a, desc_a = A.oci_blobs([amd], arch="amd64")
    blobs_b, desc_b = A.oci_blobs([arm], arch="arm64")
    index = json.dumps({"schemaVersion": 2, "mediaType":
                        "application/vnd.oci.image.index.v1+json",
                        "manifests": [desc_a, desc_b]}).encode()
    blobs = {**blobs_a, **blobs_b, A.digest(index): index}
    top = {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": A.digest(index),
           "size": len(index), "annotations": {"io.containerd.image.name": "multi:1"}}
    root = tmp_path / "multi"
    A.write_dir(A.oci_layout_files([top], blobs), root)
    (only,) = store.import_archive(root, platform="linux/arm64")
    assert only.platform == "linux/arm64"
    assert only.tags == ("docker.io/library/multi:1",)
    both = store.import_archive(root, all_platforms=True)
    assert sorted(i.platform for i in both) == ["linux/amd64", "linux/arm64"]
    with pytest.raises(errors.UnsupportedFormat, match="no image for platform linux/s390x"):
        store.import_archive(root, platform="linux/s390x")


# ---- verification and atomicity ----------------------------------------------------------

def _tamper(files: dict, **kw) -> dict:
    files = dict(files)
    files.update(kw)
    return files


def _failing_archives():
    good = A.docker_archive([([L1, L2, L3], ["t:1"])])
    with tarfile.open(fileobj=io.BytesIO(good)) as tf:
        members = {m.name: tf.extractfile(m).read() for m in tf if m.isfile()}
    manifest = json.loads(members["manifest.json"])
    cfg_name = manifest[0]["Config"]
    mid = manifest[0]["Layers"][1]
    corrupt = bytearray(members[mid])
    corrupt[100] ^= 0xFF                     # a header checksum breaks mid-archive
    wrong_cfg = json.loads(members[cfg_name])
    wrong_cfg["rootfs"]["diff_ids"][2] = A.digest(b"something else")
    wrong_cfg_b = json.dumps(wrong_cfg).encode()
    renamed = dict(members)
    del renamed[cfg_name]
    renamed[A.digest(wrong_cfg_b)[7:] + ".json"] = wrong_cfg_b
    renamed["manifest.json"] = json.dumps([{**manifest[0], "Config": A.digest(wrong_cfg_b)[7:]
                                            + ".json"}]).encode()
    missing = dict(members)
    del missing[manifest[0]["Layers"][2]]
    escaping = _tamper(members, **{"manifest.json": json.dumps(
        [{**manifest[0], "Layers": ["../../etc/passwd"] + manifest[0]["Layers"][1:]}]).encode()})
    bad_cfg_digest = _tamper(members, **{cfg_name: members[cfg_name] + b" "})
    return {
        "corrupt_layer_mid_archive": (A.tar_of(_tamper(members, **{mid: bytes(corrupt)})),
                                      errors.CorruptArchive, "bad header checksum"),
        "diff_id_mismatch": (A.tar_of(renamed), errors.DigestMismatch,
                             "but the image config says sha256:"),
        "config_digest_mismatch": (A.tar_of(bad_cfg_digest), errors.DigestMismatch,
                                   "hashes to sha256:"),
        "missing_layer": (A.tar_of(missing), errors.MissingBlob, "not in the archive"),
        "layer_path_escapes": (A.tar_of(escaping), errors.UnsafePath, "leaves the archive"),
        "not_an_archive": (b"PK\x03\x04 this is a zip file" + bytes(600),
                           errors.UnsupportedFormat, "not an image archive"),
        "tar_without_manifest": (A.tar_of({"hello.txt": b"hi"}), errors.UnsupportedFormat,
                                 "neither manifest.json"),
    }


FAILING = _failing_archives()


@pytest.mark.parametrize("name", sorted(FAILING))
@pytest.mark.parametrize("how", ["file", "gzip-stream"])
def test_failed_import_changes_nothing(store, tmp_path, name, how):
    (tmp_path / "ok.tar").write_bytes(A.docker_archive([([L1], ["keep:1"])]))
    store.import_archive(tmp_path / "ok.tar")
    before = state(store.root)
    data, exc, words = FAILING[name]
    if how == "file":
        source = tmp_path / "bad"
        source.write_bytes(data)
    else:
        source = io.BytesIO(A.compress(data, "gzip") if name != "not_an_archive" else data)
    with pytest.raises(exc, match=words):
        store.import_archive(source)
    after = state(store.root)
    for key in ("images", "tags", "layers", "objects", "blobs"):
        assert after[key] == before[key], key
    assert os.listdir(os.path.join(store.root, "tmp")) == []


def test_sigint_mid_import_changes_nothing(tmp_path):
    root = tmp_path / "store"
    big = A.layer(*[("f", f"f{i}", os.urandom(200_000)) for i in range(300)])
    (tmp_path / "keep.tar").write_bytes(A.docker_archive([([L1], ["keep:1"])]))
    (tmp_path / "big.tar.gz").write_bytes(A.compress(
        A.docker_archive([([L2, big, L3], ["big:1"])]), "gzip"))
    with Store(root) as s:
        s.import_archive(tmp_path / "keep.tar")
    before = state(root)
    code = textwrap.dedent(f"""
        import sys
        from layerstore import Store
        with Store({str(root)!r}) as s:
            def progress(p):
                if p.bytes_done > 2_000_000 and not getattr(progress, "said", False):
                    progress.said = True
                    print("started", flush=True)
            s.import_archive({str(tmp_path / "big.tar.gz")!r}, progress=progress)
        print("finished", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            stderr=subprocess.PIPE, env=python_env())
    assert proc.stdout.readline().strip() == "started"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert "finished" not in out
    assert "KeyboardInterrupt" in err
    after = state(root)
    for key in ("images", "tags", "layers", "objects", "blobs"):
        assert after[key] == before[key], key
    assert os.listdir(root / "tmp") == []


def test_tag_option_needs_one_image(store, tmp_path):
    (tmp_path / "two.tar").write_bytes(A.docker_archive([([L1], ["a:1"]), ([L3], ["b:1"])]))
    with pytest.raises(errors.LayerstoreError, match="exactly one image"):
        store.import_archive(tmp_path / "two.tar", tags=["c:1"])
    assert len(store.import_archive(tmp_path / "two.tar")) == 2


def test_invalid_digests_never_become_paths(store, tmp_path):
    files = A.oci_layout([L1])
    index = json.loads(files["index.json"])
    index["manifests"][0]["digest"] = "sha256:../../../../etc/passwd"
    files["index.json"] = json.dumps(index).encode()
    A.write_dir(files, tmp_path / "bad")
    with pytest.raises(errors.CorruptArchive, match="invalid manifest digest"):
        store.import_archive(tmp_path / "bad")


def test_symlinked_member_leaving_the_archive(store, tmp_path):
    data = A.docker_archive([([L1], ["a:1"])], symlinked=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        members = [(m, tf.extractfile(m).read() if m.isfile() else None) for m in tf]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for m, content in members:
            if m.issym():
                m.linkname = "../../../etc/passwd"
            tf.addfile(m, io.BytesIO(content) if content is not None else None)
    for source in (buf.getvalue(), A.compress(buf.getvalue(), "gzip")):
        with pytest.raises(errors.UnsafePath, match="points outside the archive"):
            store.import_archive(io.BytesIO(source))


def test_symlink_in_layout_dir_leaving_it(store, tmp_path):
    files = A.oci_layout([L1])
    A.write_dir(files, tmp_path / "lay")
    (tmp_path / "secret").write_bytes(b"{}")
    blob = next(p for p in (tmp_path / "lay/blobs/sha256").iterdir()
                if p.read_bytes() == files["index.json"] or True)
    os.unlink(tmp_path / "lay" / "oci-layout")
    os.symlink("../secret", tmp_path / "lay" / "oci-layout")
    with pytest.raises(errors.UnsafePath, match="outside the archive directory"):
        store.import_archive(tmp_path / "lay")
    assert blob.exists()


# ---- layer semantics --------------------------------------------------------------------

def _tree(store, tmp_path, *layers):
    (tmp_path / "img.tar").write_bytes(A.docker_archive([(list(layers), [])]))
    (image,) = store.import_archive(tmp_path / "img.tar")
    return {e.path: e for e in store.image_entries(image.id)}


def test_whiteouts_and_opaque_directories(store, tmp_path):
    lower = A.layer(("d", "a"), ("f", "a/old", b"1"), ("d", "a/sub"), ("f", "a/sub/x", b"2"),
                    ("f", "keep", b"3"), ("f", "gone", b"4"), ("d", "dir"), ("f", "dir/y", b"5"))
    upper = A.layer(("f", "a/new", b"6"), ("opq", "a"), ("wh", "gone"), ("wh", "dir"),
                    ("wh", "never-existed"))
    t = _tree(store, tmp_path, lower, upper)
    assert sorted(t) == [".", "a", "a/new", "keep"]


def test_replacement_across_types(store, tmp_path):
    lower = A.layer(("d", "x", 0o700), ("f", "x/inner", b"1"), ("f", "y", b"file"),
                    ("d", "z", 0o700), ("f", "z/kept", b"2"))
    upper = A.layer(("f", "x", b"now a file"), ("d", "y", 0o711), ("d", "z", 0o755))
    t = _tree(store, tmp_path, lower, upper)
    assert t["x"].type.value == "file" and "x/inner" not in t
    assert t["y"].type.value == "dir" and t["y"].mode == 0o711
    assert t["z"].mode == 0o755 and "z/kept" in t      # dir over dir: metadata only


def test_symlinks_are_followed_inside_the_root(store, tmp_path):
    lower = A.layer(("l", "lnk", "/"), ("d", "etc"), ("l", "up", "../../.."),
                    ("d", "real"), ("l", "rel", "real"))
    upper = A.layer(("f", "lnk/etc/x", b"via root link"), ("f", "up/escape", b"clamped"),
                    ("f", "rel/file", b"through a relative link"))
    t = _tree(store, tmp_path, lower, upper)
    assert "etc/x" in t and "escape" in t and "real/file" in t
    assert t["lnk"].type.value == "symlink"


def test_a_path_changed_within_one_layer_is_resolved_anew(store, tmp_path):
    """Within one layer, a directory replaced by a symlink (or removed by a whiteout) sends
    the later entries under its name where it now points, not into the directory it was."""
    lower = A.layer(("d", "c"), ("f", "c/z", b"3"), ("d", "c/sub"))
    upper = A.layer(("d", "a"), ("f", "a/x", b"1"), ("d", "b"), ("l", "a", "b"),
                    ("f", "a/y", b"2"), ("f", "c/sub/q", b"4"), ("wh", "c"),
                    ("d", "c"), ("d", "c/sub"), ("f", "c/sub/w", b"5"))
    t = _tree(store, tmp_path, lower, upper)
    assert t["a"].type.value == "symlink" and "b/y" in t and "a/x" not in t
    assert "c/sub/w" in t and "c/z" not in t


def test_hardlink_to_a_lower_layer_and_after_deletion(store, tmp_path):
    lower = A.layer(("f", "orig", b"shared bytes"))
    upper = A.layer(("h", "copy", "orig"))
    top = A.layer(("wh", "orig"))
    t = _tree(store, tmp_path, lower, upper, top)
    assert "orig" not in t and t["copy"].size == len(b"shared bytes")


def test_hardlink_to_nothing_is_rejected(store, tmp_path):
    bad = A.layer(("h", "link", "does/not/exist"))
    (tmp_path / "bad.tar").write_bytes(A.docker_archive([([bad], ["bad:1"])]))
    before = state(store.root)
    with pytest.raises(errors.CorruptArchive, match="not a file of the image"):
        store.import_archive(tmp_path / "bad.tar")
    assert state(store.root)["images"] == before["images"]


# ---- checkout ----------------------------------------------------------------------------

def test_checkout_hardlinks_and_copies(store, tmp_path):
    (tmp_path / "img.tar").write_bytes(A.docker_archive([([L1, L2], ["c:1"])]))
    (image,) = store.import_archive(tmp_path / "img.tar")
    linked = tmp_path / "linked"
    r = store.checkout("c:1", linked, link=True)
    assert r.hardlinked >= 2
    sh = os.stat(linked / "bin/sh")
    obj = os.stat(store.object_path(next(e.object_id for e in store.image_entries(image.id)
                                         if e.path == "bin/sh")))
    assert (sh.st_ino, sh.st_dev) == (obj.st_ino, obj.st_dev)
    assert os.stat(linked / "etc/empty").st_nlink == 1      # the empty file is never shared
    assert os.readlink(linked / "bin/bash") == "sh"
    assert not (linked / "etc/os-release").exists()
    copied = tmp_path / "copied"
    store.checkout("c:1", copied, copy=True)
    st = os.stat(copied / "bin/sh")
    assert st.st_ino != obj.st_ino and st.st_mtime == 1700000000
    assert os.stat(copied / "app/sh-link").st_ino == st.st_ino   # the image's own hardlink
    assert (copied / "bin/sh").read_bytes() == b"\x7fELF" * 300


def test_checkout_needs_an_empty_destination(store, tmp_path):
    (tmp_path / "img.tar").write_bytes(A.docker_archive([([L1], ["c:1"])]))
    store.import_archive(tmp_path / "img.tar")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_bytes(b"")
    with pytest.raises(errors.LayerstoreError, match="is not empty"):
        store.checkout("c:1", tmp_path / "full")
    (tmp_path / "empty").mkdir()
    store.checkout("c:1", tmp_path / "empty")
    assert (tmp_path / "empty" / "bin" / "sh").exists()


def test_unknown_images(store):
    with pytest.raises(errors.ImageNotFound, match="no such image: nope"):
        store.image("nope")
    with pytest.raises(errors.InvalidReference):
        store.import_archive(io.BytesIO(b""), tags=["UPPER/Case:bad tag"])


def test_import_layer_and_add_image(store):
    layer = store.import_layer(io.BytesIO(A.compress(L3, "zstd")))
    assert layer.diff_id == A.digest(L3) and layer.blob_digests
    image = store.add_image(A.config([L3]), tags=["made:by-api"])
    assert store.image("made:by-api").diff_ids == (layer.diff_id,)
    assert store.layer(layer.diff_id).refs == 1
    with pytest.raises(errors.LayerNotFound):
        store.add_image(A.config([L1]))
    assert image.id == A.digest(A.config([L3]))


def test_two_processes_import_overlapping_images(tmp_path):
    shared = A.layer(*[("f", f"s{i}", os.urandom(50_000)) for i in range(100)])
    for n in range(2):
        own = A.layer(*[("f", f"o{i}", os.urandom(20_000)) for i in range(50)])
        (tmp_path / f"img{n}.tar.gz").write_bytes(
            A.compress(A.docker_archive([([shared, own], [f"img:{n}"])]), "gzip"))
    root = tmp_path / "store"
    code = "import sys\nfrom layerstore import Store\nwith Store(sys.argv[1]) as s:\n" \
           "    print(s.import_archive(sys.argv[2])[0].id)\n"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(root),
                               str(tmp_path / f"img{n}.tar.gz")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=python_env())
             for n in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    s = state(root)
    assert len(s["images"]) == 2
    assert s["layers"][A.digest(shared).encode().hex()] == 2
    assert s["object_files"] == 200
    assert all(refs == 1 for refs in s["objects"].values())


def test_a_schema_1_index_is_migrated_to_current(tmp_path):
    """Stores made before pulls (schema 1) open as the current schema: the new tables appear
    empty and every image stays as it was."""
    import lmdb
    path = tmp_path / "old.tar"
    path.write_bytes(A.docker_archive([([A.layer(("f", "a", b"a"))], ["old:1"])]))
    with Store(tmp_path / "s") as s:
        (image,) = s.import_archive(path)
    env = lmdb.open(str(tmp_path / "s" / "index"), max_dbs=16)
    with env.begin(write=True) as txn:
        txn.put(b"schema", b"1", db=env.open_db(b"meta", txn=txn))
    env.close()
    with Store(tmp_path / "s") as s:
        assert s.image("old:1") == image and s.fsck() == []
        index = context(s).index
        with index.read() as txn:
            assert txn.get(b"schema", db=index.db["meta"]) == b"3"
            assert index.repo_digests(txn, image.id) == []


def test_repo_digests_and_blob_locations_go_with_their_image_and_layer(tmp_path):
    path = tmp_path / "a.tar"
    layer = A.layer(("f", "a", b"a"))
    path.write_bytes(A.docker_archive([([layer], ["a:1"])]))
    with Store(tmp_path / "s") as s:
        (image,) = s.import_archive(path)
        index = context(s).index
        ref = "docker.io/library/a@sha256:" + "5" * 64
        blob = "sha256:" + "6" * 64
        with index.write() as txn:
            index.add_repo_digest(txn, ref, image.id)
            rec = index.layer(txn, image.diff_ids[0])
            rec.blobs.append({"digest": blob, "media_type": None, "size": 1,
                              "compression": "gzip"})
            txn.put(rec.diff_id.encode(), rec.to_json(), db=index.db["layers"])
            for n in range(20):
                index.add_blob_location(txn, blob, f"r{n}.io/x")
            index.add_blob_location(txn, blob, "r3.io/x")
        with index.read() as txn:
            assert index.repo_digest(txn, ref) == image.id
            assert index.repo_digests(txn, image.id) == [ref]
            seen = index.blob_locations(txn, blob)
            assert seen[:3] == ["r3.io/x", "r19.io/x", "r18.io/x"] and len(seen) == 16
        assert s.fsck() == []
        s.remove(["a:1"])
        s.gc()
        with index.read() as txn:
            assert index.repo_digest(txn, ref) is None
            assert index.blob_locations(txn, blob) == []
        assert s.fsck() == []
