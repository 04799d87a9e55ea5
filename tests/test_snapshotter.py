"""The containerd proxy snapshotter (runtimes/snapshotter.py) and containerd-load
(runtimes/containerd.py): the wire schema against containerd's proto field numbers, the
service's claims, pins and records driven directly, and then real containerd + runc started
here with `layerstore snapshotter` as its [proxy_plugins] snapshotter: ctr import + run through
it, claimed images running from the store's layer dirs, several namespaces, and containerd's
gc never taking the store's data."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from helpers import context, need_root, overlay_available, python_env, run

grpc = pytest.importorskip("grpc", reason="needs the containerd extra (grpcio, protobuf)")
pytest.importorskip("google.protobuf", reason="needs the containerd extra (grpcio, protobuf)")

from layerstore import Store  # noqa: E402
from layerstore.bench.drivers.containerd import private_config  # noqa: E402
from layerstore.runtimes import containerd_api as api  # noqa: E402
from layerstore.runtimes.overlay import chain_ids  # noqa: E402
from layerstore.runtimes.snapshotter import LABEL_DIFF_ID, LABEL_REF, _Status  # noqa: E402

SNAPSHOTTER = "layerstore"


# ---- the schema -------------------------------------------------------------------------------

def _key(number: int, wire: int) -> bytes:
    return bytes([number << 3 | wire])


def _str(number: int, s: str) -> bytes:
    b = s.encode()
    return _key(number, 2) + bytes([len(b)]) + b


def test_the_schema_encodes_with_containerds_field_numbers():
    """Hand-encoded protobuf (field numbers from containerd's snapshots.proto and
    types/mount.proto) equals what the run-time schema writes and reads."""
    M = api.M
    label = _str(1, "k") + _str(2, "v")
    want = (_str(1, "s") + _str(2, "key") + _str(3, "par") +
            _key(4, 2) + bytes([len(label)]) + label)
    assert M["PrepareSnapshotRequest"](snapshotter="s", key="key", parent="par",
                                       labels={"k": "v"}).SerializeToString() == want
    assert M["ViewSnapshotRequest"].FromString(want).labels["k"] == "v"
    commit = _str(1, "s") + _str(2, "n") + _str(3, "k") + _str(5, "p")
    assert M["CommitSnapshotRequest"](snapshotter="s", name="n", key="k",
                                      parent="p").SerializeToString() == commit
    mount = _str(1, "overlay") + _str(2, "src") + _str(3, "t") + _str(4, "a") + _str(4, "b")
    assert M["Mount"](type="overlay", source="src", target="t",
                      options=["a", "b"]).SerializeToString() == mount
    resp = M["MountsResponse"].FromString(_key(1, 2) + bytes([len(mount)]) + mount)
    assert list(resp.mounts[0].options) == ["a", "b"]
    ts = _key(1, 0) + bytes([5])
    info = (_str(1, "n") + _str(2, "p") + _key(3, 0) + bytes([3]) +
            _key(4, 2) + bytes([len(ts)]) + ts + _key(6, 2) + bytes([len(label)]) + label)
    i = M["Info"](name="n", parent="p", kind=api.KINDS["COMMITTED"], labels={"k": "v"})
    i.created_at.seconds = 5
    assert i.SerializeToString() == info
    mask = _str(1, "labels.k")
    upd = M["UpdateSnapshotRequest"].FromString(
        _str(1, "s") + _key(2, 2) + bytes([len(info)]) + info +
        _key(3, 2) + bytes([len(mask)]) + mask)
    assert upd.info.name == "n" and list(upd.update_mask.paths) == ["labels.k"]
    assert M["UsageResponse"](size=300, inodes=2).SerializeToString() == \
        _key(1, 0) + bytes([0xAC, 0x02]) + _key(2, 0) + bytes([2])
    assert M["ListSnapshotsRequest"](filters=["a"]).SerializeToString() == _str(2, "a")
    assert set(api.METHODS) == {"Prepare", "View", "Mounts", "Commit", "Remove", "Stat",
                                "Update", "List", "Usage", "Cleanup"}
    assert api.METHODS["List"][2] and not api.METHODS["Stat"][2]


# ---- the service, driven directly -------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus_pair(corpus_images):
    """The corpus's one-layer base and the image built on it (found by their layers)."""
    base = next(i for i in corpus_images if len(i.diff_ids) == 1 and any(
        o.diff_ids[0] == i.diff_ids[0] and len(o.diff_ids) > 1 for o in corpus_images))
    top = max((i for i in corpus_images if i.diff_ids[0] == base.diff_ids[0]),
              key=lambda i: len(i.diff_ids))
    return base, top


@pytest.fixture(scope="module")
def corpus_store(corpus_pair, tmp_path_factory):
    """A store root (short path: containerd's sockets live beside it) holding base and top."""
    d = tempfile.mkdtemp(prefix="lsctd-", dir="/tmp")
    root = os.path.join(d, "store")
    for image in corpus_pair:
        run(root, "import", str(image.archive))
    yield d, root
    shutil.rmtree(d, ignore_errors=True)


def _code(fn, *args, **kwargs) -> grpc.StatusCode | None:
    try:
        fn(*args, **kwargs)
    except _Status as exc:
        return exc.code
    return None


@need_root("layer dirs hold whiteouts as 0/0 devices")
def test_claims_pin_their_chain_and_remove_only_unpins(corpus_pair, tmp_path):
    base, top = corpus_pair
    M = api.M
    with Store(tmp_path / "s") as store:
        for image in corpus_pair:
            store.import_archive(image.archive)
        snap = store.snapshotter()
        index = context(store).index
        chains = chain_ids(top.diff_ids)

        def prepare(key, parent="", **labels):
            return snap.Prepare(M["PrepareSnapshotRequest"](key=key, parent=parent,
                                                           labels=labels), None)
        claim = {LABEL_REF: chains[0]}
        assert _code(prepare, "a/1/x", "", **claim) == grpc.StatusCode.ALREADY_EXISTS
        info = snap.Stat(M["StatSnapshotRequest"](key="a/1/x"), None).info
        assert info.kind == api.KINDS["COMMITTED"] and info.labels[LABEL_REF] == chains[0]
        # Another namespace, same chain and parent: the same snapshot, found by containerd.
        assert _code(prepare, "b/1/x", "", **claim) == grpc.StatusCode.ALREADY_EXISTS
        assert _code(snap.Stat, M["StatSnapshotRequest"](key="b/1/x"), None) == \
            grpc.StatusCode.NOT_FOUND
        # Not claimed: a chain over the wrong parent, a diffID that is not the layer's.
        m = prepare("a/2/y", "", **{LABEL_REF: chains[1]}).mounts
        assert m[0].type == "bind"
        m = prepare("a/3/z", "", **{LABEL_REF: chains[0], LABEL_DIFF_ID: top.diff_ids[1]})
        assert m.mounts[0].type == "bind"
        for key in ("a/2/y", "a/3/z"):
            snap.Remove(M["RemoveSnapshotRequest"](key=key), None)
        keys = ["a/1/x"] + [f"a/{10 + i}/c" for i in range(1, len(chains))]
        for i in range(1, len(chains)):
            assert _code(prepare, keys[i], keys[i - 1],
                         **{LABEL_REF: chains[i], LABEL_DIFF_ID: top.diff_ids[i]}) == \
                grpc.StatusCode.ALREADY_EXISTS
        (mount,) = prepare("a/20/run", keys[-1]).mounts
        opts = dict(o.split("=", 1) for o in mount.options if "=" in o)
        assert opts["lowerdir"].split(":") == [
            os.path.join(store.root, "layers", d.split(":")[1]) for d in reversed(top.diff_ids)]
        assert opts["upperdir"].startswith(os.path.join(store.root, "snapshotter") + "/")
        assert _code(snap.Remove, M["RemoveSnapshotRequest"](key=keys[-1]), None) == \
            grpc.StatusCode.FAILED_PRECONDITION
        infos = [i for r in snap.List(M["ListSnapshotsRequest"](), None) for i in r.info]
        assert {i.name for i in infos} == {*keys, "a/20/run"}
        upd = M["UpdateSnapshotRequest"](info=M["Info"](name="a/1/x", labels={"x": "1"}))
        upd.update_mask.paths.append("labels.x")
        assert snap.Update(upd, None).info.labels == {LABEL_REF: chains[0], "x": "1"}
        with index.read() as txn:
            pins = index.pins(txn)
        assert pins["snapshot/" + keys[-1]] == list(top.diff_ids)
        # containerd's gc removes children first; each Remove drops a pin and nothing else.
        store.remove([top.config_digest], force=True)
        store.remove([base.config_digest], force=True)
        for key in ["a/20/run", *reversed(keys)]:
            snap.Remove(M["RemoveSnapshotRequest"](key=key), None)
            assert store.fsck() == []
            with index.read() as txn:
                assert "snapshot/" + key not in index.pins(txn)
        with index.read() as txn:
            assert index.snapshots(txn) == {} and index.pins(txn) == {}
        assert os.listdir(os.path.join(store.root, "snapshotter")) == []
        assert store.gc().layers == len(top.diff_ids)     # only now are they unreferenced


@need_root("the snapshotter runs as root, as containerd does")
def test_commit_ingests_the_snapshot_into_shared_objects(tmp_path):
    """What containerd applies into an active snapshot is a layer of the store once committed:
    a file the store holds costs no object, the directory containerd wrote goes, and views of
    it mount the layer dir.  Update, Usage and Cleanup do what containerd asks."""
    import io
    import tarfile
    M = api.M
    data = b"shared content\n" * 100
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        ti = tarfile.TarInfo("f")
        ti.size, ti.mode = len(data), 0o644
        tf.addfile(ti, io.BytesIO(data))
    buf.seek(0)
    with Store(tmp_path / "s") as store:
        store.import_layer(buf)
        objects = context(store).index
        with objects.read() as txn:
            count = objects.object_count(txn)
        snap = store.snapshotter()
        (m,) = snap.Prepare(M["PrepareSnapshotRequest"](key="n/1/k"), None).mounts
        assert m.type == "bind" and "rw" in m.options
        with open(os.path.join(m.source, "f"), "wb") as f:     # containerd applying a layer
            f.write(data)
        os.chmod(os.path.join(m.source, "f"), 0o644)
        os.mkdir(os.path.join(m.source, "d"), 0o755)
        snap.Commit(M["CommitSnapshotRequest"](name="n/2/sha256:" + "a" * 64, key="n/1/k",
                                               labels={"l": "1"}), None)
        assert not os.path.exists(os.path.dirname(m.source))
        with objects.read() as txn:
            assert objects.object_count(txn) == count
            rec = objects.snapshot(txn, "n/2/sha256:" + "a" * 64)
            assert objects.pins(txn)["snapshot/n/2/sha256:" + "a" * 64] == rec["diff_ids"]
        assert rec["kind"] == "committed" and rec["labels"] == {"l": "1"}
        assert store.layer(rec["diff_ids"][0]).new_objects == 0
        (v,) = snap.View(M["ViewSnapshotRequest"](key="n/3/v", parent="n/2/sha256:" + "a" * 64),
                         None).mounts
        assert v.type == "bind" and "ro" in v.options
        assert v.source == os.path.join(store.root, "layers", rec["diff_ids"][0].split(":")[1])
        with open(os.path.join(v.source, "f"), "rb") as f:
            assert f.read() == data
        usage = snap.Usage(M["UsageRequest"](key="n/2/sha256:" + "a" * 64), None)
        assert usage.inodes == 2 and usage.size > 0
        upd = M["UpdateSnapshotRequest"](info=M["Info"](name="n/3/v", labels={"a": "b"}))
        assert snap.Update(upd, None).info.labels == {"a": "b"}
        assert _code(snap.Commit, M["CommitSnapshotRequest"](name="x", key="n/3/v"), None) == \
            grpc.StatusCode.FAILED_PRECONDITION
        stray = os.path.join(store.root, "snapshotter", "stray")
        os.mkdir(stray)
        snap.Cleanup(M["CleanupRequest"](), None)
        assert os.listdir(os.path.join(store.root, "snapshotter")) == [rec_id(objects, "n/3/v")]
        assert store.fsck() == []


def rec_id(index, key: str) -> str:
    with index.read() as txn:
        return index.snapshot(txn, key)["id"]


# ---- real containerd ----------------------------------------------------------------------------

class Containerd:
    def __init__(self, d: str, root: str) -> None:
        self.d, self.root, self.address = d, root, f"{d}/ctd.sock"
        self.prefix = "lst" + os.urandom(3).hex()
        self.namespaces: set[str] = set()

    def ns(self, name: str) -> str:
        self.namespaces.add(f"{self.prefix}-{name}")
        return f"{self.prefix}-{name}"

    def ctr(self, ns: str, *args, check=True) -> str:
        p = subprocess.run(["ctr", "-a", self.address, "-n", ns, *args], capture_output=True,
                           text=True, timeout=300)
        if check and p.returncode:
            raise AssertionError(f"ctr {' '.join(args)}: exit {p.returncode}: {p.stderr}"
                                 f"\n--- snapshotter log:\n{self.log()}")
        return p.stdout

    def run(self, ns: str, image: str, script: str) -> str:
        cid = "c" + os.urandom(4).hex()
        return self.ctr(ns, "run", "--rm", "--snapshotter", SNAPSHOTTER, image, cid,
                        "sh", "-c", script)

    def log(self) -> str:
        with open(f"{self.d}/snapshotter.log", errors="replace") as f:
            return f.read()[-4000:]


def _wait_for(path: str, procs, what: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not os.path.exists(path):
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{what}: {p.args[0]} exited with {p.returncode}")
        if time.monotonic() > end:
            raise AssertionError(f"{what}: no socket {path} after {timeout} s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def ctd(corpus_store):
    for tool in ("containerd", "ctr", "runc"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} on PATH")
    if os.geteuid() != 0:
        pytest.skip("needs root: containerd and runc")
    if not overlay_available():
        pytest.skip("needs the overlay filesystem (the snapshotter's mounts are overlayfs)")
    d, root = corpus_store
    with open(f"{d}/config.toml", "w") as f:
        f.write(private_config(f"{d}/ctd/root", f"{d}/ctd/state", f"{d}/ctd.sock",
                               {SNAPSHOTTER: f"{d}/snapshotter.sock"}))
    c = Containerd(d, root)
    procs = []
    try:
        with open(f"{d}/containerd.log", "w") as log:
            procs.append(subprocess.Popen(["containerd", "--config", f"{d}/config.toml"],
                                          stdout=log, stderr=subprocess.STDOUT))
        with open(f"{d}/snapshotter.log", "w") as log:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "layerstore", "--root", root, "snapshotter",
                 "--address", f"{d}/snapshotter.sock", "-vv"],
                stdout=log, stderr=subprocess.STDOUT, env=python_env()))
        _wait_for(c.address, procs, "containerd")
        _wait_for(f"{d}/snapshotter.sock", procs, "layerstore snapshotter")
        yield c
    finally:
        for ns in c.namespaces:     # what the tests left, containers first
            for cid in c.ctr(ns, "containers", "ls", "-q", check=False).split():
                c.ctr(ns, "tasks", "kill", "-s", "KILL", cid, check=False)
                c.ctr(ns, "containers", "rm", cid, check=False)
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        # containerd 1.6 keeps runc's state and fifos under /run/containerd whatever its config
        for ns in c.namespaces:
            for sub in ("runc", "fifo"):
                shutil.rmtree(f"/run/containerd/{sub}/{ns}", ignore_errors=True)


@pytest.fixture(scope="module")
def docker_archives(corpus_pair, corpus_store):
    """The corpus archives uncompressed, as ctr import reads them."""
    import zstandard
    d, _ = corpus_store
    out = []
    for image in corpus_pair:
        path = os.path.join(d, image.archive.name.split(".")[0] + ".tar")
        with open(image.archive, "rb") as f, open(path, "wb") as w:
            zstandard.ZstdDecompressor().copy_stream(f, w)
        out.append(path)
    return out


def _tag(root: str, image) -> str:
    with Store(root) as s:
        return s.image(image.config_digest).tags[0]


def _du(root: str):
    with Store(root) as s:
        return s.du()


def _root_mount(out: str) -> dict:
    line = next(l for l in out.splitlines() if l.split()[4:5] == ["/"])
    opts = line.split(" - ", 1)[1].split()[2]
    return dict(o.split("=", 1) for o in opts.split(",") if "=" in o)


@pytest.fixture(scope="module")
def applied(ctd, corpus_pair, docker_archives):
    """A namespace where containerd applied the base image itself, through the snapshotter
    (ctr 1.6 import sends no claim label); the store's du before and after."""
    ns = ctd.ns("applied")
    before = _du(ctd.root)
    ctd.ctr(ns, "images", "import", "--snapshotter", SNAPSHOTTER, docker_archives[0])
    return ns, before, _du(ctd.root)


def test_ctr_import_then_run_through_the_snapshotter(ctd, applied, corpus_pair):
    """containerd applies the layer into an active snapshot; Commit ingests it, and every
    file was already in the store (base was imported there): no object and no byte more;
    the container's lower dir is a layer dir of the store."""
    ns, before, after = applied
    assert after.objects == before.objects and after.object_bytes == before.object_bytes
    assert after.inodes == before.inodes
    out = ctd.run(ns, _tag(ctd.root, corpus_pair[0]),
                  "echo ran-from-layerstore; grep ' / ' /proc/self/mountinfo")
    assert out.startswith("ran-from-layerstore\n")
    opts = _root_mount(out)
    assert opts["lowerdir"].startswith(os.path.join(ctd.root, "layers") + "/")
    assert opts["upperdir"].startswith(os.path.join(ctd.root, "snapshotter") + "/")
    # named by its chainID, as containerd names unpacked layers
    assert _snapshots(ctd, ns) == [corpus_pair[0].diff_ids[0]]


def _snapshots(ctd, ns: str, snapshotter: str = SNAPSHOTTER) -> list[str]:
    out = ctd.ctr(ns, "snapshots", "--snapshotter", snapshotter, "ls")
    return [line.split()[0] for line in out.splitlines()[1:] if line.strip()]


def _load(ctd, ns: str, image, *extra) -> subprocess.CompletedProcess:
    return run(ctd.root, "containerd-load", "--address", ctd.address, "--namespace", ns,
               *extra, _tag(ctd.root, image), check=False)


def test_containerd_load_runs_a_claimed_image_from_the_store(ctd, corpus_pair):
    """containerd-load registers manifest and config only and claims every layer: the
    container's lower dirs are the store's layer dirs, containerd's content store holds two
    blobs, and its snapshots are the chainIDs."""
    _, top = corpus_pair
    ns = ctd.ns("claimed")
    p = _load(ctd, ns, top)
    assert p.returncode == 0, p.stderr.decode() + ctd.log()
    assert p.stdout.decode().split()[0] == top.config_digest
    out = ctd.run(ns, _tag(ctd.root, top), "python3 -c 'print(6 * 7)'; "
                  "grep ' / ' /proc/self/mountinfo")
    assert out.startswith("42\n")
    opts = _root_mount(out)
    assert opts["lowerdir"].split(":") == [os.path.join(ctd.root, "layers", d.split(":")[1])
                                           for d in reversed(top.diff_ids)]
    blobs = ctd.ctr(ns, "content", "ls", "-q").split()
    assert len(blobs) == 2 and top.config_digest in blobs
    manifest = json.loads(ctd.ctr(ns, "content", "get", next(b for b in blobs
                                                               if b != top.config_digest)))
    assert manifest["config"]["digest"] == top.config_digest
    assert set(chain_ids(top.diff_ids)) <= set(_snapshots(ctd, ns))
    assert "claimed" in ctd.log()


def test_a_second_namespace_and_one_where_containerd_applied_the_base(ctd, applied,
                                                                        corpus_pair):
    """Each namespace has its own parent keys, so each gets its own claimed snapshots; where
    containerd applied the base itself, the claimed layers go on top of its snapshot."""
    _, top = corpus_pair
    tag = _tag(ctd.root, top)
    for ns in (ctd.ns("second"), applied[0]):
        p = _load(ctd, ns, top)
        assert p.returncode == 0, p.stderr.decode() + ctd.log()
        out = ctd.run(ns, tag, "python3 -c 'import sys; print(sys.version_info[0])'; "
                      "grep ' / ' /proc/self/mountinfo")
        assert out.startswith("3\n")
        lowers = _root_mount(out)["lowerdir"].split(":")
        assert lowers[:-1] == [os.path.join(ctd.root, "layers", d.split(":")[1])
                               for d in reversed(top.diff_ids[1:])]
        assert lowers[-1].startswith(os.path.join(ctd.root, "layers") + "/")


def test_containerd_load_says_when_no_snapshotter_claims(ctd, corpus_pair):
    """Loading with a snapshotter that is not layerstore's (containerd's own overlayfs) is
    one error line, and leaves no snapshot behind."""
    ns = ctd.ns("unclaimed")
    p = _load(ctd, ns, corpus_pair[0], "--snapshotter", "overlayfs")
    err = p.stderr.decode()
    assert p.returncode == 1 and err.count("\n") == 1, err
    assert re.match(r"layerstore: error: containerd-load: snapshotter 'overlayfs' did not "
                    r"claim layer 0", err), err
    assert _snapshots(ctd, ns, "overlayfs") == []


def test_images_rm_and_containerd_gc_leave_the_store_whole(ctd, corpus_pair):
    """containerd's gc removes the snapshots of a removed image once no namespace holds it
    (claims are shared by namespaces: the same chain over the same parent): each Remove
    unpins, and the store keeps every image, layer and layer dir; fsck finds nothing."""
    _, top = corpus_pair
    tag = _tag(ctd.root, top)
    p = _load(ctd, ctd.ns("removed"), top)
    assert p.returncode == 0, p.stderr.decode()

    def claims():
        with Store(ctd.root) as s:
            index = context(s).index
            with index.read() as txn:
                pins = index.pins(txn)
                return {k: r for k, r in index.snapshots(txn).items()
                        if LABEL_REF in r["labels"]}, pins
    claimed, pins = claims()
    assert claimed and all("snapshot/" + k in pins for k in claimed)
    with Store(ctd.root) as s:
        before = {i.id for i in s.images()}
    for ns in sorted(ctd.namespaces):
        if tag in ctd.ctr(ns, "images", "ls", "-q").split():
            ctd.ctr(ns, "images", "rm", "--sync", tag)
    end = time.monotonic() + 60
    while claims()[0]:
        assert time.monotonic() < end, "containerd's gc left claimed snapshots"
        time.sleep(0.2)
    _, pins = claims()
    assert not any("snapshot/" + k in pins for k in claimed)
    with Store(ctd.root) as s:
        assert {i.id for i in s.images()} == before
        assert s.fsck() == []
        s.gc()
        assert s.fsck() == []
        assert all(os.path.isdir(os.path.join(ctd.root, "layers", d.split(":")[1]))
                   for d in top.diff_ids)
    assert run(ctd.root, "fsck").returncode == 0


@need_root("the snapshotter needs root")
def test_cleanup_never_removes_the_dir_of_a_snapshot_made_while_it_runs(tmp_path, monkeypatch):
    """containerd may call Cleanup while another of its calls prepares a snapshot: a Prepare
    that commits its record after Cleanup read the records, and makes its dir before Cleanup
    lists the dirs, must keep its dir."""
    import threading
    M = api.M
    with Store(tmp_path / "s") as store:
        snap = store.snapshotter()
        records = snap.index.snapshots
        prepared = []

        def prepare_meanwhile(txn):
            found = records(txn)
            if not prepared:
                prepared.append(threading.Thread(target=snap.Prepare, args=(
                    M["PrepareSnapshotRequest"](key="n/1/k"), None)))
                prepared[0].start()
                prepared[0].join(2)     # returns at once when Prepare does not wait
            return found

        monkeypatch.setattr(snap.index, "snapshots", prepare_meanwhile)
        snap.Cleanup(M["CleanupRequest"](), None)
        prepared[0].join()
        assert os.listdir(os.path.join(store.root, "snapshotter")) == [rec_id(snap.index,
                                                                              "n/1/k")]
        assert os.path.isdir(os.path.join(store.root, "snapshotter",
                                          rec_id(snap.index, "n/1/k"), "fs"))


def test_a_file_swapped_for_a_symlink_during_commit_is_not_followed(tmp_path, monkeypatch):
    """What containerd commits may be a container's upper dir, written by the container as
    it is read: a file replaced by a symlink to a host file between the directory listing
    and the read must not bring the host file's bytes into the layer (we run as root)."""
    import io
    import tarfile
    from layerstore import errors
    from layerstore.runtimes import overlay
    secret = tmp_path / "secret"
    secret.write_bytes(b"host secret\n" * 10)
    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / "f").write_bytes(b"container data\n")
    xattrs = overlay._xattrs

    def swap(path):
        if path.endswith("/f") and not os.path.islink(path):
            os.unlink(path)
            os.symlink(secret, path)
        return xattrs(path)

    monkeypatch.setattr(overlay, "_xattrs", swap)
    out = io.BytesIO()
    try:
        overlay.write_changeset(str(upper), out)
    except errors.LayerstoreError:
        return
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tf:
        for m in tf:
            assert not (m.isfile() and b"host secret" in tf.extractfile(m).read())


@need_root("the snapshotter needs root")
def test_the_snapshotter_takes_over_only_a_socket_nothing_listens_on(tmp_path):
    """--address names a socket a previous run left, which is replaced; not a file (the
    snapshotter runs as root: a mistyped path must not be deleted), nor the socket of a
    snapshotter still serving (containerd would lose it)."""
    from helpers import one_line_error

    def start(address):
        p = subprocess.Popen([sys.executable, "-m", "layerstore", "--root", str(tmp_path / "s"),
                              "snapshotter", "--address", str(address)],
                             stderr=subprocess.PIPE, env=python_env())
        line = p.stderr.readline().decode()
        return p, line

    precious = tmp_path / "precious"
    precious.write_bytes(b"keep me\n")
    p, line = start(precious)
    if "serving" in line:
        p.terminate()
        p.wait()
    assert "serving" not in line and p.wait() == 1, line
    assert line.startswith("layerstore: error: ") and precious.read_bytes() == b"keep me\n"
    sock = tmp_path / "snap.sock"
    first, line = start(sock)
    try:
        assert "serving" in line, line
        second, line = start(sock)
        if "serving" in line:
            second.terminate()
            second.wait()
        assert "serving" not in line and second.wait() == 1, line
        client = api.Client(str(sock))      # the first one still serves
        try:
            assert list(client.call("List", api.M["ListSnapshotsRequest"]())) == []
        finally:
            client.close()
    finally:
        first.terminate()
        assert first.wait() == 0
    again, line = start(sock)       # left by a run that ended: taken over
    again.terminate()
    assert "serving" in line and again.wait() == 0
