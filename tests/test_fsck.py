"""fsck: a whole store is clean; damage of every kind is found (all of it), repair fixes what
it can, and a re-import of the original archive heals the rest."""

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import pytest

import archives as A
from helpers import (context, mount_or_skip, need_root, need_tool, python_env, run_on_terminal,
                     state)
from layerstore import Store, _native
from layerstore import Progress
from layerstore.cli import main

L1 = A.layer(("d", "etc"), ("f", "etc/os-release", b"NAME=test\n"),
             ("f", "bin/sh", b"\x7fELF" * 300, 0o755), ("f", "etc/empty", b""))
L2 = A.layer(("f", "app/main.py", b"print('hi')\n"), ("h", "app/sh-link", "bin/sh"))


@pytest.fixture
def archive(tmp_path):
    path = tmp_path / "img.tar"
    path.write_bytes(A.docker_archive([([L1, L2], ["test/app:1"])]))
    return path


@pytest.fixture
def store(tmp_path, archive):
    with Store(tmp_path / "store") as s:
        s.import_archive(archive)
        yield s


def _object_of(store, path):
    entry = store.stat("test/app:1", path)
    return store.object_path(entry.object_id)


def _kinds(problems):
    return sorted(p.kind for p in problems)


def test_clean_store_is_clean(store, tmp_path):
    assert store.fsck() == []
    assert main(["--root", store.root, "fsck"]) == 0


def test_tamper_through_checkout_then_repair_and_reimport_heal(store, archive, tmp_path):
    store.checkout("test/app:1", tmp_path / "co", link=True)    # shares the object's inode
    target = tmp_path / "co" / "bin" / "sh"
    os.chmod(target, 0o755 | 0o200)     # as a user, objects are read-only
    with open(target, "r+b") as f:
        f.write(b"EVIL")
    (p,) = [p for p in store.fsck() if p.kind == "object-corrupt"]
    image = store.image("test/app:1")
    assert p.images == (image.id,) and not p.repairable
    fixed = store.fsck(repair=True)
    assert "object-corrupt" in _kinds(fixed)
    assert _kinds(store.fsck()) == ["object-missing"]     # deleted, until re-imported
    store.import_archive(archive)
    assert store.fsck() == []
    store.checkout("test/app:1", tmp_path / "co2")
    assert (tmp_path / "co2" / "bin" / "sh").read_bytes() == b"\x7fELF" * 300


def test_missing_object_is_reported_and_reimport_heals(store, archive):
    os.unlink(_object_of(store, "app/main.py"))
    (p,) = store.fsck()
    assert p.kind == "object-missing" and p.images == (store.image("test/app:1").id,)
    store.fsck(repair=True)
    with open(archive, "rb") as f:      # a stream re-ingests every layer anyway
        store.import_archive(f)
    assert store.fsck() == []


@pytest.mark.parametrize("kind", ["symlink", "directory", "fifo", "truncated", "grown"])
def test_object_replaced_by_something_else(store, archive, kind):
    """An object's name holding a symlink (never followed), a directory, a fifo (never waited
    on) or a file of another size is corrupt; repair and a re-import heal it."""
    path = _object_of(store, "bin/sh")
    os.chmod(path, 0o644)
    if kind == "truncated":
        os.truncate(path, 10)
    elif kind == "grown":
        with open(path, "ab") as f:
            f.write(b"more")
    else:
        os.unlink(path)
        {"symlink": lambda: os.symlink("/etc/passwd", path), "directory": lambda: os.mkdir(path),
         "fifo": lambda: os.mkfifo(path)}[kind]()
    (p,) = store.fsck()
    assert p.kind == "object-corrupt" and p.images == (store.image("test/app:1").id,)
    assert ("not a regular file" in p.detail) == (kind in ("symlink", "directory", "fifo"))
    store.fsck(repair=True)
    store.import_archive(archive)
    assert store.fsck() == []


def test_stray_files_reported_and_removed(store):
    stray = os.path.join(store.root, "objects", "ab", "not-an-object")
    unref = os.path.join(store.root, "objects", "cd", "e" * 62)
    tmp = os.path.join(store.root, "tmp", "leftover")
    for p in (stray, unref, tmp):
        with open(p, "w") as f:
            f.write("x")
    # Nothing explains an unreferenced object without a marker of interrupted work: stray.
    assert _kinds(store.fsck()) == ["garbage", "stray-file", "stray-file"]
    fixed = store.fsck(repair=True)
    assert all(p.fixed for p in fixed)
    assert not any(os.path.exists(p) for p in (stray, unref, tmp))
    assert store.fsck() == []


_CORRUPT = textwrap.dedent("""
    import os, sys, struct, json, lmdb
    env = lmdb.open(os.path.join(sys.argv[1], "index"), max_dbs=16)
    with env.begin(write=True) as txn:
        objects = env.open_db(b"objects", txn=txn)
        key, value = next(iter(txn.cursor(db=objects)))
        size, refs = struct.unpack("<QI", value)
        txn.put(key, struct.pack("<QI", size, refs + 5), db=objects)
        layers = env.open_db(b"layers", txn=txn)
        k, v = next(iter(txn.cursor(db=layers)))
        rec = json.loads(v); rec["refs"] = 7
        txn.put(k, json.dumps(rec).encode(), db=layers)
        tags = env.open_db(b"tags", txn=txn)
        txn.put(b"docker.io/gone/image:1", b"sha256:" + b"0" * 64, db=tags)
        blobs = env.open_db(b"blobs", txn=txn)
        txn.put(b"sha256:" + b"1" * 64, b"sha256:" + b"2" * 64, db=blobs)
        repo_digests = env.open_db(b"repo_digests", txn=txn)
        txn.put(b"docker.io/gone/image@sha256:" + b"3" * 64, b"sha256:" + b"0" * 64,
                db=repo_digests)
        locations = env.open_db(b"blob_locations", txn=txn)
        txn.put(b"sha256:" + b"4" * 64, b'["docker.io/gone/image"]', db=locations)
""")


def test_index_damage_reported_and_repaired(store, tmp_path):
    before = state(store.root)
    store.close()
    subprocess.run([sys.executable, "-c", _CORRUPT, store.root], check=True, env=python_env())
    with Store(store.root) as s:
        assert _kinds(s.fsck()) == ["blob-dangling", "blob-location-dangling",
                                    "layer-refcount", "object-refcount",
                                    "repo-digest-dangling", "tag-dangling"]
        assert all(p.fixed for p in s.fsck(repair=True))
        assert s.fsck() == []
    assert state(store.root) == before


def test_metadata_change_reported_and_restored(store):
    path = _object_of(store, "etc/os-release")
    os.chmod(path, 0o600)
    (p,) = store.fsck()
    assert p.kind == "object-metadata" and p.repairable
    store.fsck(repair=True)
    assert os.stat(path).st_mode & 0o7777 == 0o644
    assert store.fsck() == []


def test_every_problem_is_reported_not_the_first(store):
    os.unlink(_object_of(store, "app/main.py"))
    os.chmod(_object_of(store, "etc/os-release"), 0o600)
    open(os.path.join(store.root, "tmp", "x"), "w").close()
    assert _kinds(store.fsck()) == ["garbage", "object-metadata", "object-missing"]


def test_cli_json_and_exit_codes(store, capsys):
    root = store.root
    assert main(["--root", root, "fsck", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    os.unlink(_object_of(store, "app/main.py"))
    open(os.path.join(root, "tmp", "x"), "w").close()
    assert main(["--root", root, "fsck"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["object-missing", "1"]
    assert out[1] == "1 file left by interrupted work; `layerstore gc` removes it"
    assert main(["--root", root, "fsck", "--json"]) == 1
    got = json.loads(capsys.readouterr().out)
    assert sorted((p["kind"], p["garbage"]) for p in got) == [
        ("garbage", True), ("object-missing", False)]
    assert main(["--root", root, "fsck", "--repair"]) == 1
    out = capsys.readouterr().out
    assert "fixed: 1 file left by interrupted work, removed" in out
    assert "re-import: sha256:" in out and "test/app:1" in out


def test_garbage_of_interrupted_work_leaves_the_store_whole(store, archive, capsys):
    """What a killed import leaves (its marker in pending/, objects no layer holds, a file in
    tmp/) is garbage: fsck exits 0 and says gc removes it, and gc does."""
    from layerstore.store import lifecycle
    lifecycle.import_started(store.root)            # never finished: the process "died"
    orphan = os.path.join(store.root, "objects", "cd", "e" * 62)
    for p in (orphan, os.path.join(store.root, "tmp", "obj-1-2")):
        with open(p, "w") as f:
            f.write("x")
    problems = store.fsck()
    assert [p.garbage for p in problems] == [True, True]
    assert main(["--root", store.root, "fsck"]) == 0
    assert capsys.readouterr().out == ("2 files left by interrupted work; `layerstore gc` "
                                       "removes them\n")
    assert main(["--root", store.root, "fsck", "--verbose"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert sorted(line.split()[1].rstrip(":") for line in listed[:2]) == [
        os.path.relpath(orphan, store.root), "tmp/obj-1-2"]
    assert all(line.startswith("garbage ") for line in listed[:2])
    assert listed[2:] == ["2 files left by interrupted work; `layerstore gc` removes them"]
    assert main(["--root", store.root, "fsck", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert len(got) == 2 and all(p["garbage"] for p in got)
    store.gc()
    assert store.fsck() == [] and not os.path.exists(orphan)


def test_corpus_store_is_clean(corpus_images, tmp_path):
    with Store(tmp_path / "corpus") as s:
        for image in corpus_images:
            with open(image.archive, "rb") as f:
                s.import_archive(f)
        assert s.fsck() == []


# ---- damaged objects re-made from an object with the same content ---------------------------

HOLEY = bytes(1 << 16) + b"data" + bytes(1 << 16)
# Another image holds bin/sh's and a holey file's bytes under other modes: other objects.
L3 = A.layer(("f", "opt/sh", b"\x7fELF" * 300, 0o700), ("f", "opt/holey", HOLEY, 0o600))
L4 = A.layer(("f", "var/holey", HOLEY, 0o644))
CONTENT = {"test/app:1": {"etc/os-release": b"NAME=test\n", "bin/sh": b"\x7fELF" * 300,
                          "app/main.py": b"print('hi')\n", "app/sh-link": b"\x7fELF" * 300},
           "test/other:1": {"opt/sh": b"\x7fELF" * 300, "opt/holey": HOLEY,
                            "var/holey": HOLEY}}


@pytest.fixture
def twins(tmp_path):
    path = tmp_path / "twins.tar"
    path.write_bytes(A.docker_archive([([L1, L2], ["test/app:1"]),
                                       ([L3, L4], ["test/other:1"])]))
    with Store(tmp_path / "store") as s:
        s.import_archive(path)
        yield s, path


def _tamper(path, data=b"EVIL"):
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.write(data)


def _assert_every_image_reads_right(store, capsysbinary):
    for ref, files in CONTENT.items():
        for path, content in files.items():
            with store.open(ref, path) as f:
                assert f.read() == content, (ref, path)
    capsysbinary.readouterr()
    assert main(["--root", store.root, "cat", "test/app:1", "/bin/sh"]) == 0
    assert capsysbinary.readouterr().out == CONTENT["test/app:1"]["bin/sh"]


def _marks(store):
    with context(store).index.read() as txn:
        return context(store).index.reimport_marks(txn)


def test_tampered_object_is_remade_from_its_twin(twins, tmp_path, capsysbinary):
    """As through a hardlinked checkout: the user's file keeps what they wrote, the store gets
    a new file with the object's bytes and metadata."""
    store, _ = twins
    sh, twin = (store.stat(ref, p).object_id for ref, p in (("test/app:1", "bin/sh"),
                                                             ("test/other:1", "opt/sh")))
    assert sh != twin
    holey = [store.stat("test/other:1", p).object_id for p in ("var/holey", "opt/holey")]
    users = tmp_path / "checked-out-sh"
    os.link(store.object_path(sh), users)
    for oid in (sh, holey[0]):
        _tamper(store.object_path(oid))
    inode = os.stat(users).st_ino
    problems = {p.subject: p for p in store.fsck()}
    assert sorted(problems) == sorted([sh, holey[0]])
    assert problems[sh].kind == "object-corrupt" and problems[sh].repairable
    assert problems[sh].detail.endswith(f"repair copies its content from object {twin}")
    assert all(p.fixed for p in store.fsck(repair=True))
    assert store.fsck() == [] and _marks(store) == set()
    st = os.stat(store.object_path(sh))
    assert st.st_ino != inode and st.st_mtime_ns == 0
    assert users.read_bytes().startswith(b"EVIL")
    assert stat.S_IMODE(st.st_mode) == (0o755 if os.geteuid() == 0 else 0o755 | 0o400)
    st = os.stat(store.object_path(holey[0]))
    assert st.st_blocks * 512 < len(HOLEY) // 2      # the copy kept the holes
    _assert_every_image_reads_right(store, capsysbinary)


def test_missing_object_is_remade_from_its_twin(twins, capsysbinary):
    store, _ = twins
    twin = store.stat("test/other:1", "opt/sh").object_id
    os.unlink(store.object_path(twin))
    (p,) = store.fsck()
    assert p.kind == "object-missing" and p.repairable
    assert store.fsck(repair=True)[0].fixed
    assert store.fsck() == [] and _marks(store) == set()
    assert stat.S_IMODE(os.stat(store.object_path(twin)).st_mode) == 0o700
    _assert_every_image_reads_right(store, capsysbinary)


def test_without_a_whole_twin_the_layers_are_marked(twins):
    """Both objects of one content damaged: nothing in the store holds it; re-import heals."""
    store, archive = twins
    ids = [store.stat(ref, p).object_id for ref, p in (("test/app:1", "bin/sh"),
                                                        ("test/other:1", "opt/sh"))]
    for oid in ids:
        _tamper(store.object_path(oid))
    problems = store.fsck()
    assert sorted(p.subject for p in problems) == sorted(ids)
    assert not any(p.repairable for p in problems)
    store.fsck(repair=True)
    assert _kinds(store.fsck()) == ["object-missing", "object-missing"]
    assert _marks(store) == set(store.image("test/app:1").diff_ids[:1] +
                                store.image("test/other:1").diff_ids[:1])
    store.import_archive(archive)
    assert store.fsck() == []


def test_a_twin_that_changes_before_the_copy_falls_back_to_marking(twins, monkeypatch):
    store, _ = twins
    sh = store.stat("test/app:1", "bin/sh").object_id
    twin = store.stat("test/other:1", "opt/sh").object_id
    _tamper(store.object_path(sh))
    real = context(store).objects.restore

    def changed_meanwhile(oid, source, content_hash, *rest):
        _tamper(store.object_path(source), b"LATE")
        return real(oid, source, content_hash, *rest)

    monkeypatch.setattr(context(store).objects, "restore", changed_meanwhile)
    (p,) = store.fsck(repair=True)
    assert p.subject == sh and not p.fixed
    assert _marks(store) == {store.image("test/app:1").diff_ids[0]}
    assert sorted((p.kind, p.subject) for p in store.fsck()) == [
        ("object-corrupt", twin), ("object-missing", sh)]
    assert os.listdir(os.path.join(store.root, "tmp")) == []


@need_root("mounts a loop xfs, whose reflinks the repair uses")
@need_tool("mkfs.xfs")
def test_repair_on_a_filesystem_with_reflinks(tmp_path, capsysbinary):
    image, mnt = tmp_path / "xfs.img", tmp_path / "xfs"
    with open(image, "wb") as f:
        f.truncate(320 << 20)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
    mount_or_skip(mnt, "-o", "loop", str(image))
    try:
        (mnt / "twins.tar").write_bytes(A.docker_archive([([L1, L2], ["test/app:1"]),
                                                          ([L3, L4], ["test/other:1"])]))
        with Store(mnt / "store") as store:
            store.import_archive(mnt / "twins.tar")
            sh = store.object_path(store.stat("test/app:1", "bin/sh").object_id)
            for path in (sh, store.object_path(store.stat("test/other:1", "var/holey").object_id)):
                _tamper(path)
            assert all(p.fixed for p in store.fsck(repair=True))
            assert store.fsck() == []
            _assert_every_image_reads_right(store, capsysbinary)
            if shutil.which("filefrag"):    # the twins share their blocks
                assert "shared" in subprocess.run(["filefrag", "-v", sh], check=True,
                                                  capture_output=True, text=True).stdout
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


# ---- progress -------------------------------------------------------------------------------

def test_progress_reports_every_object_checked(store):
    sizes = [os.path.getsize(os.path.join(d, n))
             for d, _, names in os.walk(os.path.join(store.root, "objects")) for n in names]
    seen = []
    assert store.fsck(progress=seen.append) == []
    assert seen and seen[-1] == Progress(sum(sizes), sum(sizes), len(sizes), len(sizes))
    assert all((p.bytes_total, p.items_total) == (sum(sizes), len(sizes)) for p in seen)
    assert [p.items_done for p in seen] == sorted(p.items_done for p in seen)
    seen.clear()
    os.chmod(_object_of(store, "etc/os-release"), 0o600)
    store.fsck(repair=True, progress=seen.append)
    assert seen[-1].items_done == len(sizes)


def test_interrupt_stops_the_hashing_part_way(store, monkeypatch):
    """Ctrl-C while fsck waits for the hashing thread: the C call is cancelled between
    objects, rather than run to the end.  128 sparse 32 MiB objects take seconds to hash."""
    size = 32 << 20
    ids = [os.urandom(32) for _ in range(128)]
    for oid in ids:
        with open(os.path.join(store.root, "objects", _native.object_path(oid.hex())), "wb") as f:
            f.truncate(size)
    index = context(store).index
    with index.write() as txn:
        for oid in ids:
            index.put_row(txn, "objects", oid, index.pack_object(size, 1))
    outcome = []
    real = _native.check_objects

    def spy(*args, **kw):
        try:
            found = real(*args, **kw)
        except BaseException as exc:
            outcome.append(type(exc).__name__)
            raise
        outcome.append("finished")
        return found

    def interrupt(p):
        raise KeyboardInterrupt

    monkeypatch.setattr(_native, "check_objects", spy)
    with pytest.raises(KeyboardInterrupt):
        store.fsck(progress=interrupt)
    assert outcome == ["_Stopped"]


def test_progress_shows_on_a_terminal_only(store):
    status, shown = run_on_terminal(store.root, "fsck")
    assert status == 0 and "checking" in shown and "objects" in shown
    assert shown.endswith("\r\x1b[K")       # and is cleared when done
    assert run_on_terminal(store.root, "fsck", "--json")[1] == ""
    proc = subprocess.run([sys.executable, "-m", "layerstore", "--root", store.root, "fsck"],
                          capture_output=True, env=python_env())
    assert proc.returncode == 0 and proc.stderr == b""
