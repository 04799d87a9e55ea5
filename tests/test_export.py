"""save and export: images leave the store as docker-archives and OCI layout tars whose layer
tars are byte-identical to the imported ones (every tar flavour, GNU sparse included), and as
flattened root filesystem tars equal to the image's merged tree."""

import errno
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import threading
import time

import blake3
import pytest

import archives as A
from helpers import (archive_members, context, need_tool, python_env, saved_layers, tar_bytes,
                     tarinfo)
from layerstore import Store, cli, errors
from layerstore import EntryType


def _name(image) -> str:
    return image.archive.name.split(".")[0]


def _import(data: bytes, root, tags=("test/img:1",)):
    with Store(root) as store:
        (image,) = store.import_archive(io.BytesIO(data), tags=list(tags))
    return image


# ---- the corpus --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus_store(corpus_images, tmp_path_factory):
    root = tmp_path_factory.mktemp("export-store") / "store"
    got = {}
    with Store(root) as store:
        for image in corpus_images:
            (got[_name(image)],) = store.import_archive(image.archive)
    return root, got


@pytest.mark.parametrize("fmt", ["docker", "oci"])
def test_corpus_save_reimports_to_the_same_image(fmt, corpus_images, corpus_store, tmp_path):
    root, got = corpus_store
    with Store(root) as store:
        for image in corpus_images:
            name = _name(image)
            out = tmp_path / f"{name}.{fmt}.tar"
            store.save([got[name].tags[0]], out, format=fmt)
            with Store(tmp_path / f"fresh-{name}") as fresh:
                (again,) = fresh.import_archive(out)
            assert again.id == image.config_digest
            assert again.diff_ids == tuple(image.diff_ids)
            assert again.tags == got[name].tags
            if fmt == "docker":     # the very files the corpus archive holds
                for layer, saved in zip(image.layers, saved_layers(out, fmt)):
                    assert saved == layer.read_bytes()
            out.unlink()


@need_tool("skopeo")
def test_skopeo_reads_saved_archives(corpus_images, corpus_store, tmp_path):
    root, got = corpus_store
    image = next(i for i in corpus_images if _name(i) == "python")
    with Store(root) as store:
        store.save([image.config_digest], tmp_path / "d.tar")
        store.save(["corpus/python"], tmp_path / "o.tar", format="oci")
    for ref in (f"docker-archive:{tmp_path / 'd.tar'}",
                f"oci-archive:{tmp_path / 'o.tar'}:latest"):
        raw = subprocess.run(["skopeo", "inspect", ref], check=True, capture_output=True).stdout
        assert json.loads(raw)["Layers"] == image.diff_ids
    raw = subprocess.run(["skopeo", "inspect", "--config", f"docker-archive:{tmp_path / 'd.tar'}"],
                         check=True, capture_output=True).stdout
    assert json.loads(raw)["rootfs"]["diff_ids"] == image.diff_ids


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
def test_compressed_save_reimports(compress, corpus_images, corpus_store, tmp_path):
    root, got = corpus_store
    image = next(i for i in corpus_images if _name(i) == "base")
    out = tmp_path / f"base.tar.{compress}"
    with Store(root) as store:
        store.save(["corpus/base"], out, compress=compress)
        store.save(["corpus/base"], tmp_path / "again", compress=compress)
    assert _sha256_file(out) == _sha256_file(tmp_path / "again")      # the pinned recipe
    with open(out, "rb") as f:
        assert f.read(4).startswith(b"\x1f\x8b" if compress == "gzip" else b"\x28\xb5\x2f\xfd")
    with Store(tmp_path / "fresh") as fresh:
        (again,) = fresh.import_archive(out)
    assert (again.id, again.diff_ids) == (image.config_digest, tuple(image.diff_ids))


def _sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
def test_compressed_saves_are_byte_identical(compress, tmp_path, monkeypatch):
    """Two runs, seconds apart, to a file or a stream: the same bytes (gzip once wrote the
    time into its header), in the pinned recipe's header, and they read back."""
    big = hashlib.shake_256(b"more than one compression block").digest(3 << 20)
    layers = [A.layer(("f", "big", big), ("f", "small", b"s" * 1000)), A.layer(("f", "x", b"x"))]
    image = _import(A.docker_archive([(layers, ["test/img:1"])]), tmp_path / "store")
    outs = []
    for i in range(2):
        now = time.time() + 1000 * i
        monkeypatch.setattr(time, "time", lambda: now)
        out = tmp_path / f"s{i}.tar"
        assert cli.main(["--root", str(tmp_path / "store"), "save", "test/img:1", "-o",
                         str(out), "--compress", compress]) == 0
        outs.append(out.read_bytes())
    buf = io.BytesIO()
    with Store(tmp_path / "store") as store:
        store.save("test/img:1", buf, compress=compress)
    assert outs[0] == outs[1] == buf.getvalue()
    if compress == "gzip":
        assert outs[0][:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    with Store(tmp_path / "again") as again:
        (back,) = again.import_archive(tmp_path / "s0.tar")
    assert back.id == image.id


def test_corpus_export_equals_the_merged_tree(corpus_store, tmp_path):
    root, got = corpus_store
    with Store(root) as store:
        store.export("corpus/python", tmp_path / "rootfs.tar")
        _check_export(store, "corpus/python", tmp_path / "rootfs.tar")


# ---- hand-made layers in every tar flavour ---------------------------------------------------


def _flavour_items(long: bool, pax: bool):
    deep = "/".join(["dir%02d" % i for i in range(12)]) if long else "d"
    items = [
        tarinfo("d", "d", mode=0o755),
        tarinfo("d/empty"),
        tarinfo("d/small", content=b"hello\n", mode=0o4755, uid=1000, gid=1000, uname="u",
            gname="g"),
        tarinfo("d/big", content=os.urandom(300_000) + bytes(70_000)),
        tarinfo("d/odd", content=os.urandom(513)),
        tarinfo("d/link", "l", linkname="small"),
        tarinfo("d/hard", "h", linkname="d/small"),
        tarinfo("dev/null", "c", devmajor=1, devminor=3, mode=0o666),
        tarinfo("dev/sda", "b", devmajor=8, devminor=0),
        tarinfo("fifo", "p"),
    ]
    if long:
        items += [tarinfo(f"{deep}/" + "n" * 90, content=b"long name"),
                  tarinfo("longlink", "l", linkname=f"{deep}/" + "t" * 120),
                  tarinfo(f"{deep}/hardlong", "h", linkname=f"{deep}/" + "n" * 90)]
    if pax:
        items += [tarinfo("x/caps", content=b"\x7fELF", pax_headers={
                      "SCHILY.xattr.security.capability": "\x01\x00\x00\x02\udcff",
                      "SCHILY.xattr.user.mime": "text/plain"}),
                  tarinfo("x/\u00e9t\u00e9 \u2603", content=b"unicode"),
                  tarinfo("x/frac", content=b"t", pax_headers={"mtime": "1700000000.123456789"}),
                  tarinfo("x/bigid", content=b"i", uid=2**31 - 1, gid=2**30)]
    return items


FLAVOURS = {
    "ustar": lambda: tar_bytes(_flavour_items(False, False), tarfile.USTAR_FORMAT),
    "gnu": lambda: tar_bytes(_flavour_items(True, False), tarfile.GNU_FORMAT),
    "pax": lambda: tar_bytes(_flavour_items(True, True), tarfile.PAX_FORMAT),
    "pax-global": lambda: tar_bytes(_flavour_items(True, True), tarfile.PAX_FORMAT,
                               pax_headers={"comment": "global", "uname": "everyone"}),
    "no-end-blocks": lambda: tar_bytes(_flavour_items(False, False), tarfile.USTAR_FORMAT)[:-1024],
    "layer-helper": lambda: A.layer(("d", "etc"), ("f", "etc/a", b"a" * 1000),
                                    ("wh", "etc/gone"), ("opq", "var")),
}


def _sparse_layer(tmp_path, fmt, extra, segments) -> bytes:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    for name, count in (("one.img", segments), ("two.img", 3)):
        with open(src / name, "wb") as f:
            for i in range(count):
                f.seek(i * 300000 + 4096 * (i % 3))
                f.write(os.urandom(1000 + 517 * i))
            f.truncate(count * 300000 + 70000)
    (src / "after").write_bytes(b"plain file after the sparse ones")
    (src / "hole.img").write_bytes(b"")
    with open(src / "hole.img", "wb") as f:
        f.truncate(1 << 20)     # all hole
    out = tmp_path / "s.tar"
    subprocess.run(["tar", "-c", "-S", f"--format={fmt}", *extra, "-f", str(out), "-C",
                    str(src), "one.img", "two.img", "hole.img", "after"], check=True)
    return out.read_bytes()


SPARSE = [("gnu", []), ("posix", ["--sparse-version=0.0"]),
          ("posix", ["--sparse-version=0.1"]), ("posix", ["--sparse-version=1.0"])]


def _roundtrip(layers: list[bytes], tmp_path, fmt="docker"):
    data = A.docker_archive([(layers, ["test/img:1"])])
    image = _import(data, tmp_path / "store")
    out = tmp_path / f"saved.{fmt}.tar"
    with Store(tmp_path / "store") as store:
        store.save(["test/img:1"], out, format=fmt)
    saved = saved_layers(out, fmt)
    for original, got, diff_id in zip(layers, saved, image.diff_ids):
        assert "sha256:" + hashlib.sha256(got).hexdigest() == diff_id
        assert got == original
    with Store(tmp_path / "again") as again:
        (back,) = again.import_archive(out)
    assert (back.id, back.diff_ids) == (image.id, image.diff_ids)
    return image


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
@pytest.mark.parametrize("fmt", ["docker", "oci"])
def test_every_tar_flavour_roundtrips_byte_exact(flavour, fmt, tmp_path):
    _roundtrip([FLAVOURS[flavour](), A.layer(("f", "top", b"top layer"))], tmp_path, fmt)


@need_tool("tar")
@pytest.mark.parametrize("fmt,extra", SPARSE, ids=lambda v: str(v))
@pytest.mark.parametrize("segments", [1, 6, 40])
def test_gnu_sparse_roundtrips_byte_exact(tmp_path, fmt, extra, segments):
    layer = _sparse_layer(tmp_path, fmt, extra, segments)
    image = _roundtrip([layer], tmp_path)
    with Store(tmp_path / "store") as store:
        assert any(e.sparse for e in store.layer_entries(image.diff_ids[0]))
        store.export(image.id, tmp_path / "rootfs.tar")
        _check_export(store, image.id, tmp_path / "rootfs.tar")


def test_several_images_and_shared_layers(tmp_path):
    shared = A.layer(("f", "shared", b"s" * 5000))
    a = [shared, A.layer(("f", "a", b"a"))]
    b = [shared, A.layer(("f", "b", b"b")), shared]
    data = A.docker_archive([(a, ["test/a:1"]), (b, ["test/b:1"])])
    with Store(tmp_path / "store") as store:
        images = store.import_archive(io.BytesIO(data))
        for fmt in ("docker", "oci"):
            out = tmp_path / f"both.{fmt}"
            store.save(["test/a:1", "test/b:1", images[0].id], out, format=fmt)
            names = [n for n in archive_members(out) if n.endswith(".tar") or "blobs/" in n]
            assert len(names) == len(set(names))
            with Store(tmp_path / f"again-{fmt}") as again:
                back = again.import_archive(out)
            assert sorted((i.id, i.diff_ids, i.tags) for i in back) == sorted(
                (i.id, i.diff_ids, i.tags) for i in images)


def test_save_to_a_stream(tmp_path):
    layers = [FLAVOURS["pax"]()]
    image = _import(A.docker_archive([(layers, ["test/img:1"])]), tmp_path / "store")
    buf = io.BytesIO()
    with Store(tmp_path / "store") as store:
        store.save("test/img:1", buf)
    (tmp_path / "s.tar").write_bytes(buf.getvalue())
    assert saved_layers(tmp_path / "s.tar", "docker") == layers
    with Store(tmp_path / "again") as again:
        (back,) = again.import_archive(tmp_path / "s.tar")
    assert back.id == image.id


def test_oci_save_of_a_compressed_oci_image_keeps_the_image_id(tmp_path):
    layers = [FLAVOURS["gnu"](), A.layer(("f", "x", b"x"))]
    files = A.oci_layout(layers, tags=["test/oci:2"], compress="gzip")
    A.write_dir(files, tmp_path / "layout")
    with Store(tmp_path / "store") as store:
        (image,) = store.import_archive(tmp_path / "layout")
        store.save([image.id], tmp_path / "o.tar", format="oci")
    saved = archive_members(tmp_path / "o.tar")
    index = json.loads(saved["index.json"])
    (desc,) = index["manifests"]
    assert desc["annotations"]["io.containerd.image.name"] == "docker.io/test/oci:2"
    manifest = json.loads(saved["blobs/sha256/" + desc["digest"][7:]])
    assert manifest["config"]["digest"] == image.id
    assert [l["mediaType"] for l in manifest["layers"]] == [
        "application/vnd.oci.image.layer.v1.tar"] * 2
    assert saved_layers(tmp_path / "o.tar", "oci") == layers
    with Store(tmp_path / "again") as again:
        (back,) = again.import_archive(tmp_path / "o.tar")
    assert (back.id, back.diff_ids, back.tags) == (image.id, image.diff_ids, image.tags)


def _object_of(store, image, path):
    return next(e for d in image.diff_ids for e in store.layer_entries(d) if e.path == path)


@pytest.mark.parametrize("size", [6, 300_000])     # gathered in memory / copied in the kernel
def test_tampered_object_fails_save_clearly(size, tmp_path):
    layer = A.layer(("f", "victim", os.urandom(size)), ("f", "other", b"fine" * 100))
    image = _import(A.docker_archive([([layer], ["test/img:1"])]), tmp_path / "store")
    with Store(tmp_path / "store") as store:
        entry = _object_of(store, image, "victim")
        path = store.object_path(entry.object_id)
        os.chmod(path, 0o644)
        with open(path, "r+b") as f:
            first = f.read(1)
            f.seek(0)
            f.write(bytes([first[0] ^ 0xFF]))      # always a change, whatever the byte was
        out = tmp_path / "out.tar"
        with pytest.raises(errors.DigestMismatch, match=r"victim.*content hash|"
                           r"does not match") as exc:
            store.save(["test/img:1"], out)
        assert image.diff_ids[0] in str(exc.value)
        assert entry.object_id[2:] in str(exc.value)
        assert not out.exists() and os.listdir(tmp_path) == ["store"]
        os.unlink(path)
        with pytest.raises(errors.MissingBlob, match="missing"):
            store.save(["test/img:1"], out)
    rc = cli.main(["--root", str(tmp_path / "store"), "save", "test/img:1", "-o", str(out)])
    assert rc == 1 and not out.exists()


def _layer_writer_input(store, diff_id):
    """What the C layer writer takes for a stored layer: objects dir, records, raw bytes."""
    index = context(store).index
    with index.read() as txn:
        records = index.layer_data(txn, diff_id, "records")
        raw = index.layer_data(txn, diff_id, "raw")
    return os.path.join(store.root, "objects"), records, raw


def test_layer_writer_reports_a_failed_write(tmp_path):
    """A write that fails (ENOSPC from /dev/full) stops the layer writer with that error, from
    its writing thread, with the layer's objects read ahead in several buffers."""
    from layerstore import _native
    layer = A.layer(*[("f", f"f{i}", os.urandom(300_000)) for i in range(20)])
    image = _import(A.docker_archive([([layer], ["test/img:1"])]), tmp_path / "store")
    with Store(tmp_path / "store") as store:
        objects, records, raw = _layer_writer_input(store, image.diff_ids[0])
        with open(tmp_path / "ok", "wb") as f:
            assert _native.write_layer(objects, records, raw, f.fileno()) == len(layer)
        assert (tmp_path / "ok").read_bytes() == layer
        fd = os.open("/dev/full", os.O_WRONLY)
        try:
            with pytest.raises(errors.StoreIOError, match="cannot write the layer") as exc:
                _native.write_layer(objects, records, raw, fd)
            assert exc.value.errno == errno.ENOSPC
        finally:
            os.close(fd)


def _slow_pipe_write(objects, records, raw):
    """write_layer into a pipe whose reader starts late: the writing thread blocks, buffers
    pile up, and the reading thread checks the objects itself.  Returns (bytes, error)."""
    from layerstore import _native
    r, w = os.pipe()
    got, error = [], []

    def drain():
        time.sleep(0.3)
        with os.fdopen(r, "rb") as f:
            got.append(f.read())

    t = threading.Thread(target=drain)
    t.start()
    try:
        _native.write_layer(objects, records, raw, w)
    except errors.LayerstoreError as exc:
        error.append(exc)
    finally:
        os.close(w)
        t.join()
    return got[0], (error[0] if error else None)


def test_objects_checked_by_either_thread(tmp_path):
    """Whichever thread checks an object (the reader does when the writer falls behind), a
    whole layer comes out exact, and an object changed on disk fails it, named."""
    files = [("f", f"d/f{i:04d}", os.urandom(9000 + i)) for i in range(900)]
    layer = A.layer(*files)
    image = _import(A.docker_archive([([layer], ["test/img:1"])]), tmp_path / "store")
    with Store(tmp_path / "store") as store:
        objects, records, raw = _layer_writer_input(store, image.diff_ids[0])
        out, error = _slow_pipe_write(objects, records, raw)
        assert error is None and out == layer
        victim = _object_of(store, image, "d/f0850")
        path = store.object_path(victim.object_id)
        os.chmod(path, 0o644)
        with open(path, "r+b") as f:
            first = f.read(1)
            f.seek(0)
            f.write(bytes([first[0] ^ 0xFF]))
        _, error = _slow_pipe_write(objects, records, raw)
        assert isinstance(error, errors.CorruptArchive)
        assert "d/f0850" in str(error) and victim.object_id[2:] in str(error)


# ---- export ---------------------------------------------------------------------------------


def _check_export(store, ref, path) -> None:
    """The exported tar against the image's merged tree: paths, types, sizes, content, and
    the metadata a tar carries."""
    want = {e.path: e for e in store.image_entries(ref)}
    seen = {}
    with tarfile.open(path, "r:") as tf:
        for m in tf:
            name = m.name.rstrip("/")
            name = "." if name in (".", "") else name.removeprefix("./")
            assert name not in seen, f"{name} twice"
            seen[name] = m
            e = want[name]
            if m.islnk():
                target = want[m.linkname]
                assert (target.type, target.object_id) == (e.type, e.object_id), name
                continue
            kind = {EntryType.FILE: m.isreg, EntryType.DIR: m.isdir, EntryType.SYMLINK: m.issym,
                    EntryType.CHAR: m.ischr, EntryType.BLOCK: m.isblk,
                    EntryType.FIFO: m.isfifo}[e.type]
            assert kind(), (name, e.type)
            assert (m.mode, m.uid, m.gid, m.uname, m.gname) == (e.mode, e.uid, e.gid, e.uname,
                                                                 e.gname), name
            assert int(m.mtime) == e.mtime_ns // 10**9, name
            if e.mtime_ns % 10**9:
                sec, _, frac = m.pax_headers["mtime"].partition(".")
                assert int(sec) * 10**9 + int(frac.ljust(9, "0")) == e.mtime_ns
            xattrs = tuple(sorted((k[13:], v.encode("utf-8", "surrogateescape"))
                                  for k, v in m.pax_headers.items()
                                  if k.startswith("SCHILY.xattr.")))
            assert xattrs == e.xattrs, name
            if e.type is EntryType.FILE:
                assert m.size == e.size
                assert blake3.blake3(tf.extractfile(m).read()).hexdigest() == e.content_hash
            elif e.type is EntryType.SYMLINK:
                assert m.linkname == e.link
            elif e.type in (EntryType.CHAR, EntryType.BLOCK):
                assert (m.devmajor, m.devminor) == (e.devmajor, e.devminor)
    assert sorted(seen) == sorted(want)


def test_export_of_a_layered_image(tmp_path):
    base = FLAVOURS["pax"]()
    top = A.layer(("wh", "d/odd"), ("opq", "x"), ("f", "x/new", b"new"),
                  ("h", "d/hard2", "d/small"), ("f", "d/small", b"replaced"), ("d", "fifo"))
    image = _import(A.docker_archive([([base, top], ["test/img:1"])]), tmp_path / "store")
    out = tmp_path / "rootfs.tar"
    with Store(tmp_path / "store") as store:
        store.export("test/img:1", out)
        _check_export(store, image.id, out)
    names = tarfile.open(out).getnames()
    assert "d/odd" not in names and "x/caps" not in names and "x/new" in names


def test_export_and_save_cli(tmp_path):
    data = A.docker_archive([([FLAVOURS["gnu"]()], ["test/img:1"])])
    image = _import(data, tmp_path / "store")
    root = ["--root", str(tmp_path / "store")]
    assert cli.main(root + ["export", "test/img:1", "-o", str(tmp_path / "r.tar")]) == 0
    with Store(tmp_path / "store") as store:
        _check_export(store, image.id, tmp_path / "r.tar")
    assert cli.main(root + ["save", "test/img:1", image.id[7:19], "-o", str(tmp_path / "s.tgz"),
                            "--format", "oci", "--compress", "gzip"]) == 0
    with Store(tmp_path / "again") as again:
        (back,) = again.import_archive(tmp_path / "s.tgz")
    assert back.id == image.id
    r = subprocess.run(["python", "-m", "layerstore", *root, "save", "nosuch:1", "-o",
                        str(tmp_path / "x.tar")], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith("layerstore: error: ")
    assert len(r.stderr.strip().splitlines()) == 1


# ---- where the output goes, progress, interrupts ----------------------------------------------


def _many_files(tmp_path):
    """An image of two layers with enough entries to report on, one hardlink among them."""
    first = A.layer(*[("f", f"d/f{i}", os.urandom(3000) + bytes([i])) for i in range(60)],
                    ("h", "d/link", "d/f0"))
    return _import(A.docker_archive([([first, FLAVOURS["gnu"]()], ["test/img:1"])]),
                   tmp_path / "store")


def _writer(store, what):
    if what == "save":
        return lambda out, **kw: store.save(["test/img:1"], out, **kw)
    return lambda out, **kw: store.export("test/img:1", out, **kw)


@pytest.mark.parametrize("what", ["save", "export"])
def test_unwritable_output_is_named_as_the_user_gave_it(what, tmp_path, monkeypatch):
    """A missing directory, a directory, a file as a directory: a HostPathError (the first a
    FileNotFoundError) naming the user's path, never the temporary file beside it."""
    _many_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("x")
    with Store(tmp_path / "store") as store:
        write = _writer(store, what)
        with pytest.raises(errors.HostPathNotFound) as got:
            write("nodir/out.tar")
        assert isinstance(got.value, FileNotFoundError) and got.value.errno == errno.ENOENT
        assert str(got.value) == "cannot write nodir/out.tar: No such file or directory"
        with pytest.raises(errors.HostPathError) as got:
            write(tmp_path)
        assert got.value.errno == errno.EISDIR
        assert str(got.value) == f"cannot write {tmp_path}: Is a directory"
        with pytest.raises(errors.HostPathError) as got:
            write("file/out.tar")
        assert got.value.errno == errno.ENOTDIR and "file/out.tar" in str(got.value)
    assert [n for n in os.listdir(tmp_path) if n.startswith(".layerstore-")] == []
    r = subprocess.run([sys.executable, "-m", "layerstore", "--root", "store", what, "test/img:1",
                        "-o", "nodir/out.tar"], capture_output=True, text=True, env=python_env())
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == "layerstore: error: cannot write nodir/out.tar: No such file or directory\n"


def _every_update_reported(monkeypatch):
    """Every progress update reaches the callback (they are kept to ten a second)."""
    from layerstore.formats import export
    monkeypatch.setattr(export._Meter, "interval", 0.0)


@pytest.mark.parametrize("what", ["save", "export"])
def test_output_through_a_symlink_or_into_a_fifo(what, tmp_path):
    """-o a symlink writes its target (the link stays); -o a fifo or device writes into it, as
    `> path` does, never replacing the node (replacing /dev/full with a file, as root, was
    what a rename over it did)."""
    _many_files(tmp_path)
    target = tmp_path / "target.tar"
    target.write_bytes(b"old")
    os.symlink("target.tar", tmp_path / "link.tar")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    with Store(tmp_path / "store") as store:
        _writer(store, what)(tmp_path / "link.tar")
        _writer(store, what)(fifo)
    assert os.readlink(tmp_path / "link.tar") == "target.tar"
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)    # else the reader waits for ever: no join
    reader.join()
    assert got == [target.read_bytes()] and tarfile.open(target).getnames()
    with Store(tmp_path / "store") as store:
        with pytest.raises(errors.HostPathNotFound, match="^cannot write '': No such file"):
            _writer(store, what)("")


@pytest.mark.parametrize("compress", ["none", "gzip"])     # the C layer writer; the Python one
def test_save_reports_progress(compress, tmp_path, monkeypatch):
    image = _many_files(tmp_path)
    _every_update_reported(monkeypatch)
    seen = []
    with Store(tmp_path / "store") as store:
        layers = [store.layer(d) for d in image.diff_ids]
        store.save(["test/img:1"], tmp_path / "s.tar", compress=compress, progress=seen.append)
    assert len(seen) > 2
    last = seen[-1]
    assert last.bytes_done == last.bytes_total == sum(l.stream_bytes for l in layers)
    assert last.items_done == last.items_total == sum(l.entries for l in layers)
    for a, b in zip(seen, seen[1:]):
        assert a.bytes_done <= b.bytes_done <= last.bytes_total
        assert a.items_done <= b.items_done <= last.items_total


def test_export_reports_progress(tmp_path):
    _many_files(tmp_path)
    seen = []
    with Store(tmp_path / "store") as store:
        store.export("test/img:1", tmp_path / "r.tar", progress=seen.append)
    members = tarfile.open(tmp_path / "r.tar").getmembers()
    last = seen[-1]
    assert last.items_done == last.items_total == len(members)
    assert last.bytes_done == last.bytes_total == sum(m.size for m in members if m.isreg())
    assert any(m.islnk() for m in members)      # a hardlink's content counted once
    assert all(a.items_done <= b.items_done for a, b in zip(seen, seen[1:]))


@pytest.mark.parametrize("what, compress", [("save", "none"), ("save", "gzip"),
                                            ("export", None)])
def test_interrupted_write_leaves_the_output_as_it_was(what, compress, tmp_path, monkeypatch):
    """Ctrl-C (a KeyboardInterrupt where the progress callback runs, as in the CLI) part way:
    the output file keeps what it held before, and no temporary file is left."""
    _many_files(tmp_path)
    _every_update_reported(monkeypatch)
    out = tmp_path / "out" / "o.tar"
    out.parent.mkdir()
    out.write_bytes(b"before")
    calls = []

    def interrupt(p):
        calls.append(p)
        if p.items_done:
            raise KeyboardInterrupt

    with Store(tmp_path / "store") as store:
        kw = {"compress": compress} if compress else {}
        with pytest.raises(KeyboardInterrupt):
            _writer(store, what)(out, progress=interrupt, **kw)
    assert calls[-1].items_done < calls[-1].items_total      # it was part way
    assert os.listdir(out.parent) == ["o.tar"] and out.read_bytes() == b"before"
