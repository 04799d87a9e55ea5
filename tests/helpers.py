"""The helpers the tests share (builders of archives and tar headers live in archives.py and
tarcases.py): the environment a test needs, the CLI run as users and scripts run it, the
store's internals as the tests look at them, tar listings and ingests to compare with, and
directory trees compared as a container sees them."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import posixpath
import shutil
import stat
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import blake3
import pytest

import archives as A
from layerstore import EntryType, _native, cli

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("LAYERSTORE_CORPUS", REPO.parent / "shared" / "corpus"))


# ---- the environment ------------------------------------------------------------------------

def oracle_env() -> dict:
    """The environment for GNU tar and Go: without the sanitizer runtime CI's ASan pass
    preloads into every process, which would judge the oracles' own bugs (GNU tar 1.34 reads
    past a buffer on xattrs in a global header) instead of ours."""
    return {k: v for k, v in os.environ.items()
            if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")}


def go_tool(name: str, tmp_path_factory) -> Path:
    """tests/tools/NAME built into a temporary directory (skips without go on PATH)."""
    go = shutil.which("go")
    if go is None:
        pytest.skip(f"needs go on PATH (tests/tools/{name} is a Go program)")
    out = tmp_path_factory.mktemp(name) / name
    env = oracle_env()
    if not any(env.get(k) for k in ("GOCACHE", "HOME", "XDG_CACHE_HOME")):
        env["GOCACHE"] = str(tmp_path_factory.mktemp("gocache"))
    subprocess.run([go, "build", "-o", str(out), "main.go"], check=True, env=env,
                   cwd=REPO / "tests" / "tools" / name)
    return out


def python_env() -> dict:
    """An environment in which a child Python imports the same layerstore as this process."""
    import layerstore
    here = os.path.dirname(os.path.dirname(os.path.abspath(layerstore.__file__)))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}


def need_root(reason: str):
    return pytest.mark.skipif(os.geteuid() != 0, reason=f"needs root: {reason}")


def need_tool(name: str):
    return pytest.mark.skipif(shutil.which(name) is None, reason=f"needs {name} on PATH")


def overlay_available() -> bool:
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/filesystems") as f:
            if "overlay" in f.read().split():
                return True
    except OSError:
        return False
    subprocess.run(["modprobe", "overlay"], check=False, capture_output=True)
    with open("/proc/filesystems") as f:
        return "overlay" in f.read().split()


need_overlay = pytest.mark.skipif(not overlay_available(),
                                  reason="needs root and the overlay filesystem")


def mount_or_skip(mnt, *args) -> None:
    """Mounts on mnt (made here), or skips the test where this machine lets nobody mount."""
    mnt.mkdir()
    proc = subprocess.run(["mount", *args, str(mnt)], capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount here: {proc.stderr.strip()}")


def in_child_as(uid: int, fn) -> str:
    """Runs fn in a forked child with uid and gid set to uid; returns what it returned, or the
    child's error text."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:    # pragma: no cover - the child
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            msg = str(fn())
        except BaseException as exc:    # noqa: BLE001 - reported to the parent
            msg = f"{type(exc).__name__}: {exc}"
        os.write(w, msg.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out


# ---- the CLI --------------------------------------------------------------------------------

def run(root, *args, stdin=None, check=True):
    proc = subprocess.run([sys.executable, "-m", "layerstore", "--root", str(root), *args],
                          input=stdin, capture_output=True, env=python_env())
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr.decode()}")
    return proc


def one_line_error(proc, status=1):
    err = proc.stderr.decode()
    assert proc.returncode == status, err
    assert err.startswith("layerstore: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def run_on_terminal(root, *args) -> tuple[int, str]:
    """Runs the CLI with stderr on a pseudo-terminal (stdout a pipe); returns its exit status
    and what reached the terminal."""
    import pty
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "layerstore", "--root", str(root), *args],
                            stdout=subprocess.PIPE, stderr=slave, env=python_env())
    os.close(slave)
    proc.stdout.read()
    out = b""
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:     # EIO: the child is gone and everything was read
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return proc.wait(), out.decode(errors="replace")


def invoke(*args) -> tuple[int, str, str]:
    """layerstore ARGS on the store of $LAYERSTORE_ROOT: (exit status, stdout, stderr)."""
    out, err = io.TextIOWrapper(io.BytesIO()), io.StringIO()     # cat writes out.buffer
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(["--root", os.environ["LAYERSTORE_ROOT"], *args])
    out.flush()
    return rc, out.buffer.getvalue().decode(), err.getvalue()


def invoke_error(args, status: int = 1) -> str:
    """stderr of a command that must fail with status and one `layerstore: error:` line."""
    rc, out, err = invoke(*args)
    assert rc == status, (rc, out, err)
    assert err.startswith("layerstore: error: ") and err.count("\n") == 1, err
    return err


def oci_tar(layers, tags, config: bytes) -> io.BytesIO:
    """An OCI layout tar of one image whose index entry gives no platform (only its config
    does)."""
    blobs, desc = A.oci_blobs(layers, tags, config_bytes=config)
    del desc["platform"]
    return io.BytesIO(A.tar_of(A.oci_layout_files([desc], blobs)))


# ---- the store as the tests look inside it --------------------------------------------------

def context(store):
    """A Store's internals (store/context.py: index, objects): the tests' one way in."""
    return store._ctx


def lock(store):
    """A Store's lock (store/lock.py), as the facade takes it."""
    return store._lock


_DUMP = textwrap.dedent("""
    import json, os, sys, lmdb
    env = lmdb.open(os.path.join(sys.argv[1], "index"), max_dbs=16, readonly=True, lock=False)
    out = {}
    with env.begin() as txn:
        for name in ("images", "tags", "layers", "objects", "blobs"):
            db = env.open_db(name.encode(), txn=txn, create=False)
            rows = {}
            for k, v in txn.cursor(db=db):
                if name == "images":
                    v = sorted(json.loads(v)["tags"])
                elif name == "layers":
                    v = json.loads(v)["refs"]
                elif name == "objects":
                    v = int.from_bytes(v[8:12], "little")
                else:
                    v = v.hex()
                rows[k.hex()] = v
            out[name] = rows
    print(json.dumps(out))
""")


def state(root) -> dict:
    """The index read straight from LMDB (not through the API, and in another process, since
    LMDB allows one environment per file per process), plus the object files."""
    out = json.loads(subprocess.run([sys.executable, "-c", _DUMP, str(root)], check=True,
                                    capture_output=True, env=python_env()).stdout)
    files = []
    for dirpath, _, names in os.walk(os.path.join(root, "objects")):
        files += names
    out["object_files"] = len(files)
    return out


def object_files(root) -> set[str]:
    out = set()
    for dirpath, _, names in os.walk(os.path.join(root, "objects")):
        out.update(os.path.relpath(os.path.join(dirpath, n), root) for n in names)
    return out


# ---- tar: listings, ingests and archives to compare with --------------------------------------

TYPES = {
    tarfile.REGTYPE: EntryType.FILE, tarfile.AREGTYPE: EntryType.FILE,
    tarfile.CONTTYPE: EntryType.FILE, tarfile.GNUTYPE_SPARSE: EntryType.FILE,
    tarfile.LNKTYPE: EntryType.HARDLINK, tarfile.SYMTYPE: EntryType.SYMLINK,
    tarfile.CHRTYPE: EntryType.CHAR, tarfile.BLKTYPE: EntryType.BLOCK,
    tarfile.DIRTYPE: EntryType.DIR, tarfile.FIFOTYPE: EntryType.FIFO,
}


def clean(name: str) -> str:
    """What the core makes of an archive path: relative to the root, "." for the root."""
    cleaned = posixpath.normpath("/" + name).lstrip("/")
    return cleaned or "."


def oracle(data: bytes) -> list[dict]:
    """Lists a tar with tarfile, in the shape of entry_dict()."""
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        for m in tf:
            etype = TYPES[m.type]
            d = {
                "path": clean(m.name), "type": etype, "mode": m.mode & 0o7777,
                "uid": m.uid, "gid": m.gid, "mtime_ns": int(m.mtime) * 10**9,
                "uname": m.uname, "gname": m.gname,
                "xattrs": tuple(sorted(
                    (k[len("SCHILY.xattr."):], v.encode("utf-8", "surrogateescape"))
                    for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr."))),
                "size": 0, "link": None, "content_hash": None, "dev": (0, 0),
            }
            if etype is EntryType.FILE:
                content = tf.extractfile(m).read()
                d["size"] = len(content)
                d["content_hash"] = blake3.blake3(content).hexdigest()
            elif etype is EntryType.SYMLINK:
                d["link"] = m.linkname
            elif etype is EntryType.HARDLINK:
                d["link"] = clean(m.linkname)
            if etype in (EntryType.CHAR, EntryType.BLOCK):
                d["dev"] = (m.devmajor, m.devminor)
            out.append(d)
    return out


def entry_dict(e) -> dict:
    return {
        "path": e.path, "type": e.type, "mode": e.mode, "uid": e.uid, "gid": e.gid,
        "mtime_ns": e.mtime_ns - e.mtime_ns % 10**9, "uname": e.uname, "gname": e.gname,
        "xattrs": e.xattrs, "size": e.size, "link": e.link, "content_hash": e.content_hash,
        "dev": (e.devmajor, e.devminor),
    }


def feed(data: bytes, sizes=None, store=None) -> _native.IngestResult:
    """Ingests data cut into pieces of the given sizes (cycled), or in one piece."""
    ingest = _native.LayerIngest(store)
    try:
        if not sizes:
            ingest.feed(data)
        else:
            pos, i = 0, 0
            while pos < len(data):
                n = sizes[i % len(sizes)]
                ingest.feed(data[pos:pos + n])
                pos += n
                i += 1
        return ingest.finish()
    finally:
        ingest.close()


def rebuild(result: _native.IngestResult, contents: list[bytes]) -> bytes:
    """Re-creates the tar from raw metadata and the content of each regular file in order."""
    out = bytearray()
    pos = 0
    files = iter(contents)
    for rec in _native.decode_records(result.records):
        out += result.raw[pos:pos + rec.raw_len]
        pos += rec.raw_len
        if rec.entry.type is EntryType.FILE:
            out += next(files)
    out += result.raw[pos:]
    return bytes(out)


def file_contents(data: bytes) -> list[bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        return [tf.extractfile(m).read() for m in tf if TYPES[m.type] is EntryType.FILE]


def sha256_id(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def archive_members(path) -> dict[str, bytes]:
    """Every regular file of a (possibly compressed) archive, by name."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"\x28\xb5\x2f\xfd":
        import zstandard
        with open(path, "rb") as f:
            data = zstandard.ZstdDecompressor().decompressobj().decompress(f.read())
        tf = tarfile.open(fileobj=io.BytesIO(data), mode="r:")
    else:
        tf = tarfile.open(path, "r:gz" if head[:2] == b"\x1f\x8b" else "r:")
    with tf:
        return {m.name: tf.extractfile(m).read() for m in tf if m.isfile()}


def saved_layers(path, fmt: str) -> list[bytes]:
    files = archive_members(path)
    if fmt == "docker":
        (entry,) = json.loads(files["manifest.json"])
        return [files[name] for name in entry["Layers"]]
    index = json.loads(files["index.json"])
    manifest = json.loads(files["blobs/sha256/" + index["manifests"][0]["digest"][7:]])
    return [files["blobs/sha256/" + l["digest"][7:]] for l in manifest["layers"]]


def tar_bytes(items, fmt, **kw) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, **kw) as tf:
        for ti, content in items:
            tf.addfile(ti, io.BytesIO(content) if ti.isfile() else None)
    return buf.getvalue()


def tarinfo(name, kind="f", content=b"", **attrs):
    ti = tarfile.TarInfo(name)
    ti.mtime = 1700000000
    ti.type = {"f": tarfile.REGTYPE, "d": tarfile.DIRTYPE, "l": tarfile.SYMTYPE,
               "h": tarfile.LNKTYPE, "c": tarfile.CHRTYPE, "b": tarfile.BLKTYPE,
               "p": tarfile.FIFOTYPE}[kind]
    ti.size = len(content) if kind == "f" else 0
    for k, v in attrs.items():
        setattr(ti, k, v)
    return ti, content


# ---- trees as a container sees them ---------------------------------------------------------

def snapshot(root: str, mtimes: bool = False, owners: bool = True) -> tuple[dict, list]:
    """{relative path: description} and the groups of paths that share an inode."""
    out: dict[str, tuple] = {}
    inodes: dict[tuple, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            kind = stat.S_IFMT(st.st_mode)
            desc = [kind, stat.S_IMODE(st.st_mode)]
            if owners:
                desc += [st.st_uid, st.st_gid]
            if stat.S_ISREG(kind):
                with open(full, "rb") as f:
                    desc += [st.st_size, hashlib.sha256(f.read()).hexdigest()]
                if st.st_nlink > 1:
                    inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
            elif stat.S_ISLNK(kind):
                desc.append(os.readlink(full))
            elif stat.S_ISCHR(kind) or stat.S_ISBLK(kind):
                desc.append((os.major(st.st_rdev), os.minor(st.st_rdev)))
            if mtimes and not stat.S_ISLNK(kind):
                desc.append(st.st_mtime_ns // 10**9)
            out[rel] = tuple(desc)
    groups = sorted(sorted(g) for g in inodes.values() if len(g) > 1)
    return out, groups


def differences(a: dict, b: dict, limit: int = 20) -> list[str]:
    diffs = []
    for path in sorted(set(a) | set(b)):
        if a.get(path) != b.get(path):
            diffs.append(f"{path}: {a.get(path)} != {b.get(path)}")
            if len(diffs) >= limit:
                break
    return diffs


def groups_within(inner: list, outer: list) -> bool:
    """Whether every inode group of inner lies inside one group of outer (a hardlinked
    checkout may share more inodes than the reference: equal files are one object)."""
    where = {p: i for i, g in enumerate(outer) for p in g}
    return all(len({where.get(p, ("alone", p)) for p in g}) == 1 for g in inner)
