"""The object store under layer ingest: dedup, identity, on-disk state, bounded memory."""

import errno
import hashlib
import io
import os
import random
import stat
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import textwrap

import blake3
import pytest

from helpers import feed, in_child_as, need_root, python_env
from layerstore import _native, errors


def make_tar(files, fmt=tarfile.PAX_FORMAT) -> bytes:
    """files: list of (name, content, mode, uid, gid, xattrs)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, content, mode, uid, gid, xattrs in files:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.uid, ti.gid = len(content), mode, uid, gid
            ti.pax_headers = {"SCHILY.xattr." + k: v for k, v in xattrs.items()}
            tf.addfile(ti, io.BytesIO(content))
    return buf.getvalue()


def objects_on_disk(root):
    """{relative path: (inode, size, mode, mtime_ns)} of every file under objects/."""
    out = {}
    for dirpath, _, names in os.walk(os.path.join(root, "objects")):
        for n in names:
            st = os.lstat(os.path.join(dirpath, n))
            out[os.path.relpath(os.path.join(dirpath, n), root)] = (
                st.st_ino, st.st_size, st.st_mode, st.st_mtime_ns)
    return out


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "store"
    root.mkdir(mode=0o700)
    s = _native.ObjectStore(root)
    yield s
    s.close()


def test_second_ingest_writes_nothing(store):
    data = make_tar([(f"f{i}", os.urandom(100 + i * 37), 0o644, 0, 0, {}) for i in range(50)])
    first = feed(data, store=store)
    assert first.stats.new_objects == 50
    assert first.stats.new_bytes == first.stats.file_bytes
    before = objects_on_disk(store.root)
    assert len(before) == 50
    second = feed(data, [4096], store=store)
    assert second.stats.new_objects == 0 and second.stats.new_bytes == 0
    assert objects_on_disk(store.root) == before
    assert not any(r.flags & _native.NEW_OBJECT for r in _native.decode_records(second.records))
    assert os.listdir(os.path.join(store.root, "tmp")) == []


def test_identity_is_content_and_shared_metadata(store):
    content = b"same bytes" * 100
    data = make_tar([
        ("a", content, 0o644, 0, 0, {}),
        ("b", content, 0o644, 0, 0, {}),            # same object as a
        ("c", content, 0o755, 0, 0, {}),            # other mode: another object
        ("d", content, 0o644, 1000, 0, {}),         # other owner
        ("e", content, 0o644, 0, 0, {"user.k": "v"}),   # other xattrs
        ("f", b"other bytes", 0o644, 0, 0, {}),
    ])
    result = feed(data, store=store)
    ids = {e.path: e.object_id for e in result.entries()}
    assert ids["a"] == ids["b"]
    assert len({ids[k] for k in "acdef"}) == 5
    assert result.stats.new_objects == 5
    assert len(objects_on_disk(store.root)) == 5
    chash = blake3.blake3(content).digest()
    assert ids["c"] == _native.object_id(chash, 0o755, 0, 0)
    assert ids["e"] == _native.object_id(chash, 0o644, 0, 0, (("user.k", b"v"),))


def test_object_files_hold_content_and_metadata(store):
    content = os.urandom(5000)
    data = make_tar([("bin/tool", content, 0o4755, 123, 456, {"user.note": "x"})])
    (rec,) = _native.decode_records(feed(data, store=store).records)
    e = rec.entry
    path = os.path.join(store.root, "objects", _native.object_path(e.object_id))
    st = os.lstat(path)
    with open(path, "rb") as f:
        assert f.read() == content
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (123, 456)
        assert stat.S_IMODE(st.st_mode) == 0o4755
    else:
        assert stat.S_IMODE(st.st_mode) == 0o4755 | 0o400
    if rec.flags & _native.XATTRS_SKIPPED:      # a filesystem without user xattrs
        assert "user.note" not in os.listxattr(path)
    else:
        assert os.getxattr(path, "user.note") == b"x"


def test_empty_files_are_never_objects(store):
    data = make_tar([("empty", b"", 0o644, 0, 0, {}), (".wh.gone", b"", 0, 0, 0, {})])
    result = feed(data, store=store)
    assert result.stats.new_objects == 0
    assert objects_on_disk(store.root) == {}
    assert all(e.object_id for e in result.entries())


def test_large_files_stream_through_tmp_and_dedup(store):
    big = os.urandom(1 << 20) * 12            # above the in-memory limit: spilled
    data = make_tar([("big", big, 0o644, 0, 0, {}), ("small", b"s", 0o644, 0, 0, {})])
    first = feed(data, [300000], store=store)
    assert first.stats.new_objects == 2
    (obj,) = [p for p, v in objects_on_disk(store.root).items() if v[1] == len(big)]
    with open(os.path.join(store.root, obj), "rb") as f:
        assert blake3.blake3(f.read()).hexdigest() == first.entries()[0].content_hash
    second = feed(data, [300000], store=store)
    assert second.stats.new_objects == 0
    assert os.listdir(os.path.join(store.root, "tmp")) == []


def _holey(size: int, seed: int) -> bytes:
    """Content with zero runs of many lengths and alignments, and zeros at the end."""
    rnd = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        n = rnd.choice([1, 7, 511, 4095, 4096, 4097, 8192, 12288 + 3, 65536])
        out += bytes(n) if rnd.random() < 0.6 else rnd.randbytes(n)
    return bytes(out[:size - 20000]) + bytes(20000)


@pytest.mark.parametrize("size", [3 << 20, 10 << 20], ids=["held", "spilled"])
def test_zero_blocks_become_holes(store, size):
    """Aligned zero blocks are not written, whatever the pieces the stream arrives in: the
    object reads back exactly, takes fewer blocks than its size, and ends in a hole."""
    content = _holey(size, size)
    data = make_tar([("holey", content, 0o644, 0, 0, {}), ("zeros", bytes(size), 0o644, 0, 0, {})])
    result = feed(data, [1, 4096, 511, 1 << 20, 9999], store=store)
    for e, want in zip(result.entries(), [content, bytes(size)]):
        path = os.path.join(store.root, "objects", _native.object_path(e.object_id))
        with open(path, "rb") as f:
            assert f.read() == want
        st = os.stat(path)
        assert st.st_size == len(want)
        if e.path == "zeros":
            assert st.st_blocks == 0
        else:
            assert 0 < st.st_blocks * 512 < len(want) - (1 << 20)
            with open(path, "rb") as f, pytest.raises(OSError) as no_data:
                os.lseek(f.fileno(), len(want) - 12288, os.SEEK_DATA)
            assert no_data.value.errno == errno.ENXIO


def test_failed_ingest_leaves_no_temporary_files(store):
    big = os.urandom(9 << 20)
    data = make_tar([("a", b"x" * 10, 0o644, 0, 0, {}), ("big", big, 0o644, 0, 0, {})])
    with pytest.raises(errors.TruncatedArchive):
        feed(data[: len(data) // 2], [1 << 20], store=store)
    assert os.listdir(os.path.join(store.root, "tmp")) == []


def test_damaged_object_is_replaced(store):
    data = make_tar([("f", b"good content", 0o644, 0, 0, {})])
    (e,) = feed(data, store=store).entries()
    path = os.path.join(store.root, "objects", _native.object_path(e.object_id))
    os.chmod(path, 0o644)
    with open(path, "ab") as f:
        f.write(b" and some damage")
    result = feed(data, store=store)
    assert result.stats.new_objects == 1
    with open(path, "rb") as f:
        assert f.read() == b"good content"


def _recipe(data: bytes, object_of) -> bytes:
    """data as a recipe (ls_ingest_feed_recipe): each file's content as object_of(content),
    a stored object's id, and every other byte inline."""
    out, at = [], 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        for m in tf.getmembers():
            if m.isreg() and m.size:
                out += [struct.pack("<cQ", b"D", m.offset_data - at), data[at:m.offset_data],
                        struct.pack("<cQ32s", b"O", m.size,
                                    object_of(data[m.offset_data:m.offset_data + m.size]))]
                at = m.offset_data + m.size
    return b"".join(out + [struct.pack("<cQ", b"D", len(data) - at), data[at:]])


def test_recipe_of_stored_objects_ingests_as_its_stream(store, tmp_path):
    """A partial pull's rebuilt layer names the files the store holds by object id: the
    ingest reads them itself.  The layer comes out as if fed whole (records, raw bytes,
    diffID), also where its files' metadata differ from the objects' (new objects, copied
    from the old ones) and for a file past the in-memory limit.  Fed in small pieces the
    diffID is the same: they share the hash thread's slots."""
    files = [(f"f{i}", os.urandom(random.randrange(1, 70_000)), 0o644, 0, 0, {})
             for i in range(60)] + [("big", os.urandom(9 << 20), 0o644, 0, 0, {})]
    held = {}
    for e in feed(make_tar(files), store=store).entries():
        if e.object_id:
            path = os.path.join(store.root, "objects", _native.object_path(e.object_id))
            with open(path, "rb") as f:
                held[f.read()] = bytes.fromhex(e.object_id)
    again = make_tar([(n, c, 0o755, 0, 0, {"user.k": "v"}) for n, c, *_ in files])
    ingest = _native.LayerIngest(store)
    try:
        ingest.feed_recipe(_recipe(again, held.__getitem__))
        got = ingest.finish()
    finally:
        ingest.close()
    (tmp_path / "other").mkdir(mode=0o700)
    other = _native.ObjectStore(tmp_path / "other")
    try:
        want = feed(again, store=other)
    finally:
        other.close()
    assert got.stats.diff_id == want.stats.diff_id == "sha256:" + hashlib.sha256(again).hexdigest()
    assert got.records == want.records and got.raw == want.raw
    assert got.stats.new_objects == len(files)
    assert feed(again, [1000], store=None).stats.diff_id == want.stats.diff_id


def test_recipe_errors(store):
    """A recipe naming an object that is not there, or one whose size is not what the recipe
    says (damage), or a malformed recipe, fails the ingest with a clear error."""
    data = make_tar([("f", b"some content", 0o644, 0, 0, {})])
    (e,) = feed(data, store=store).entries()
    oid = bytes.fromhex(e.object_id)
    cases = [(_recipe(data, lambda c: bytes(32)), errors.StoreIOError, "cannot open object"),
             (_recipe(data, lambda c: oid).replace(struct.pack("<Q", 12), struct.pack("<Q", 13)),
              errors.CorruptArchive, "is not the 13 bytes"),
             (b"D\x05", errors.LayerstoreError, "malformed recipe at byte 0"),
             (struct.pack("<cQ", b"D", 99) + b"short", errors.LayerstoreError, "malformed")]
    for recipe, error, message in cases:
        ingest = _native.LayerIngest(store)
        try:
            with pytest.raises(error, match=message):
                ingest.feed_recipe(recipe)
        finally:
            ingest.close()
    with pytest.raises(errors.LayerstoreError, match="needs a store"):
        _native.LayerIngest(None).feed_recipe(_recipe(data, lambda c: oid))


def test_concurrent_ingests_share_objects(store):
    import threading
    data = make_tar([(f"f{i}", bytes([i]) * 3000, 0o644, 0, 0, {}) for i in range(200)])
    results = []
    threads = [threading.Thread(target=lambda: results.append(feed(data, [7000], store=store)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.stats.new_objects for r in results) == 200
    assert len(objects_on_disk(store.root)) == 200


@need_root("drops to an unprivileged user to take the non-root object path")
def test_unprivileged_ingest():
    top = tempfile.mkdtemp(prefix="layerstore-user-")     # pytest's tmp_path is root-only
    os.chmod(top, 0o755)
    root = os.path.join(top, "store")
    os.mkdir(root)
    os.chown(root, 65534, 65534)
    data = make_tar([("f", b"abc", 0o600, 0, 0, {}), ("g", b"defg", 0o000, 7, 7, {})])

    def ingest():
        s = _native.ObjectStore(root)
        assert not s.owners
        r = feed(data, store=s)
        assert r.stats.new_objects == 2, r.stats
        modes = []
        for e in r.entries():
            st = os.stat(os.path.join(root, "objects", _native.object_path(e.object_id)))
            assert st.st_uid == 65534, st
            modes.append(oct(st.st_mode & 0o7777))
        return " ".join(modes)

    try:
        assert in_child_as(65534, ingest) == "0o600 0o400"
    finally:
        shutil.rmtree(top)


@pytest.mark.no_sanitizer
def test_memory_stays_bounded_for_a_huge_file(tmp_path):
    """A 512 MiB single-file layer, streamed: peak RSS stays far below the content size."""
    root = tmp_path / "s"
    root.mkdir()
    code = textwrap.dedent(f"""
        import tarfile
        from layerstore import _native
        size = 512 << 20
        ti = tarfile.TarInfo("huge"); ti.size = size
        header = ti.tobuf(tarfile.PAX_FORMAT)
        s = _native.ObjectStore({str(root)!r})
        ingest = _native.LayerIngest(s)
        ingest.feed(header)
        block = bytes(range(256)) * 4096
        for _ in range(size // len(block)):
            ingest.feed(block)
        ingest.feed(bytes(1024))
        r = ingest.finish()
        assert r.stats.new_objects == 1
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec.
        print(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env=python_env())
    assert out.returncode == 0, out.stderr
    peak_kib = int(out.stdout)
    assert peak_kib < 64 * 1024, f"peak RSS {peak_kib} KiB"
