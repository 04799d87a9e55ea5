"""Crash safety, concurrency and disk-full proofs (issue 5, item 3).

Crash: import, rm and gc are SIGKILLed at 200+ random moments through the test hook
LAYERSTORE_TEST_KILL_AFTER=N (ls_test_step: the Nth object linked, index transaction begun or
committed, or file unlinked kills the process), which only a test build of the C core has
(LAYERSTORE_TEST_HOOKS=1 when it is built: see kill_hook).  After each kill fsck may report
garbage only (stray and tmp files), never an inconsistent index; the interrupted import runs
again; and after gc fsck is clean and every object file is one the index names.

Concurrency: four processes import overlapping images (and drop their tags in between, so gc
has work) while a fifth runs gc in a loop; then fsck is clean and every image checks out as
from a fresh store.

Disk full: a store on a small tmpfs; an import that does not fit fails with one clean
StoreIOError(ENOSPC) and leaves nothing visible, whatever the free space it met.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

import archives as A
from helpers import context, differences, need_root, python_env, snapshot
from layerstore import Store, _native, errors
from layerstore.formats.reference import normalize_tag


@pytest.fixture
def kill_hook():
    """The tests that kill through ls_test_step need a test build of the C core.  Elsewhere
    they skip; in CI (CI set), which builds one, its absence fails them instead, so that the
    crash proofs never go quietly unrun."""
    if _native.built_with_test_hooks():
        return
    why = ("the C core is not a test build: it has no crash-test hook (build it with "
           "LAYERSTORE_TEST_HOOKS=1, e.g. LAYERSTORE_TEST_HOOKS=1 pip install -e '.[test]')")
    if os.environ.get("CI", "") not in ("", "0", "false"):
        pytest.fail(f"CI must run the crash tests, but {why}", pytrace=False)
    pytest.skip(why)


# ---- archives: layers that share files, images that share layers ---------------------------

def _content(rng: random.Random, i: int) -> bytes:
    size = rng.choice([0, 1, 17, 300, 4096, 9000, 70000])
    return (b"%d:" % i + rng.randbytes(size))[:max(size, 1)] if size else b""


def _make_layer(rng, pool, name, n, big=False):
    items = [("d", name)]
    for j in range(n):
        items.append(("f", f"{name}/f{j:03d}", rng.choice(pool), rng.choice([0o644, 0o755])))
    items.append(("h", f"{name}/hard", f"{name}/f000"))
    items.append(("l", f"{name}/sym", "f001"))
    if big:     # bigger than the core keeps in memory: streamed to tmp/ first
        items.append(("f", f"{name}/big", rng.randbytes(3 << 20)))
    return A.layer(*items)


def make_images(seed: int, n_layers: int, files: int, combos) -> tuple[list, list[bytes]]:
    """[(layers, tags)] from combos (tuples of layer indices) and the layers: files of a layer
    are drawn from one pool, so objects are shared across layers and images."""
    rng = random.Random(seed)
    pool = [_content(rng, i) for i in range(files * 2)]
    layers = [_make_layer(rng, pool, f"l{k}", files, big=(k == 0)) for k in range(n_layers)]
    return [([layers[k] for k in c], [f"img{i}:latest"]) for i, c in enumerate(combos)], layers


def image_id(layers) -> str:
    return A.digest(A.config(layers))


def write_archives(dirpath, images) -> dict[str, str]:
    """{image id: archive path}, one docker-archive per image."""
    out = {}
    for i, img in enumerate(images):
        path = os.path.join(dirpath, f"img{i}.tar")
        with open(path, "wb") as f:
            f.write(A.docker_archive([img]))
        out[image_id(img[0])] = path
    return out


def references(tmp_path, archives: dict[str, str]) -> dict[str, dict]:
    """Each image checked out from a store of its own: what every later checkout must equal."""
    refs = {}
    with Store(tmp_path / "reference") as s:
        for iid, path in archives.items():
            s.import_archive(path)
            dest = tmp_path / f"ref-{iid[7:19]}"
            s.checkout(iid, dest)
            refs[iid] = snapshot(str(dest))[0]
            shutil.rmtree(dest)
    return refs


# ---- checks ---------------------------------------------------------------------------------

def object_files(root) -> set[str]:
    out = set()
    objects = os.path.join(root, "objects")
    for fan in os.listdir(objects):
        for name in os.listdir(os.path.join(objects, fan)):
            out.add(fan + name)
    return out


def assert_only_garbage(store, context=""):
    """After a crash, before gc: fsck may find files nothing references, nothing else."""
    problems = store.fsck()
    bad = [p for p in problems if not p.garbage]
    assert not bad, f"{context}: fsck found more than garbage: {bad[:5]}"


def assert_whole(store, expected: set[str], refs: dict[str, dict], tmp_path,
                 check_out: list[str] = ()):
    """After gc: fsck clean, no file the index does not name, exactly the expected images,
    and the given ones identical to their reference checkouts."""
    problems = store.fsck()
    assert problems == [], problems[:5]
    index = context(store).index
    with index.read() as txn:
        rows = {k.hex() for k, _ in index.rows(txn, "objects")}
    assert object_files(store.root) == rows, "object files and the index's objects differ"
    assert os.listdir(os.path.join(store.root, "tmp")) == []
    assert not os.path.isdir(os.path.join(store.root, "pending")) or \
        os.listdir(os.path.join(store.root, "pending")) == []
    assert {i.id for i in store.images()} == expected
    wanted = set()
    for i in store.images():
        wanted.update(i.diff_ids)
    assert {l.diff_id for l in store.layers()} == wanted, "layers no image names survived gc"
    for iid in check_out:
        dest = tmp_path / "co"
        store.checkout(iid, dest)
        diffs = differences(refs[iid], snapshot(str(dest))[0])
        shutil.rmtree(dest)
        assert not diffs, diffs


# ---- the crash test -------------------------------------------------------------------------

# Forks one child per operation, so a kill costs a fork instead of a Python start.  It never
# opens a store itself (LMDB environments must not cross fork) and never calls the hook, whose
# C side reads the variable at its first step: each child sets it before its first.
_ZYGOTE = textwrap.dedent("""
    import json, os, sys, time
    from layerstore import Store, errors
    from layerstore.store.index import Index
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            os.environ["LAYERSTORE_TEST_KILL_AFTER"] = str(job["kill_after"])
            code = 0
            try:
                with Store(job["root"]) as s:
                    if job["op"] == "import":
                        s.import_archive(job["arg"])
                    elif job["op"] == "rm":
                        s.remove(job["arg"], force=True)
                    elif job["op"] == "checkout":     # hardlinks: the store's own inodes
                        s.checkout(*job["arg"], link=True)
                    elif job["op"] == "read":     # dies inside a read transaction
                        index = Index(os.path.join(job["root"], "index"))
                        txn = index.read()
                        index.images(txn)
                        os.kill(os.getpid(), 9)
                    else:
                        s.gc()
            except errors.ImageNotFound:
                code = 3
            except BaseException as exc:
                sys.stderr.write(f"{job}: {exc!r}\\n")
                code = 1
            os._exit(code)
        if job.get("kill_at") is not None:
            time.sleep(job["kill_at"])
            os.kill(pid, 9)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), flush=True)
""")


class Zygote:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", _ZYGOTE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=python_env())

    def run(self, op: str, root, arg, kill_after: int = 0, kill_at: float | None = None) -> int:
        """The child's exit status: -9 when the hook (or the zygote, kill_at seconds after the
        fork) killed it."""
        self.proc.stdin.write(json.dumps({"op": op, "root": str(root), "arg": arg,
                                          "kill_after": kill_after, "kill_at": kill_at}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the zygote died"
        return int(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture
def fast_root(tmp_path):
    """A store root on tmpfs when there is one: each import's syncfs is then free."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    d = tempfile.mkdtemp(prefix="layerstore-crash-", dir=base or str(tmp_path))
    yield os.path.join(d, "store")
    shutil.rmtree(d, ignore_errors=True)


def test_sigkill_at_random_moments(tmp_path, fast_root, kill_hook):
    images, layers = make_images(5, n_layers=5, files=40,
                                 combos=[(0, 1), (0, 2), (3,), (0, 1, 4), (2, 3, 4)])
    archives = write_archives(tmp_path, images)
    refs = references(tmp_path, archives)
    ids = list(archives)
    layer_objects = {}
    with Store(tmp_path / "reference") as ref:
        for img in ref.images():
            for d in img.diff_ids:
                layer_objects[d] = {e.object_id for e in ref.layer_entries(d) if e.object_id}
    diff_ids = {i.id: i.diff_ids for i in Store(tmp_path / "reference").images()}

    def import_steps(store, iid):
        """Objects the import will link: those of its unknown layers not on disk yet."""
        known = {l.diff_id for l in store.layers()}
        on_disk = object_files(store.root)
        new = set()
        for d in diff_ids[iid]:
            if d not in known:
                new |= layer_objects[d] - on_disk
        return len(new)

    rng = random.Random(int(os.environ.get("CRASH_SEED", 20261101)))
    scratch = Path(os.path.dirname(fast_root))     # checkouts hardlink: same filesystem
    zygote = Zygote()
    kills = {"import": 0, "rm": 0, "gc": 0}
    survived = 0
    expected: set[str] = set()
    deadline = time.monotonic() + 120     # ~15 s here; ASan builds are slower
    try:
        with Store(fast_root) as store:
            while sum(kills.values()) < int(os.environ.get("CRASH_KILLS", 210)):
                assert time.monotonic() < deadline, f"too slow: {kills}"
                op = rng.choices(["import", "rm", "gc"], weights=[5, 1, 3])[0]
                if op == "import":
                    iid = rng.choice(ids)
                    # The marker, each object linked, and 3 steps around the commit.
                    n = rng.randint(1, import_steps(store, iid) + 4)
                    status = zygote.run("import", fast_root, archives[iid], n)
                    assert status in (0, -9), status
                    assert_only_garbage(store, f"import killed at step {n}")
                    store.import_archive(archives[iid])         # the re-run succeeds
                    expected.add(iid)
                elif op == "rm":
                    if not expected:
                        continue
                    iid = rng.choice(sorted(expected))
                    n = rng.randint(1, 2)       # inside the transaction, or after its commit
                    status = zygote.run("rm", fast_root, iid, n)
                    assert status in (0, -9), status
                    assert_only_garbage(store, f"rm killed at step {n}")
                    if iid in {i.id for i in store.images()}:
                        store.remove(iid, force=True)
                    expected.discard(iid)
                else:
                    if expected and rng.random() < 0.7:
                        gone = rng.choice(sorted(expected))
                        store.remove(gone, force=True)
                        expected.discard(gone)
                    n = rng.randint(1, len(object_files(fast_root)) // 2 + 5)
                    status = zygote.run("gc", fast_root, None, n)
                    assert status in (0, -9), status
                    assert_only_garbage(store, f"gc killed at step {n}")
                if status == -9:
                    kills[op] += 1
                else:
                    survived += 1
                # Garbage may pile up over several crashes before a gc meets it.
                if rng.random() < 0.5:
                    store.gc()
                    some = rng.sample(sorted(expected), min(1, len(expected)))
                    assert_whole(store, expected, refs, scratch, some)
            for iid in ids:
                store.import_archive(archives[iid])
            store.gc()
            assert_whole(store, set(ids), refs, scratch, ids)
    finally:
        zygote.close()
    assert min(kills.values()) >= 20, kills
    print(f"kills {kills}, ran to the end {survived}")


def test_sigkill_importing_a_corpus_image(tmp_path, corpus_dir, kill_hook):
    """A few kills on a real image on the real filesystem (syncfs and all)."""
    archive = corpus_dir / "base.docker.tar.zst"
    if not archive.exists():
        pytest.skip("no base image in the corpus")
    root = tmp_path / "store"
    rng = random.Random(7)
    zygote = Zygote()
    try:
        kills = 0
        for n in sorted(rng.sample(range(1, 1500), 4)):
            status = zygote.run("import", root, str(archive), n)
            kills += status == -9
            with Store(root) as store:
                assert_only_garbage(store, f"import killed at step {n}")
        assert kills >= 3
        assert zygote.run("import", root, str(archive), 0) == 0
        with Store(root) as store:
            (image,) = store.images()
            store.gc()
            assert_whole(store, {image.id}, {}, tmp_path)
            with context(store).index.read() as txn:
                assert context(store).index.object_count(txn) > 0
    finally:
        zygote.close()


def test_sigkill_during_checkouts_and_reads(tmp_path, fast_root):
    """Checkout only reads the store: a kill at any time leaves it whole (no gc needed), and a
    reader killed inside its snapshot does not hold its LMDB reader slot for ever."""
    images, _ = make_images(9, n_layers=2, files=150, combos=[(0, 1)])
    archives = write_archives(tmp_path, images)
    (iid,) = archives
    scratch = Path(os.path.dirname(fast_root))
    rng = random.Random(3)
    zygote = Zygote()
    try:
        with Store(fast_root) as store:
            store.import_archive(archives[iid])
            took = []
            for k in range(3):
                t0 = time.monotonic()
                assert zygote.run("checkout", fast_root, [iid, str(scratch / f"full{k}")]) == 0
                took.append(time.monotonic() - t0)
            kills = 0
            for k in range(20):
                dest = scratch / f"co{k}"
                kills += zygote.run("checkout", fast_root, [iid, str(dest)],
                                    kill_at=rng.uniform(0, 0.8 * min(took))) == -9
                assert store.fsck() == []
            assert kills >= 1, "no checkout was killed: timing"
            for _ in range(10):
                assert zygote.run("read", fast_root, None) == -9
            # Each child's open cleared the slots of those killed before it.
            assert zygote.run("gc", fast_root, None) == 0
            readers = context(store).index.env.readers().splitlines()[1:]
            pids = {int(line.split()[0]) for line in readers
                    if line.split() and line.split()[0].isdigit()}
            dead = [p for p in pids if not os.path.exists(f"/proc/{p}")]
            assert dead == [], f"stale LMDB reader slots of killed processes: {dead}"
            store.gc()
            assert_whole(store, {iid}, {}, scratch)
    finally:
        zygote.close()


# ---- concurrency ----------------------------------------------------------------------------

_WORKER = textwrap.dedent("""
    import json, os, random, sys, time
    from layerstore import Store, errors
    root, me, archives, barrier = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
    rng = random.Random(me)
    with Store(root) as s:
        # Churn: images come and go, so gc frees layers and objects that other imports are
        # about to want again.
        freed = os.path.join(barrier, "..", "gc-freed")
        for r in range(12):
            if r >= 3 and os.path.exists(freed):
                break
            order = list(archives)
            rng.shuffle(order)
            for name in order:
                # Back to back, no pause: the store lock's gate must still let gc in.
                (img,) = s.import_archive(archives[name], tags=[f"w{me}/{name}:latest"])
                if rng.random() < 0.6:
                    try:
                        s.remove(img.id, force=True)
                    except errors.ImageNotFound:
                        pass
        # Everyone is past removing before anyone makes the final state.
        open(os.path.join(barrier, str(me)), "w").close()
        while len(os.listdir(barrier)) < 4:
            time.sleep(0.01)
        order = list(archives)
        rng.shuffle(order)
        for name in order:
            s.import_archive(archives[name], tags=[f"w{me}/{name}:latest"])
""")

_GC_LOOP = textwrap.dedent("""
    import os, sys
    from layerstore import Store
    root, stop = sys.argv[1], sys.argv[2]
    runs = objects = layers = 0
    with Store(root) as s:
        while not os.path.exists(stop):
            r = s.gc()
            runs += 1
            objects += r.objects
            layers += r.layers
            if r.layers:
                open(os.path.join(os.path.dirname(stop), "gc-freed"), "w").close()
    print(runs, objects, layers)
""")


def test_parallel_imports_with_gc_running(tmp_path):
    images, _ = make_images(11, n_layers=6, files=60,
                            combos=[(0, 1), (0, 2), (1, 2, 3), (4,), (0, 4, 5), (3, 5)])
    images = [(layers, []) for layers, _ in images]     # only the workers' tags keep them
    archives = write_archives(tmp_path, images)
    refs = references(tmp_path, archives)
    names = {f"img{i}": path for i, path in enumerate(archives.values())}
    root = tmp_path / "store"
    Store(root).close()
    stop = tmp_path / "stop"
    env = python_env()
    gc_proc = subprocess.Popen([sys.executable, "-c", _GC_LOOP, str(root), str(stop)],
                               stdout=subprocess.PIPE, text=True, env=env)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    workers = [subprocess.Popen([sys.executable, "-c", _WORKER, str(root), str(i),
                                 json.dumps(names), str(barrier)],
                                env=env, stderr=subprocess.PIPE, text=True)
               for i in range(4)]
    try:
        for w in workers:
            _, err = w.communicate(timeout=120)
            assert w.returncode == 0, err
    finally:
        stop.touch()
        out, _ = gc_proc.communicate(timeout=60)
    assert gc_proc.returncode == 0
    runs, freed_objects, freed_layers = map(int, out.split())
    assert runs >= 5 and freed_layers > 0, "gc had nothing to do alongside the imports"
    with Store(root) as store:
        for img in store.images():
            (name,) = [n for n, p in names.items() if archives.get(img.id) == p]
            want = {normalize_tag(f"w{i}/{name}:latest") for i in range(4)}
            assert want <= set(img.tags), img.tags
        store.gc()
        assert_whole(store, set(archives), refs, tmp_path, list(archives))
    print(f"gc ran {runs} times alongside, freeing {freed_layers} layers, "
          f"{freed_objects} objects")


# ---- disk full ------------------------------------------------------------------------------

@pytest.fixture
def small_fs(tmp_path):
    """A 12 MiB tmpfs."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m,mode=0700", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _free(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _fill(path, leave: int) -> None:
    """Writes a filler file so that about `leave` bytes stay free."""
    with open(path, "wb") as f:
        chunk = b"\xa5" * (1 << 16)
        while _free(os.path.dirname(path)) > leave + len(chunk):
            f.write(chunk)
            f.flush()
        rest = _free(os.path.dirname(path)) - leave
        if rest > 0:
            f.write(b"\xa5" * rest)


def _index_state(store) -> tuple:
    return (sorted((i.id, tuple(sorted(i.tags))) for i in store.images()),
            sorted(l.diff_id for l in store.layers()))


@need_root("mounts a small tmpfs")
def test_disk_full_import_is_a_clean_error(tmp_path, small_fs):
    small = ([A.layer(("f", "etc/hello", b"hello\n"))], ["small:1"])
    big, _ = make_images(4, n_layers=2, files=30, combos=[(0, 1)])     # ~3.5 MiB of objects
    archives = write_archives(tmp_path, [small, big[0]])
    refs = references(tmp_path, archives)
    small_id, big_id = list(archives)
    root = small_fs / "store"
    filler = str(small_fs / "filler")
    with Store(root) as store:
        store.import_archive(archives[small_id])
        before = _index_state(store)
        _fill(filler, 1 << 20)
        with pytest.raises(errors.StoreIOError) as info:
            store.import_archive(archives[big_id])
        assert info.value.errno == errno.ENOSPC, info.value
        assert "\n" not in str(info.value)
        assert _index_state(store) == before, "the failed import left something visible"
        assert_only_garbage(store, "after ENOSPC")
        store.gc()
        assert_whole(store, {small_id}, refs, tmp_path, [small_id])
    # The CLI says it in one line, without a traceback.
    r = subprocess.run([sys.executable, "-m", "layerstore", "--root", str(root), "import",
                        archives[big_id]], capture_output=True, text=True, env=python_env())
    assert r.returncode == 1
    assert r.stderr.startswith("layerstore: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "No space left" in r.stderr
    os.unlink(filler)
    with Store(root) as store:
        store.gc()
        store.import_archive(archives[big_id])
        store.gc()
        assert_whole(store, {small_id, big_id}, refs, tmp_path, [small_id, big_id])


@need_root("mounts a small tmpfs")
def test_disk_full_at_any_fill_level(tmp_path, small_fs):
    """Whatever the space left - none for objects, objects but not the index, just enough -
    an import either succeeds whole or fails cleanly with ENOSPC."""
    images, _ = make_images(6, n_layers=1, files=150, combos=[(0,)])
    archives = write_archives(tmp_path, images)
    refs = references(tmp_path, archives)
    (iid,) = archives
    filler = str(small_fs / "filler")
    outcomes = {"ok": 0, "enospc": 0}
    free = _free(small_fs)
    with Store(small_fs / "measure") as store:
        store.import_archive(archives[iid])
    need = free - _free(small_fs)
    shutil.rmtree(small_fs / "measure")
    # Coarse, then fine around what the import takes, where the objects fit and the index
    # (a fresh store each time, so LMDB's file must grow) may not.
    leaves = list(range(0, need + (1 << 20), 256 << 10))
    leaves += list(range(max(0, need - (512 << 10)), need + (128 << 10), 16 << 10))
    for k, leave in enumerate(leaves):
        root = small_fs / f"store{k}"
        with Store(root) as store:
            _fill(filler, leave)
            try:
                store.import_archive(archives[iid])
                outcomes["ok"] += 1
                expected = {iid}
            except errors.StoreIOError as exc:
                assert exc.errno == errno.ENOSPC, exc
                assert "\n" not in str(exc)
                outcomes["enospc"] += 1
                outcomes.setdefault("where", set()).add(str(exc).split(":")[-2][-40:])
                expected = set()
                assert _index_state(store) == ([], []), f"half-visible at {leave}"
            assert_only_garbage(store, f"{leave} bytes left")
            os.unlink(filler)
            store.gc()
            assert_whole(store, expected, refs, tmp_path, list(expected))
            if not expected:        # and with the space back, it imports
                store.import_archive(archives[iid])
        shutil.rmtree(root)
    assert outcomes["ok"] and outcomes["enospc"], outcomes
    print(outcomes)
