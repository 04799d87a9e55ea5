"""rm, gc and du: Docker's rmi semantics, what gc frees (and what it must not), gc's locking
against imports, and du's figures against an independent count of the store's files."""

import io
import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import archives as A
from helpers import (context, differences, lock, object_files, one_line_error, python_env, run,
                     run_on_terminal, snapshot, state)
from layerstore import Store, errors
from layerstore.store import pipeline

# L1 is shared by X and Y; X has L2, Y has L3.  "same" is one object in L2 and L3.
L1 = A.layer(("d", "etc"), ("f", "etc/os-release", b"NAME=test\n"), ("f", "bin/sh", b"\x7fELF" * 3000, 0o755),
             ("f", "etc/empty", b""))
L2 = A.layer(("f", "x/only", b"x" * 20000), ("f", "x/same", b"same" * 1000))
L3 = A.layer(("f", "y/only", b"y" * 30000), ("f", "y/same", b"same" * 1000))
L4 = A.layer(("f", "z/data", b"z" * 7000))
X = ([L1, L2], ["x:1", "x:2"])
Y = ([L1, L3], ["y:1"])


def image_id(layers) -> str:
    return A.digest(A.config(layers))


def archive(tmp_path, *images, name="a.tar"):
    path = tmp_path / name
    path.write_bytes(A.docker_archive(list(images)))
    return path


def layer_objects(store, diff_id) -> set[str]:
    return {e.object_id for e in store.layer_entries(diff_id) if e.object_id and e.size}


@pytest.fixture
def both(tmp_path):
    """A store holding X (tags x:1, x:2) and Y (tag y:1)."""
    root = tmp_path / "store"
    with Store(root) as s:
        s.import_archive(archive(tmp_path, X, Y))
        yield s


# ---- rm ----------------------------------------------------------------------------------------

def test_rm_tag_untags_and_last_tag_deletes(both):
    x = image_id(X[0])
    assert both.remove("x:1") == [("untagged", "docker.io/library/x:1")]
    assert both.image(x).tags == ("docker.io/library/x:2",)
    with pytest.raises(errors.ImageNotFound):
        both.image("x:1")
    assert both.remove(["x:2"]) == [("untagged", "docker.io/library/x:2"), ("deleted", x)]
    with pytest.raises(errors.ImageNotFound):
        both.image(x)
    st = state(both.root)
    assert x.encode().hex() not in st["images"]
    assert st["layers"][A.digest(L1).encode().hex()] == 1      # Y still holds L1
    assert st["layers"][A.digest(L2).encode().hex()] == 0      # gc's to free
    assert st["object_files"] == len(object_files(both.root))  # rm deletes no file
    with context(both).index.read() as txn:
        assert context(both).index.metadata(txn, x) is None
        assert context(both).index.image_tree(txn, x) is None
    assert [i.id for i in both.images()] == [image_id(Y[0])]


def test_rm_by_id_with_several_tags_needs_force(both):
    x = image_id(X[0])
    before = state(both.root)
    with pytest.raises(errors.LayerstoreError) as exc:
        both.remove(x)
    assert "docker.io/library/x:1" in str(exc.value) and "--force" in str(exc.value)
    assert state(both.root) == before
    assert both.remove(x, force=True) == [("untagged", "docker.io/library/x:1"),
                                          ("untagged", "docker.io/library/x:2"),
                                          ("deleted", x)]
    # One tag: by id needs no force (as docker rmi); a 12-digit prefix names it too.
    y = image_id(Y[0])
    assert both.remove(y[7:19]) == [("untagged", "docker.io/library/y:1"), ("deleted", y)]
    assert both.images() == []


def test_rm_is_all_or_nothing(both):
    before = state(both.root)
    with pytest.raises(errors.ImageNotFound):
        both.remove(["x:1", "nosuch:1"])
    assert state(both.root) == before
    # The same image named twice (tag, then id) is removed once, without an error.
    y = image_id(Y[0])
    assert both.remove(["y:1", y]) == [("untagged", "docker.io/library/y:1"), ("deleted", y)]


def test_rm_of_a_retagged_image_leaves_the_dangling_one(tmp_path, both):
    # Tag y:1 moves to a new image: the old Y is dangling (no tags), removable by id.
    both.import_archive(archive(tmp_path, ([L4], ["y:1"]), name="z.tar"))
    y = image_id(Y[0])
    assert both.image(y).tags == ()
    assert both.remove(y) == [("deleted", y)]


# ---- gc ----------------------------------------------------------------------------------------

def test_rm_then_gc_frees_exactly_what_only_that_image_used(tmp_path, both):
    keep = layer_objects(both, A.digest(L1)) | layer_objects(both, A.digest(L2))
    gone = layer_objects(both, A.digest(L3)) - keep
    assert gone and keep & layer_objects(both, A.digest(L3))   # "same" is shared
    both.remove("y:1")
    r = both.gc()
    assert (r.layers, r.objects, r.garbage_objects, r.tmp_files) == (1, len(gone), 0, 0)
    assert r.object_bytes == 30000 and r.bytes == 30000 and r.files == len(gone)
    assert not r.scanned_objects
    on_disk = {f.replace("/", "")[len("objects"):] for f in object_files(both.root)}
    assert on_disk == keep
    # The index is exactly that of a store into which only X was imported.
    with Store(tmp_path / "fresh") as fresh:
        fresh.import_archive(archive(tmp_path, X, name="x.tar"))
    got, want = state(both.root), state(tmp_path / "fresh")
    for db in ("images", "tags", "layers", "objects", "blobs", "object_files"):
        assert got[db] == want[db], db
    assert both.gc() == type(r)(False, 0, 0, 0, 0, 0, 0, 0, 0, False)
    dest = tmp_path / "co"
    both.checkout("x:1", dest)
    assert (dest / "x" / "same").read_bytes() == b"same" * 1000


def test_gc_dry_run_changes_nothing(both):
    both.remove(["x:1", "x:2"])
    before, files = state(both.root), object_files(both.root)
    os.makedirs(os.path.join(both.root, "tmp"), exist_ok=True)
    with open(os.path.join(both.root, "tmp", "obj-1-1"), "wb") as f:
        f.write(b"left")
    dry = both.gc(dry_run=True)
    assert dry.dry_run and dry.layers == 1 and dry.objects == 1 and dry.tmp_files == 1  # "same" stays
    assert state(both.root) == before and object_files(both.root) == files
    assert os.listdir(os.path.join(both.root, "tmp")) == ["obj-1-1"]
    real = both.gc()
    assert (real.layers, real.objects, real.object_bytes, real.tmp_files, real.bytes) == \
        (dry.layers, dry.objects, dry.object_bytes, dry.tmp_files, dry.bytes)


def test_gc_removes_garbage_files_of_a_killed_import(both):
    before = state(both.root)
    root = both.root
    # What a SIGKILLed import leaves: objects linked into objects/ but never committed,
    # a named temporary object in tmp/, and the import's marker (import_started).
    junk = os.path.join(root, "objects", "ab", "cd" * 31)
    os.makedirs(os.path.dirname(junk), exist_ok=True)
    with open(junk, "wb") as f:
        f.write(b"j" * 1234)
    stray = os.path.join(root, "objects", "ab", "not-an-object")
    open(stray, "wb").close()
    with open(os.path.join(root, "tmp", "obj-4242-7"), "wb") as f:
        f.write(b"half")
    from layerstore.store import lifecycle
    lifecycle.import_started(both.root)
    r = both.gc()
    assert r.scanned_objects
    assert (r.layers, r.objects, r.garbage_objects, r.garbage_bytes) == (0, 0, 2, 1234)
    assert r.tmp_files == 1 and r.tmp_bytes == 4
    assert not os.path.exists(junk) and not os.path.exists(stray)
    assert os.listdir(os.path.join(root, "tmp")) == []
    assert os.listdir(os.path.join(root, "pending")) == []
    assert state(root) == before
    assert both.fsck() == []


def test_gc_full_finds_garbage_without_a_marker(both):
    junk = os.path.join(both.root, "objects", "00", "11" * 31)
    os.makedirs(os.path.dirname(junk), exist_ok=True)
    open(junk, "wb").close()
    assert both.gc().garbage_objects == 0           # no sign of an interrupted import
    assert os.path.exists(junk)
    assert both.gc(full=True).garbage_objects == 1
    assert not os.path.exists(junk)


def test_failed_import_removes_its_objects_and_marker(tmp_path, both, monkeypatch):
    before, files = state(both.root), object_files(both.root)

    def boom(*a, **k):
        raise errors.LayerstoreError("injected failure before the commit")
    monkeypatch.setattr(pipeline, "_commit", boom)
    with pytest.raises(errors.LayerstoreError):
        both.import_archive(archive(tmp_path, ([L1, L4], ["z:1"]), name="z.tar"))
    monkeypatch.undo()
    # z/data was written and never committed: gone again; L1's objects were stored before
    # and stay.
    assert object_files(both.root) == files and state(both.root) == before
    assert os.listdir(os.path.join(both.root, "tmp")) == []
    assert os.listdir(os.path.join(both.root, "pending")) == []
    assert not both.gc().scanned_objects and both.fsck() == []
    both.import_archive(archive(tmp_path, ([L4], ["z:1"]), name="z.tar"))
    assert os.listdir(os.path.join(both.root, "pending")) == []


def test_failed_import_beside_another_lock_holder_leaves_its_objects_to_gc(tmp_path, both,
                                                                          monkeypatch):
    """While another process holds the store lock (an import that may have found one of the
    failed import's objects already there), the failed import cannot tell whether its objects
    are about to be referenced: they stay, with its marker, and gc removes them."""
    import fcntl
    files = object_files(both.root)

    def boom(*a, **k):
        raise errors.LayerstoreError("injected failure before the commit")
    monkeypatch.setattr(pipeline, "_commit", boom)
    other = os.open(os.path.join(both.root, "lock"), os.O_RDWR)
    try:
        fcntl.flock(other, fcntl.LOCK_SH)
        with pytest.raises(errors.LayerstoreError):
            both.import_archive(archive(tmp_path, ([L4], ["z:1"]), name="z.tar"))
    finally:
        os.close(other)
    monkeypatch.undo()
    assert len(object_files(both.root)) == len(files) + 1    # z/data, never committed
    assert [n for n in os.listdir(os.path.join(both.root, "pending"))
            if n.startswith("import-")]
    assert [p.kind for p in both.fsck()] == ["garbage"]
    r = both.gc()
    assert r.scanned_objects and r.garbage_objects == 1 and r.garbage_bytes == 7000
    assert object_files(both.root) == files
    assert os.listdir(os.path.join(both.root, "pending")) == []


_PAUSED_IMPORT = textwrap.dedent("""
    import sys
    from layerstore import Store
    from layerstore.store import pipeline
    real = pipeline._commit
    def paused(*a, **k):
        print("written", flush=True)        # objects on disk, index not yet committed
        sys.stdin.readline()
        return real(*a, **k)
    pipeline._commit = paused
    with Store(sys.argv[1]) as s:
        s.import_archive(sys.argv[2])
    print("committed", flush=True)
""")


def test_gc_waits_for_an_import_and_keeps_its_objects(tmp_path, both):
    both.remove(["y:1"])            # something for gc to free, so it commits too
    arc = archive(tmp_path, ([L1, L4], ["z:1"]), name="z.tar")
    child = subprocess.Popen([sys.executable, "-c", _PAUSED_IMPORT, both.root, str(arc)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=python_env(),
                             text=True)
    try:
        assert child.stdout.readline().strip() == "written"
        z_obj = both.object_path(next(iter(
            {e.object_id for e in A_entries(L4)})))
        assert os.path.exists(z_obj)                # written, unknown to the index
        result = {}
        t = threading.Thread(target=lambda: result.setdefault("gc", both.gc()))
        t.start()
        time.sleep(0.6)
        assert t.is_alive(), "gc ran while an import held the store lock"
        assert os.path.exists(z_obj)
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "committed"
        t.join(30)
        assert not t.is_alive()
    finally:
        child.kill() if child.poll() is None else None
        child.wait()
    r = result["gc"]
    assert r.layers == 1 and r.garbage_objects == 0
    assert os.path.exists(z_obj)
    dest = tmp_path / "z"
    both.checkout("z:1", dest)
    assert (dest / "z" / "data").read_bytes() == b"z" * 7000
    assert (dest / "bin" / "sh").read_bytes() == b"\x7fELF" * 3000
    assert both.fsck() == []


def test_gc_is_not_starved_by_back_to_back_imports(both):
    """Shared holders that always overlap (one takes the lock before the last lets go) would
    keep a plain flock's exclusive request waiting forever; the gate lets gc in.  Readers run
    until gc is through, or until its lock timeout proves it starved."""
    both.remove(["y:1"])
    gc_done = threading.Event()
    entered = []

    def reader(k):
        time.sleep(k * 0.01)        # staggered: some holder always holds
        with Store(both.root) as s:
            while not gc_done.is_set():
                with lock(s).shared():
                    entered.append(k)
                    time.sleep(0.03)

    readers = [threading.Thread(target=reader, args=(k,)) for k in range(3)]
    for t in readers:
        t.start()
    try:
        while len(entered) < 6:
            time.sleep(0.01)
        with Store(both.root, lock_timeout=20) as s:
            r = s.gc()
        assert r.layers == 1
    finally:
        gc_done.set()
        for t in readers:
            t.join()


def test_store_lock_is_reentrant_in_a_thread(both):
    with lock(both).shared():
        with lock(both).shared():     # a progress callback that calls the store does this
            pass
        with pytest.raises(RuntimeError):
            with lock(both).exclusive():
                pass
    # Released: gc takes it exclusive, and both images still hold everything.
    r = both.gc()
    assert (r.layers, r.objects, r.files) == (0, 0, 0)
    assert len(both.images()) == 2


def A_entries(layer_tar):
    from layerstore import _native
    import io
    return _native.ingest_stream(io.BytesIO(layer_tar)).entries()


def test_gc_removes_unused_overlay_layer_dirs(both):
    # Layer dirs as overlay.layer_dirs makes them (mounting needs root; made by hand here).
    from layerstore.runtimes import overlay
    base = os.path.join(both.root, "layers")
    hexd = lambda l: A.digest(l)[7:]            # noqa: E731
    chain_y = overlay.chain_ids([A.digest(L1), A.digest(L3)])[1]
    names = [hexd(L1), hexd(L2), hexd(L3), "chain-" + chain_y[7:], "empty", ".tmp-dead",
             "chain-" + "9" * 64]
    for n in names:
        os.makedirs(os.path.join(base, n, "etc"))
    # A container that still has X's L2 dir as a lower keeps it after X goes.
    cdir = os.path.join(both.root, "containers", "c1")
    os.makedirs(cdir)
    with open(os.path.join(cdir, "container.json"), "w") as f:
        json.dump({"id": "c1", "image": "sha256:" + "0" * 64, "diff_ids": [], "mountpoint": "/nowhere",
                   "upper": "/u", "work": "/w", "lowers": [os.path.join(base, hexd(L2))],
                   "kind": "overlay", "own_upper": True, "created": ""}, f)
    assert both.gc().layer_dirs == 2                # .tmp-dead and the unknown chain
    both.remove(["x:1", "x:2", "y:1"])
    r = both.gc()
    assert r.layers == 3 and r.layer_dirs == 3      # L1, L3 and Y's chain
    assert sorted(os.listdir(base)) == sorted(["empty", hexd(L2)])


# ---- du ----------------------------------------------------------------------------------------

def test_du_against_an_independent_count(tmp_path, both):
    both.import_archive(archive(tmp_path, ([L4], ["z:1"]), name="z.tar"))
    r = both.du()
    inodes, index_bytes = {}, 0
    for dirpath, _, names in os.walk(os.path.join(both.root, "objects")):
        for n in names:
            st = os.lstat(os.path.join(dirpath, n))
            inodes[(st.st_dev, st.st_ino)] = st.st_blocks * 512
    for n in os.listdir(os.path.join(both.root, "index")):
        index_bytes += os.lstat(os.path.join(both.root, "index", n)).st_blocks * 512
    assert r.inodes == len(inodes) and r.object_bytes == sum(inodes.values())
    assert r.objects == len(state(both.root)["objects"])
    assert r.index_bytes == index_bytes and r.disk_bytes == sum(inodes.values()) + index_bytes
    per_image = {}
    for image in both.images():
        ino = {}
        for d in image.diff_ids:
            for e in both.layer_entries(d):
                if e.object_id and e.size:
                    st = os.lstat(both.object_path(e.object_id))
                    ino[(st.st_dev, st.st_ino)] = st.st_blocks * 512
        per_image[image.id] = ino
    by_id = {u.id: u for u in r.images}
    assert set(by_id) == set(per_image)
    for iid, ino in per_image.items():
        others = set().union(*(v for k, v in per_image.items() if k != iid))
        u = by_id[iid]
        assert u.disk_bytes == sum(ino.values())
        assert u.shared_bytes == sum(b for k, b in ino.items() if k in others)
        assert u.unique_bytes == u.disk_bytes - u.shared_bytes
        assert u.logical_bytes == both.image(iid).size
    x, y = by_id[image_id(X[0])], by_id[image_id(Y[0])]
    assert x.shared_bytes == y.shared_bytes > 0 and by_id[image_id([L4])].shared_bytes == 0
    assert r.logical_bytes == sum(i.size for i in both.images())
    assert r.layer_bytes == sum(l.file_bytes for l in both.layers())
    assert r.dedup_ratio == round(r.logical_bytes / r.disk_bytes, 3)
    # A layer outside every image (import_layer; a snapshotter's) counts once in logical.
    extra = both.import_layer(io.BytesIO(A.layer(("f", "outside", b"o" * 50000))))
    r2 = both.du()
    assert r2.logical_bytes == r.logical_bytes + extra.file_bytes


# ---- CLI ---------------------------------------------------------------------------------------

def test_cli_rm_gc_du(tmp_path):
    root = tmp_path / "s"
    run(root, "import", str(archive(tmp_path, X, Y)))
    x, y = image_id(X[0]), image_id(Y[0])
    err = one_line_error(run(root, "rm", x, check=False))
    assert "--force" in err and "docker.io/library/x:2" in err
    err = one_line_error(run(root, "rm", "nosuch:1", check=False))
    assert "no such image: nosuch:1" in err
    assert run(root, "rm", "x:1").stdout.decode() == "Untagged: docker.io/library/x:1\n"
    assert run(root, "rm", "-f", "x:2", "y:1").stdout.decode().splitlines() == [
        "Untagged: docker.io/library/x:2", f"Deleted: {x}",
        "Untagged: docker.io/library/y:1", f"Deleted: {y}"]
    dry = json.loads(run(root, "gc", "--dry-run", "--json").stdout)
    assert dry["dry_run"] and dry["layers"] == 3 and dry["objects"] > 0
    out = run(root, "gc").stdout.decode()
    assert out.startswith("freed 3 layers, ") and out.count("\n") == 1
    again = json.loads(run(root, "gc", "--json").stdout)
    assert again["layers"] == again["objects"] == again["files"] == again["bytes"] == 0
    run(root, "import", str(archive(tmp_path, Y, name="y.tar")))
    du = json.loads(run(root, "du", "--json").stdout)
    assert {"images", "logical_bytes", "disk_bytes", "dedup_ratio", "objects", "inodes"} <= set(du)
    (img,) = du["images"]
    assert img["id"] == y and img["tags"] == ["docker.io/library/y:1"] and img["shared_bytes"] == 0
    table = run(root, "du").stdout.decode().splitlines()
    assert table[0].split()[:3] == ["IMAGE", "ID", "TAGS"] and table[1].startswith(y[7:19])
    assert table[-1].startswith("store: ")


# ---- corpus ------------------------------------------------------------------------------------

def test_corpus_rm_one_gc_others_intact(tmp_path, corpus_dir):
    archives = sorted(corpus_dir.glob("*.tar.zst"))
    assert len(archives) >= 3
    with Store(tmp_path / "store") as store:
        ids = [store.import_archive(a)[0].id for a in archives]
        snaps = {}
        for i in ids[1:]:
            store.checkout(i, tmp_path / f"before-{i[7:19]}")
            snaps[i] = snapshot(str(tmp_path / f"before-{i[7:19]}"))
        victim = ids[0]
        held = {i: set().union(*(layer_objects(store, d) for d in store.image(i).diff_ids))
                for i in ids}
        kept = set().union(*(held[i] for i in ids[1:]))
        store.remove(victim, force=True)
        r = store.gc()
        # Exactly what the removed image held alone is freed; nothing else.
        assert r.objects == len(held[victim] - kept)
        assert r.garbage_objects == 0 and not r.scanned_objects
        on_disk = {f.replace("/", "")[len("objects"):] for f in object_files(store.root)}
        assert on_disk == kept
        assert store.du().objects == len(kept)
        assert store.fsck() == []
        for i in ids[1:]:
            dest = tmp_path / f"after-{i[7:19]}"
            store.checkout(i, dest)
            now = snapshot(str(dest))
            assert differences(snaps[i][0], now[0]) == []
            assert snaps[i][1] == now[1]


# ---- gc progress ---------------------------------------------------------------------------

def _leave_garbage(store):
    """A dead image, an object file and a tmp/ directory a killed import left."""
    from layerstore.store import lifecycle
    store.remove("y:1")
    with open(os.path.join(store.root, "objects", "ab", "cd" * 31), "wb") as f:
        f.write(b"j" * 1234)
    os.makedirs(os.path.join(store.root, "tmp", "half", "sub"))
    for name, size in (("half/a", 10), ("half/sub/b", 20)):
        with open(os.path.join(store.root, "tmp", name), "wb") as f:
            f.write(b"t" * size)
    lifecycle.import_started(store.root)


def test_gc_progress_counts_the_files_and_bytes_it_removes(both):
    from layerstore import Progress
    _leave_garbage(both)
    seen = []
    assert both.gc(dry_run=True, progress=seen.append).files == 4 and seen == []
    r = both.gc(progress=seen.append)
    assert (r.objects, r.garbage_objects, r.tmp_files, r.files) == (1, 1, 2, 4)
    assert seen[-1] == Progress(r.bytes, r.bytes, r.files, r.files)
    assert all((p.bytes_total, p.items_total) == (r.bytes, r.files) for p in seen)
    assert [p.items_done for p in seen] == sorted(p.items_done for p in seen)


def test_gc_progress_shows_on_a_terminal_only(both):
    _leave_garbage(both)
    assert run_on_terminal(both.root, "gc", "--dry-run", "--json")[1] == ""
    status, shown = run_on_terminal(both.root, "gc")
    assert status == 0 and "freeing" in shown and "/4 files" in shown
    assert shown.endswith("\r\x1b[K")


def test_a_pin_keeps_its_layers_and_layer_dirs_from_gc(tmp_path, both):
    """A runtime serving a layer in place (an exported containers-storage store, a containerd
    snapshot) pins it: rm of the image and gc keep the layer, its objects and its layer dirs
    until the pin goes."""
    from helpers import context, lock
    from layerstore.runtimes.overlay import layer_dirs
    x = both.image("x:1")
    index = context(both).index
    with lock(both).shared():
        dirs = layer_dirs(context(both), x.diff_ids)
    with index.write() as txn:
        index.pin(txn, "cstore/test", list(x.diff_ids))
        with pytest.raises(errors.LayerNotFound):
            index.pin(txn, "cstore/bad", ["sha256:" + "0" * 64])
    both.remove(["x:1", "x:2"])
    r = both.gc()
    assert r.layers == 0 and all(os.path.isdir(d) for d in dirs)
    assert both.fsck() == []
    assert {e.path for e in both.layer_entries(x.diff_ids[1])} >= {"x/only"}
    with index.write() as txn:
        assert index.unpin(txn, "cstore/test") and not index.unpin(txn, "cstore/test")
    r = both.gc()
    assert r.layers == 1 and not os.path.exists(dirs[1])     # L1 is Y's too
    assert both.fsck() == []
