"""A containers-storage read-only image store over the layer dirs (runtimes/cstore.py): its
layout, tar-split that rebuilds each layer byte for byte, pins against gc, and then real
podman and skopeo reading it (root, the corpus)."""

import base64
import ctypes
import ctypes.util
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile

import pytest
import zstandard

import archives as A
from helpers import context, invoke, invoke_error, need_root, overlay_available
from layerstore import Store, _native, errors
from layerstore.runtimes import cstore

BASE = A.layer(("d", "etc"), ("f", "etc/os-release", b"NAME=test\n"),
               ("f", "bin/sh", b"\x7fELF" * 300, 0o755), ("l", "bin/bash", "sh"),
               ("f", "etc/empty", b""), ("d", "usr/share/doc", 0o755),
               ("f", "usr/share/doc/a", b"doc a\n"), ("f", "usr/share/doc/b", b"doc b\n"))
TOP = A.layer(("f", "app/main.py", b"print('hi')\n"), ("wh", "etc/os-release"),
              ("opq", "usr/share/doc"), ("f", "usr/share/doc/new", b"new doc\n"),
              ("h", "app/sh-link", "app/main.py"), ("d", "app"),     # a dir listed twice
              ("f", "app/" + "long-name-" * 12, b"a PAX path\n"))
OTHER = A.layer(("f", "srv/other", b"other\n"))


def _gnu_layer() -> bytes:
    """GNU format: a long name in an 'L' header, and a name that is not UTF-8."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tf:
        for name, data in (("gnu/" + "x" * 150, b"long\n"), ("gnu/caf\udce9", b"latin-1\n")):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime, ti.mode = len(data), 1700000000, 0o644
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


GNU = _gnu_layer()


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store") as s:
        s.import_archive(io.BytesIO(A.docker_archive([([BASE, TOP], ["app:1"]),
                                                      ([BASE, OTHER], ["other:1"]),
                                                      ([GNU], ["gnu:1"])])))
        yield s


def _json(path):
    with open(path) as f:
        return json.load(f)


def _pins(s):
    ctx = context(s)
    with ctx.index.read() as txn:
        return ctx.index.pins(txn)


def assemble(tar_split: str, diff: str) -> bytes:
    """What tar-split's asm.WriteOutputTarStream does with a file getter over diff: segments
    as they are, each file's content read from diff/<name> and checked against size and
    CRC-64; names unique once cleaned, positions in order."""
    out = io.BytesIO()
    seen = set()
    with gzip.open(tar_split) as f:
        for pos, line in enumerate(f):
            e = json.loads(line)
            assert e["position"] == pos
            if e["type"] == 2:
                out.write(base64.b64decode(e["payload"]))
                continue
            assert e["type"] == 1
            name = e["name"].encode() if "name" in e else base64.b64decode(e["name_raw"])
            key = os.path.normpath(name)
            assert key not in seen, name
            seen.add(key)
            if not e.get("size"):
                continue
            with open(os.path.join(os.fsencode(diff), name), "rb") as g:
                data = g.read()
            assert len(data) == e["size"]
            assert base64.b64decode(e["payload"]) == _native.crc64(data).to_bytes(8, "big")
            out.write(data)
    return out.getvalue()


# ---- the layout ------------------------------------------------------------------------------

def test_layer_ids_chain_as_containers_image_does():
    d = ["sha256:" + "a" * 64, "sha256:" + "b" * 64]
    assert cstore.layer_ids(d) == ["a" * 64, hashlib.sha256(
        ("a" * 64 + "+" + "b" * 64).encode()).hexdigest()]


@need_root("layer dirs with overlay whiteouts (mknod)")
def test_layout_is_what_the_overlay_driver_reads(store, tmp_path):
    """overlay/<id>/diff -> the layer dir, link, lower and l/ links; layers.json chained by
    parent with diff digests and sizes; images.json with names, top layer and big data
    (manifest twice, config) whose files hold those bytes; both lock files."""
    dest = tmp_path / "cs"
    app = store.image("app:1")
    assert store.cstore(dest, ["app:1"]) == [app.id]
    lids = cstore.layer_ids(app.diff_ids)
    links = {}
    for lid in lids:
        d = dest / "overlay" / lid
        assert os.path.realpath(d / "diff").startswith(store.root + "/layers/")
        links[lid] = (d / "link").read_text()
        assert re.fullmatch(r"[A-Z2-7]{26}", links[lid])
        assert os.readlink(dest / "overlay" / "l" / links[lid]) == f"../{lid}/diff"
    assert not (dest / "overlay" / lids[0] / "lower").exists()
    assert (dest / "overlay" / lids[1] / "lower").read_text() == f"l/{links[lids[0]]}"
    # The top layer's dir shows the layer as overlay reads it: the whiteout a 0/0 device.
    st = os.lstat(dest / "overlay" / lids[1] / "diff" / "etc" / "os-release")
    assert st.st_rdev == 0 and (st.st_mode & 0o170000) == 0o020000
    layers = _json(dest / "overlay-layers" / "layers.json")
    assert [l["id"] for l in layers] == lids
    assert "parent" not in layers[0] and layers[1]["parent"] == lids[0]
    for l, diff_id in zip(layers, app.diff_ids):
        assert l["diff-digest"] == diff_id
        assert l["diff-size"] == store.layer(diff_id).stream_bytes
    (image,) = _json(dest / "overlay-images" / "images.json")
    assert image["id"] == app.id.split(":")[1] and image["names"] == ["docker.io/library/app:1"]
    assert image["layer"] == lids[1]
    config_key = app.id
    manifest_key = "manifest-" + image["digest"]
    assert set(image["big-data-names"]) == {config_key, manifest_key, "manifest"}
    idir = dest / "overlay-images" / image["id"]
    config = (idir / ("=" + base64.b64encode(config_key.encode()).decode())).read_bytes()
    assert "sha256:" + hashlib.sha256(config).hexdigest() == app.id
    manifest = (idir / "manifest").read_bytes()
    assert "sha256:" + hashlib.sha256(manifest).hexdigest() == image["digest"]
    assert image["big-data-sizes"]["manifest"] == len(manifest)
    assert [l["digest"] for l in json.loads(manifest)["layers"]] == list(app.diff_ids)
    for lock in ("overlay-layers/layers.lock", "overlay-images/images.lock"):
        assert os.path.getsize(dest / lock) == 64


@need_root("layer dirs with overlay whiteouts (mknod)")
def test_tar_split_rebuilds_every_layer_byte_for_byte(store, tmp_path):
    """Each layer's tar-split, assembled as c/storage does with contents read from its diff
    dir, is the imported tar (its diffID): PAX and GNU long names, a non-UTF-8 name
    (name_raw), hardlinks, whiteouts, an empty file, a dir listed twice."""
    dest = tmp_path / "cs"
    store.cstore(dest, ["app:1", "other:1", "gnu:1"])
    for ref in ("app:1", "other:1", "gnu:1"):
        img = store.image(ref)
        for lid, diff_id in zip(cstore.layer_ids(img.diff_ids), img.diff_ids):
            ts = dest / "overlay-layers" / f"{lid}.tar-split.gz"
            data = assemble(ts, dest / "overlay" / lid / "diff")
            assert "sha256:" + hashlib.sha256(data).hexdigest() == diff_id
    gnu = store.image("gnu:1")
    with gzip.open(dest / "overlay-layers" / f"{cstore.layer_ids(gnu.diff_ids)[0]}"
                   ".tar-split.gz") as f:
        raw_names = [base64.b64decode(e["name_raw"]) for e in map(json.loads, f)
                     if "name_raw" in e]
    assert raw_names == [b"gnu/caf\xe9"]


@need_root("layer dirs with overlay whiteouts (mknod)")
def test_a_layer_with_one_path_twice_gets_no_tar_split(tmp_path):
    """tar-split cannot say which content a path read back from the layer dir had first."""
    twice = A.layer(("f", "a", b"first\n"), ("f", "a", b"second\n"))
    with Store(tmp_path / "s") as s:
        (img,) = s.import_archive(io.BytesIO(A.docker_archive([([twice], ["t:1"])])))
        s.cstore(tmp_path / "cs", ["t:1"])
        (lid,) = cstore.layer_ids(img.diff_ids)
        assert (tmp_path / "cs" / "overlay" / lid).is_dir()
        assert not (tmp_path / "cs" / "overlay-layers" / f"{lid}.tar-split.gz").exists()


@need_root("layer dirs with overlay whiteouts (mknod)")
def test_the_manifest_an_image_came_with_is_kept(tmp_path):
    """An image imported with a manifest (an OCI layout of gzip layers, as a pull brings it)
    keeps that manifest and its digest, and each layer lists the gzip blob as its compressed
    digest, by which a `podman pull` of the same image finds it."""
    files = A.oci_layout([BASE, TOP], ["app:1"], compress="gzip")
    (tmp_path / "app.tar").write_bytes(A.tar_of(files))
    index = json.loads(files["index.json"])
    manifest_digest = index["manifests"][0]["digest"]
    manifest = files[f"blobs/sha256/{manifest_digest[7:]}"]
    with Store(tmp_path / "s") as s:
        (img,) = s.import_archive(tmp_path / "app.tar")
        s.cstore(tmp_path / "cs", [img.id])
    (image,) = _json(tmp_path / "cs" / "overlay-images" / "images.json")
    assert image["digest"] == manifest_digest
    assert (tmp_path / "cs" / "overlay-images" / image["id"] / "manifest").read_bytes() == \
        manifest
    layers = _json(tmp_path / "cs" / "overlay-layers" / "layers.json")
    blobs = json.loads(manifest)["layers"]
    assert [(l["compressed-diff-digest"], l["compressed-size"]) for l in layers] == \
        [(b["digest"], b["size"]) for b in blobs]
    assert [l["diff-digest"] for l in layers] == list(img.diff_ids)


# ---- pins, rm and gc -------------------------------------------------------------------------

@need_root("layer dirs with overlay whiteouts (mknod)")
def test_exported_layers_are_pinned_until_removed_from_the_store(store, tmp_path):
    """Each exported layer holds a pin named by the store; --remove drops the image, its
    files and the pins of layers no other image there has; a second export bumps the locks."""
    dest = tmp_path / "cs"
    real = os.path.realpath(dest)
    store.cstore(dest, ["app:1"])
    lock = (dest / "overlay-images" / "images.lock").read_bytes()
    store.cstore(dest, ["other:1"])
    assert (dest / "overlay-images" / "images.lock").read_bytes() != lock
    app, other = store.image("app:1"), store.image("other:1")
    a, o = cstore.layer_ids(app.diff_ids), cstore.layer_ids(other.diff_ids)
    assert set(_pins(store)) == {f"cstore/{real}/{lid}" for lid in a + o}
    assert _pins(store)[f"cstore/{real}/{a[1]}"] == list(app.diff_ids)
    assert store.cstore(dest, remove=["app:1"]) == [other.id]
    assert set(_pins(store)) == {f"cstore/{real}/{lid}" for lid in o}
    assert sorted(os.listdir(dest / "overlay")) == sorted(["l", *o])
    assert len(os.listdir(dest / "overlay" / "l")) == 2
    assert not (dest / "overlay-images" / app.id.split(":")[1]).exists()
    assert not (dest / "overlay-layers" / f"{a[1]}.tar-split.gz").exists()
    assert store.cstore(dest, remove=[other.id[7:19]]) == []
    assert _pins(store) == {}
    # A store deleted by hand: exporting nothing to it drops its pins and makes no store.
    store.cstore(dest, ["other:1"])
    shutil.rmtree(dest)
    assert store.cstore(dest) == [] and _pins(store) == {} and not dest.exists()


@need_root("layer dirs with overlay whiteouts (mknod)")
def test_rm_takes_the_image_out_of_every_store(store, tmp_path):
    store.cstore(tmp_path / "cs1", ["app:1", "other:1"])
    store.cstore(tmp_path / "cs2", ["app:1"])
    store.remove(["app:1"])
    for d, left in (("cs1", ["docker.io/library/other:1"]), ("cs2", [])):
        assert [n for i in _json(tmp_path / d / "overlay-images" / "images.json")
                for n in i["names"]] == left
    other = store.image("other:1")
    real = os.path.realpath(tmp_path / "cs1")
    assert set(_pins(store)) == {f"cstore/{real}/{lid}"
                                 for lid in cstore.layer_ids(other.diff_ids)}
    assert store.gc().layers == 1 and store.fsck() == []


@need_root("layer dirs with overlay whiteouts (mknod)")
def test_gc_keeps_pinned_layers_and_their_dirs(store, tmp_path):
    """An rm killed before it updated the store leaves the image's layers pinned: gc keeps
    them, their layer dirs and objects (podman may be reading them); the next export of that
    store drops the image and unpins, and gc frees them."""
    from layerstore.store import lifecycle
    dest = tmp_path / "cs"
    store.cstore(dest, ["app:1"])
    app = store.image("app:1")
    dirs = [os.path.realpath(dest / "overlay" / lid / "diff")
            for lid in cstore.layer_ids(app.diff_ids)]
    lifecycle.remove(context(store), ["app:1"], False, [])     # rm without its cstore step
    assert store.gc().layers == 0
    assert all(os.path.isdir(d) for d in dirs)
    assert store.fsck() == []
    assert store.cstore(dest) == []
    assert store.gc().layers == 1       # TOP; BASE is other:1's too
    assert not os.path.exists(dirs[1]) and os.path.isdir(dirs[0])
    assert store.fsck() == []


# ---- CLI --------------------------------------------------------------------------------------

@need_root("layer dirs with overlay whiteouts (mknod)")
def test_cli(store, tmp_path):
    dest = str(tmp_path / "cs")
    root = ["--root", store.root]
    status, out, _ = invoke(*root, "cstore", dest, "app:1")
    assert status == 0 and out.split() == [store.image("app:1").id]
    status, out, _ = invoke(*root, "cstore", dest, "--json")
    assert status == 0 and json.loads(out) == [store.image("app:1").id]
    assert "no such image: nope:1" in invoke_error([*root, "cstore", dest, "nope:1"])
    assert "no such image in the containers-storage store: other:1" in invoke_error(
        [*root, "cstore", dest, "--remove", "other:1"])
    status, out, _ = invoke(*root, "cstore", dest, "--remove", "app:1")
    assert status == 0 and out == ""
    bad = tmp_path / "bad"
    (bad / "overlay-layers" / "layers.json").mkdir(parents=True)
    assert f"cannot write the containers-storage store at {bad}: Is a directory" in \
        invoke_error([*root, "cstore", str(bad), "app:1"])


# ---- podman and skopeo -----------------------------------------------------------------------

class Podman:
    """podman with a root, runroot and config files of its own (nothing of the host's store
    or /run/libpod), reading the store dest as an additional image store, either through
    storage.conf (additionalimagestores, as CRI-O reads it) or the command line."""

    def __init__(self, base, dest, via_conf: bool) -> None:
        self.base = base
        # podman refuses a runroot path longer than 50 characters: pytest's are longer.
        self.runroot = tempfile.mkdtemp(prefix="lsp-", dir="/tmp")
        run = f"{self.runroot}/run"
        (base / "tmp").mkdir(parents=True)
        (base / "containers.conf").write_text(
            "[engine]\n"
            # runc: crun (podman's first choice when installed) refuses this host's hybrid
            # cgroup hierarchy ("cgroups in hybrid mode not supported").
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{base}/events.log"\n'
            f'tmp_dir = "{base}/tmp"\n'
            f'static_dir = "{base}/root/libpod"\n')
        (base / "registries.conf").write_text("unqualified-search-registries = []\n")
        storage = ("[storage]\n"
                   'driver = "overlay"\n'
                   f'graphroot = "{base}/root"\n'
                   f'runroot = "{run}"\n')
        if via_conf and dest is not None:
            storage += f'[storage.options]\nadditionalimagestores = ["{dest}"]\n'
        (base / "storage.conf").write_text(storage)
        self.env = {**os.environ, "CONTAINERS_CONF": str(base / "containers.conf"),
                    "CONTAINERS_STORAGE_CONF": str(base / "storage.conf"),
                    "CONTAINERS_REGISTRIES_CONF": str(base / "registries.conf")}
        self.flags = [] if via_conf else [
            "--root", f"{base}/root", "--runroot", run, "--storage-driver", "overlay",
            *(["--storage-opt", f"overlay.imagestore={dest}"] if dest is not None else [])]
        self.transport = (f"containers-storage:[overlay@{base}/root+{run}"
                          f":overlay.imagestore={dest}]")

    def __call__(self, *args, check=True) -> subprocess.CompletedProcess:
        proc = subprocess.run(["podman", *self.flags, *args], env=self.env,
                              capture_output=True, text=True, timeout=300)
        if check and proc.returncode:
            pytest.fail(f"podman {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    def run(self, image, *cmd) -> str:
        return self("run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024",
                    "--ulimit", "nproc=1024:1024", image, *cmd).stdout

    def own_layers(self) -> list:
        path = self.base / "root" / "overlay-layers" / "layers.json"
        return _json(path) if path.exists() else []

    def close(self) -> None:
        # Not `podman system reset`: it also removes networks from the host's config.
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        with open("/proc/self/mounts") as f:
            points = [line.split()[1] for line in f]
        for p in sorted((p for p in points if p.startswith((str(self.base), self.runroot))),
                        key=len, reverse=True):
            libc.umount2(os.fsencode(p), 2)     # MNT_DETACH
        shutil.rmtree(self.runroot, ignore_errors=True)


def _need_podman() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: podman's overlay driver over the store, as CI runs it")
    if shutil.which("podman") is None:
        pytest.skip("needs podman on PATH")
    if not overlay_available():
        pytest.skip("needs the overlay filesystem")


def _podman_or_skip(base, dest, via_conf):
    p = Podman(base, dest, via_conf)
    probe = p("info", check=False)
    if probe.returncode:
        p.close()
        pytest.skip(f"podman cannot start here: {probe.stderr.strip()[-300:]}")
    return p


@pytest.fixture(scope="module")
def served(corpus_dir, tmp_path_factory):
    """The corpus imported into a store and exported to a containers-storage store."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    tmp = tmp_path_factory.mktemp("cstore")
    with Store(tmp / "store") as s:
        images = []
        for archive in sorted(corpus_dir.glob("*.tar.zst")):
            images += s.import_archive(archive)
        s.cstore(tmp / "cs", [i.id for i in images])
        yield s, images, tmp / "cs"


def _whiteout(s, image):
    """A path a layer of the image whites out that a lower layer has, and its directory."""
    for i, diff_id in enumerate(image.diff_ids[1:], 1):
        for e in s.layer_entries(diff_id):
            head, _, name = e.path.rpartition("/")
            if name.startswith(".wh.") and name != ".wh..wh..opq":
                target = f"{head}/{name[4:]}" if head else name[4:]
                if any(x.path == target for d in image.diff_ids[:i]
                       for x in s.layer_entries(d)):
                    return "/" + target, "/" + head
    return None


def _has(s, image, path):
    try:
        s.stat(image.id, path, follow=True)
        return True
    except errors.LayerstoreError:
        return False


@pytest.mark.parametrize("via_conf", [True, False], ids=["storage.conf", "storage-opt"])
def test_podman_runs_the_images_from_the_store(served, tmp_path, via_conf):
    """Every corpus image runs under `podman run` from the exported store (python3 -c where
    the image has python, else sh); a path the image whited out is absent; `podman images`
    lists them read-only; podman's own layer store stays empty; layerstore fsck is clean."""
    _need_podman()
    s, images, dest = served
    p = _podman_or_skip(tmp_path / "podman", dest, via_conf)
    try:
        listed = json.loads(p("images", "--format", "json").stdout)
        assert {"sha256:" + i["Id"] for i in listed} == {i.id for i in images}
        assert all(i["ReadOnly"] for i in listed)
        for image in images:
            name = image.tags[0]
            if _has(s, image, "/usr/bin/python3"):
                out = p.run(name, "python3", "-c", f"print('ran {name}')")
            else:
                out = p.run(name, "sh", "-c", f"echo 'ran {name}'")
            assert out == f"ran {name}\n"
            gone = _whiteout(s, image)
            if gone is not None:
                path, parent = gone
                out = p.run(name, "sh", "-c", f"test -e '{path}' || test -L '{path}' || "
                            f"echo absent; test -d '{parent}' && echo parent")
                assert out == "absent\nparent\n", path
        assert any(_whiteout(s, i) for i in images)
        assert p.own_layers() == []
    finally:
        p.close()
    assert s.fsck() == []


def test_podman_load_of_the_same_image_stores_no_layer(served, tmp_path, corpus_images):
    """Layer ids are containers/image's: `podman load` of an exported image into a podman
    beside the store finds every layer there and stores none, and the same load into a
    podman without it names its layers exactly as the export does."""
    _need_podman()
    s, images, dest = served
    ci = max(corpus_images, key=lambda c: len(c.diff_ids))
    archive = tmp_path / "image.tar"
    with open(ci.archive, "rb") as f:
        archive.write_bytes(zstandard.ZstdDecompressor().stream_reader(f).read())
    p = _podman_or_skip(tmp_path / "with", dest, True)
    q = _podman_or_skip(tmp_path / "without", None, True)
    try:
        p("load", "-i", str(archive))
        assert p.own_layers() == []
        q("load", "-i", str(archive))
        assert [l["id"] for l in q.own_layers()] == cstore.layer_ids(ci.diff_ids)
    finally:
        p.close()
        q.close()


def test_podman_save_and_skopeo_copy_give_the_same_diff_ids(served, tmp_path):
    """`podman save` of an exported image (the layer tars rebuilt from tar-split and the
    layer dirs) and `skopeo copy containers-storage:...` re-import into layerstore as the
    same image: the same config, so the same diffIDs."""
    _need_podman()
    if shutil.which("skopeo") is None:
        pytest.skip("needs skopeo on PATH")
    s, images, dest = served
    image = max(images, key=lambda i: len(i.diff_ids))
    p = _podman_or_skip(tmp_path / "podman", dest, True)
    try:
        saved = tmp_path / "saved.tar"
        p("save", "-o", str(saved), image.tags[0])
        copied = tmp_path / "copied.tar"
        proc = subprocess.run(["skopeo", "copy", f"{p.transport}{image.tags[0]}",
                               f"oci-archive:{copied}"], env=p.env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert p.own_layers() == []
    finally:
        p.close()
    with Store(tmp_path / "again") as again:
        for archive in (saved, copied):
            (back,) = again.import_archive(archive)
            assert back.id == image.id and back.diff_ids == image.diff_ids
    assert s.fsck() == []


def test_podman_push_and_pull_back(served, tmp_path):
    """`podman push` of an exported image to a registry (its layers rebuilt from tar-split,
    compressed by podman) gives an image that pulls back into layerstore as the same one; a
    `podman pull` of it beside the store keeps podman's own layer store empty."""
    from registry_servers import RegistryServer
    _need_podman()
    if shutil.which("skopeo") is None:
        pytest.skip("needs skopeo on PATH")
    s, images, dest = served
    image = max(images, key=lambda i: len(i.diff_ids))
    server = RegistryServer(tmp_path / "registry")
    p = _podman_or_skip(tmp_path / "podman", dest, True)
    try:
        ref = f"{server.host}/cstore/pushed:1"
        p("push", "--tls-verify=false", image.tags[0], ref)
        p("pull", "--tls-verify=false", ref)
        assert p.own_layers() == []
        archive = tmp_path / "pulled.tar"
        proc = subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}",
                               f"docker-archive:{archive}"], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
    finally:
        p.close()
        server.stop()
    with Store(tmp_path / "again") as again:
        (back,) = again.import_archive(archive)
        assert back.id == image.id and back.diff_ids == image.diff_ids


def test_pins_are_dropped_under_the_stores_locks(store, tmp_path, monkeypatch):
    """Another writer (a process: its own _writing lock) that adds an image back between this
    one's rewrite and its unpinning must find the pins it took kept: the layers it lists stay
    pinned, so gc never frees a layer dir podman may read."""
    dest = tmp_path / "cs"
    store.cstore(dest, ["app:1"])
    app = store.image("app:1")
    rewrite = cstore._update

    def then_another_writer(ctx, d, adding, remove):
        layers = rewrite(ctx, d, adding, remove)
        with ctx.index.read() as txn:
            again = [ctx.resolve(txn, "app:1")]
        rewrite(ctx, d, again, ())
        return layers

    monkeypatch.setattr(cstore, "_update", then_another_writer)
    store.cstore(dest, remove=["app:1"])
    listed = {l["id"] for l in _json(dest / "overlay-layers" / "layers.json")}
    real = os.path.realpath(dest)
    assert listed == set(cstore.layer_ids(app.diff_ids))
    assert set(_pins(store)) == {f"cstore/{real}/{lid}" for lid in listed}


def test_an_image_removed_while_cstore_runs_is_not_served(store, tmp_path, monkeypatch):
    """An `rm` that lands after cstore named its images but before it took DIR's locks must
    not leave DIR serving (and pinning) the removed image: rm's own pass over DIR found
    nothing to take out yet."""
    dest = tmp_path / "cs"
    claim = cstore._claim_dir

    def then_removed(ctx, d):
        with ctx.index.write() as txn:
            ctx.index.delete_image(txn, ctx.resolve(txn, "app:1").id)
        return claim(ctx, d)

    monkeypatch.setattr(cstore, "_claim_dir", then_removed)
    with pytest.raises(errors.ImageNotFound, match="removed"):
        store.cstore(dest, ["app:1"])
    listed = dest / "overlay-images" / "images.json"
    assert not listed.exists() or _json(listed) == []
    assert _pins(store) == {}


def test_a_containers_storage_store_layerstore_did_not_make_is_left_alone(store, tmp_path):
    """cstore DIR rewrites DIR's layer and image lists and deletes the layers they no longer
    name: pointed by mistake at podman's own store, it must refuse, not delete podman's
    layers."""
    dest = tmp_path / "podman-storage"
    layer = dest / "overlay" / ("ab" * 32)
    (layer / "diff").mkdir(parents=True)
    (dest / "overlay-images").mkdir()
    (dest / "overlay-images" / "images.json").write_text(json.dumps(
        [{"id": "cd" * 32, "names": ["docker.io/library/podmans:own"], "layer": "ab" * 32}]))
    with pytest.raises(errors.LayerstoreError, match="not made by layerstore"):
        store.cstore(dest, ["app:1"])
    assert (layer / "diff").is_dir() and _pins(store) == {}
    assert "podmans" in (dest / "overlay-images" / "images.json").read_text()
    # A store it made stays its own, and so does one made before stores were marked.
    made = tmp_path / "cs"
    store.cstore(made, ["app:1"])
    os.unlink(made / cstore.MARK)
    assert store.cstore(made, ["other:1"]) == [store.image("app:1").id,
                                               store.image("other:1").id]
