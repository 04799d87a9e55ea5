"""Checkout by the C core: hostile layers create nothing outside DEST, EMLINK for real, metadata,
the default's and the copy mode's independence from the store, the link mode's sharing, DEST's
own metadata, and progress."""

import io
import os
import pty
import stat
import subprocess
import sys
import tarfile

import pytest

import archives as A
from helpers import in_child_as, python_env
from layerstore import Progress, Store, errors
from layerstore.cli import main


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store") as s:
        yield s


def image(store, tmp_path, *layers, name="img:1"):
    path = tmp_path / f"{name.replace(':', '-')}.tar"
    path.write_bytes(A.docker_archive([(list(layers), [name])]))
    (img,) = store.import_archive(path)
    return img


def listing(root) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            kind = "l" if stat.S_ISLNK(st.st_mode) else "d" if stat.S_ISDIR(st.st_mode) else "f"
            out[os.path.relpath(p, root)] = kind + (":" + os.readlink(p) if kind == "l" else "")
    return out


@pytest.fixture
def sentinels(tmp_path):
    """A world outside DEST, to check that it is left exactly as it was."""
    outside = tmp_path / "outside"
    (outside / "etc").mkdir(parents=True)
    (outside / "etc" / "passwd").write_text("root:x:0:0\n")
    (outside / "victim").write_text("untouched\n")

    def unchanged():
        assert listing(outside) == {"etc": "d", "etc/passwd": "f", "victim": "f"}
        assert (outside / "etc" / "passwd").read_text() == "root:x:0:0\n"
        assert (outside / "victim").read_text() == "untouched\n"
        assert not (tmp_path / "escaped").exists()
    return outside, unchanged


HOSTILE = {
    # A chain of symlinks leading out of the root, then a file written through it.
    "symlink-chain": [A.layer(("l", "a", "b"), ("l", "b", "c"), ("l", "c", "../../../outside")),
                      A.layer(("f", "a/victim", b"pwned"), ("f", "a/etc/passwd", b"pwned"))],
    # lnk -> / then lnk/etc/x in a later layer lands at DEST/etc/x.
    "link-to-root": [A.layer(("l", "lnk", "/"), ("d", "etc")),
                     A.layer(("f", "lnk/etc/x", b"inside"))],
    # A directory replaced by a symlink pointing out; later entries under its name.
    "dir-to-symlink": [A.layer(("d", "dir"), ("f", "dir/a", b"1")),
                       A.layer(("l", "dir", "../../outside")),
                       A.layer(("f", "dir/victim", b"pwned"), ("d", "dir/new"))],
    # .. through a symlink.
    "dotdot-via-link": [A.layer(("d", "x"), ("l", "x/up", "../..")),
                        A.layer(("f", "x/up/../escaped", b"pwned"), ("f", "x/up/victim", b"p"))],
    # An absolute symlink, followed in a later layer: rooted at the image, not the host.
    "absolute-link": [A.layer(("l", "host", "/tmp/../../outside")),
                      A.layer(("f", "host/victim", b"pwned"))],
}


# Filler that makes a plan big enough for checkout's second thread (csrc/checkout.c), with
# entries sorting before and after the hostile ones, so the cut falls among them.
FILLER = A.layer(*[("f", f"{p}/f{i:03d}", b"%d" % i) for p in ("0fill", "zfill")
                   for i in range(400)])


@pytest.mark.parametrize("case", sorted(HOSTILE))
@pytest.mark.parametrize("mode", [{}, {"link": True}, {"copy": True}],
                         ids=["default", "link", "copy"])
@pytest.mark.parametrize("size", ["small", "threaded"])
def test_hostile_layers_stay_inside(case, mode, size, store, tmp_path, sentinels):
    outside, unchanged = sentinels
    layers = HOSTILE[case] if size == "small" else [FILLER, *HOSTILE[case]]
    img = image(store, tmp_path, *layers)
    dest = tmp_path / "dest"
    store.checkout(img.id, dest, **mode)
    unchanged()
    # What the layers wrote through links landed inside DEST (the symlinks themselves stay
    # as written: they only point out, which a container's chroot resolves inside).
    made = listing(dest)
    for path, kind in made.items():
        full = dest / path
        if kind == "f":
            assert os.path.realpath(full).startswith(str(dest) + os.sep), path
    if case == "link-to-root":
        assert (dest / "etc" / "x").read_bytes() == b"inside"
        assert made["lnk"] == "l:/"


def test_link_to_root_then_file_lands_in_dest(store, tmp_path):
    img = image(store, tmp_path, *HOSTILE["link-to-root"])
    store.checkout(img.id, tmp_path / "dest")
    assert (tmp_path / "dest" / "etc" / "x").read_bytes() == b"inside"


def test_failed_checkout_removes_what_it_made(store, tmp_path):
    img = image(store, tmp_path, A.layer(("d", "a"), ("f", "a/f", b"content" * 100)))
    for dirpath, _, names in os.walk(os.path.join(store.root, "objects")):
        for n in names:
            os.chmod(dirpath, 0o700)
            os.unlink(os.path.join(dirpath, n))     # the object is gone: checkout must fail
    dest = tmp_path / "dest"
    with pytest.raises(errors.LayerstoreError, match="missing from the store"):
        store.checkout(img.id, dest)
    assert not dest.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(errors.LayerstoreError):
        store.checkout(img.id, empty)
    assert empty.exists() and os.listdir(empty) == []


def test_bad_destinations_are_clear_errors(store, tmp_path):
    img = image(store, tmp_path, A.layer(("f", "f", b"x")))
    with pytest.raises(errors.LayerstoreError, match="parent directory does not exist"):
        store.checkout(img.id, tmp_path / "no" / "such" / "dest")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_bytes(b"")
    with pytest.raises(errors.LayerstoreError, match="is not empty"):
        store.checkout(img.id, tmp_path / "full")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(errors.LayerstoreError, match="is not a directory"):
        store.checkout(img.id, tmp_path / "file")


def _many(n: int, content: bytes) -> bytes:
    """A layer of n files with the same bytes (one object), plus a hardlink to the last."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        d = tarfile.TarInfo("d")
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
        for i in range(n):
            ti = tarfile.TarInfo(f"d/f{i}")
            ti.size = len(content)
            tf.addfile(ti, io.BytesIO(content))
        h = tarfile.TarInfo("hard")
        h.type, h.linkname = tarfile.LNKTYPE, f"d/f{n - 1}"
        tf.addfile(h)
    return buf.getvalue()


def test_emlink_for_real(store, tmp_path):
    """70,000 files with the same content are one object; ext4 allows 65,000 links to an
    inode, so the rest must become copies (and a hardlink to one of them still works)."""
    n = 70_000
    img = image(store, tmp_path, _many(n, b"same bytes\n"))
    objects = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(store.root, "objects"))
               for f in fs]
    assert len(objects) == 1
    dest = tmp_path / "dest"
    result = store.checkout(img.id, dest, link=True)
    assert result.files == n + 1
    links = os.lstat(objects[0]).st_nlink
    if links >= n:      # a filesystem without ext4's limit (tmpfs, xfs, btrfs): no EMLINK
        pytest.skip(f"this filesystem allowed {links} links: EMLINK did not happen")
    # "hard" is a copy too when its target is one of the object's links (at the limit).
    assert result.copied > 0 and result.hardlinked + result.copied in (n, n + 1)
    for i in (0, n // 2, n - 1):
        assert (dest / "d" / f"f{i}").read_bytes() == b"same bytes\n"
    assert os.path.samefile(dest / "hard", dest / "d" / f"f{n - 1}") or \
        (dest / "hard").read_bytes() == b"same bytes\n"


def test_copy_mode_is_independent_and_keeps_mtimes(store, tmp_path):
    img = image(store, tmp_path, A.layer(("d", "a"), ("f", "a/f", b"data" * 1000, 0o640),
                                         ("f", "a/empty", b"")))
    dest = tmp_path / "dest"
    result = store.checkout(img.id, dest, copy=True)
    assert result.hardlinked == 0 and result.copied == 2
    f = dest / "a" / "f"
    assert f.stat().st_nlink == 1 and f.stat().st_mtime == 1700000000
    assert stat.S_IMODE(f.stat().st_mode) == 0o640
    assert (dest / "a").stat().st_mtime == 1700000000     # set after its children
    os.chmod(f, 0o644)
    f.write_bytes(b"edited")
    again = tmp_path / "again"
    store.checkout(img.id, again)
    assert (again / "a" / "f").read_bytes() == b"data" * 1000


def test_hardlinked_checkout_shares_the_object_and_empty_files_are_fresh(store, tmp_path):
    img = image(store, tmp_path, A.layer(("f", "x", b"bytes" * 10), ("f", "e1", b""),
                                         ("f", "e2", b"")))
    a, b = tmp_path / "a", tmp_path / "b"
    store.checkout(img.id, a, link=True)
    store.checkout(img.id, b, link=True)
    assert os.path.samefile(a / "x", b / "x")
    assert not os.path.samefile(a / "e1", b / "e1")
    assert not os.path.samefile(a / "e1", a / "e2")
    assert os.stat(a / "x").st_mtime == 0       # the object's canonical mtime


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: drops to an unprivileged user")
def test_unprivileged_checkout(tmp_path):
    """Not as root: owners and device nodes are skipped and counted, a read-only directory
    still gets its children, and modes end as recorded."""
    import shutil
    import tempfile


    top = tempfile.mkdtemp(prefix="layerstore-user-")     # pytest's tmp_path is root-only
    try:
        os.chmod(top, 0o755)
        os.chown(top, 65534, 65534)
        archive = os.path.join(top, "img.tar")
        with open(archive, "wb") as f:
            f.write(A.docker_archive([([A.layer(("d", "ro", 0o555), ("f", "ro/f", b"x" * 100),
                                                 ("f", "ro/e", b"", 0o600),
                                                 ("l", "ro/l", "f"))], ["u:1"])]))
        os.chmod(archive, 0o644)
        dest = os.path.join(top, "dest")

        def run():
            with Store(os.path.join(top, "store")) as s:
                s.import_archive(archive)
                r = s.checkout("u:1", dest)
            modes = {p: oct(stat.S_IMODE(os.lstat(os.path.join(dest, p)).st_mode))
                     for p in ("ro", "ro/f", "ro/e")}
            return (r.skipped_owners > 0, modes, open(os.path.join(dest, "ro/f")).read(100))

        # The child cannot read this Python's files (under /root): import all it needs here.
        with Store(tmp_path / "warm") as s:
            s.import_archive(archive)
            s.checkout("u:1", tmp_path / "warm-dest")
        got = in_child_as(65534, run)
        assert got == str((True, {"ro": "0o555", "ro/f": "0o644", "ro/e": "0o600"},
                           "x" * 100)), got
    finally:
        for dirpath, dirnames, _ in os.walk(top):
            for d in dirnames:
                os.chmod(os.path.join(dirpath, d), 0o755, follow_symlinks=False)
        shutil.rmtree(top)


# ---- the modes: safe to write by default, hardlinks when asked --------------------------------

SHARED = b"bytes both images hold\n" * 200


def two_images(store, tmp_path):
    """Two images whose layers differ but whose files are the same objects."""
    files = [("d", "etc"), ("f", "etc/conf", SHARED), ("f", "etc/log", b"log line\n" * 50),
             ("f", "bin/tool", b"\x7fELF" * 3000, 0o755), ("f", "empty", b"")]
    return (image(store, tmp_path, A.layer(*files), name="a:1"),
            image(store, tmp_path, A.layer(*files, ("f", "b-only", b"b")), name="b:1"))


def contents(store, img) -> dict:
    """What `cat` prints of each file of the image (Store.open reads the objects)."""
    return {e.path: store.open(img.id, e.path).read() for e in store.image_entries(img.id)
            if e.type.value == "file"}


@pytest.mark.parametrize("how", [{}, {"copy": True}], ids=["default", "copy"])
def test_writes_into_a_checkout_leave_the_store_alone(how, store, tmp_path):
    a, b = two_images(store, tmp_path)
    before = {img.id: contents(store, img) for img in (a, b)}
    dest = tmp_path / "dest"
    r = store.checkout(a.id, dest, **how)
    assert r.mode == ("copy" if how else "reflink")
    assert r.hardlinked == 0 and r.reflinked + r.copied == r.files == 4
    if how:
        assert r.reflinked == 0
    with open(dest / "etc" / "conf", "r+b") as f:          # written in place
        f.write(b"EVIL")
    os.truncate(dest / "etc" / "log", 3)
    with open(dest / "bin" / "tool", "ab") as f:
        f.write(b"appended")
    os.chmod(dest / "etc" / "conf", 0o6777)
    os.chown(dest / "bin" / "tool", 4242, 4242) if os.geteuid() == 0 else None
    with open(dest / "empty", "ab") as f:
        f.write(b"no longer empty")
    assert {img.id: contents(store, img) for img in (a, b)} == before
    assert store.fsck() == []
    again = tmp_path / "again"
    store.checkout(b.id, again, link=True)
    assert (again / "etc" / "conf").read_bytes() == SHARED
    assert stat.S_IMODE(os.stat(again / "etc" / "conf").st_mode) == 0o644
    assert (again / "etc" / "log").read_bytes() == b"log line\n" * 50


def test_link_checkouts_share_the_stores_inodes(store, tmp_path):
    a, _ = two_images(store, tmp_path)
    dest = tmp_path / "dest"
    r = store.checkout(a.id, dest, link=True)
    assert r.mode == "link" and (r.hardlinked, r.reflinked, r.copied) == (3, 0, 1)   # empty: own
    for e in store.image_entries(a.id):
        if e.type.value == "file" and e.size:
            got, obj = os.stat(dest / e.path), os.stat(store.object_path(e.object_id))
            assert (got.st_dev, got.st_ino) == (obj.st_dev, obj.st_ino), e.path
    assert os.stat(dest / "empty").st_nlink == 1


def test_link_and_copy_together_are_refused(store, tmp_path, capsys):
    a, _ = two_images(store, tmp_path)
    dest = tmp_path / "dest"
    with pytest.raises(ValueError, match="exclude each other"):
        store.checkout(a.id, dest, link=True, copy=True)
    assert not dest.exists()
    capsys.readouterr()
    assert main(["--root", store.root, "checkout", "--link", "--copy", "a:1", str(dest)]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", "layerstore: error: --link and --copy exclude each other\n")
    assert not dest.exists()


def test_help_names_the_modes(capsys):
    assert main(["checkout", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "reflinks" in text and "otherwise copies" in text
    assert "--link Hardlink the store's files, for read-only use" in text
    assert "layerstore mount" in text and "share no blocks with the store" in text


# ---- DEST itself ---------------------------------------------------------------------------

def _layer_with_root(mode: int, uid: int, gid: int, mtime: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        root = tarfile.TarInfo("./")
        root.type, root.mode, root.mtime = tarfile.DIRTYPE, mode, mtime
        root.uid, root.gid = uid, gid
        tf.addfile(root)
        f = tarfile.TarInfo("./f")
        f.size = 1
        tf.addfile(f, io.BytesIO(b"x"))
    return buf.getvalue()


def _top(path) -> tuple:
    st = os.stat(path)
    owner = (st.st_uid, st.st_gid) if os.geteuid() == 0 else None
    return stat.S_IMODE(st.st_mode), owner, st.st_mtime


@pytest.mark.parametrize("how", [{}, {"link": True}, {"copy": True}],
                         ids=["default", "link", "copy"])
def test_dest_gets_the_images_root(how, store, tmp_path):
    """DEST takes the image's "/" (mode, owner, mtime); without a record of it, what Docker
    gives a rootfs (0755, root's); an empty DEST that existed takes them as well."""
    root = os.geteuid() == 0
    recorded = image(store, tmp_path, _layer_with_root(0o750, 1000, 1001, 1600000000),
                     name="rooted:1")
    implicit = image(store, tmp_path, A.layer(("f", "f", b"x")), name="plain:1")
    store.checkout(recorded.id, tmp_path / "made", **how)
    assert _top(tmp_path / "made") == (0o750, (1000, 1001) if root else None, 1600000000)
    store.checkout(implicit.id, tmp_path / "implicit", **how)
    assert _top(tmp_path / "implicit")[:2] == (0o755, (0, 0) if root else None)
    existing = tmp_path / "existing"
    existing.mkdir(mode=0o700)
    if root:
        os.chown(existing, 4242, 4242)
    store.checkout(recorded.id, existing, **how)
    assert _top(existing) == (0o750, (1000, 1001) if root else None, 1600000000)


# ---- progress ------------------------------------------------------------------------------

PROGRESS_FILES = [("f", f"d{i % 5}/f{i}", bytes([i % 256]) * (100 + i)) for i in range(700)]


@pytest.mark.parametrize("how", [{}, {"link": True}, {"copy": True}],
                         ids=["default", "link", "copy"])
def test_progress_counts_every_entry_and_byte(how, store, tmp_path):
    img = image(store, tmp_path, A.layer(*PROGRESS_FILES))     # two threads: over 512 entries
    seen: list[Progress] = []
    store.checkout(img.id, tmp_path / "dest", progress=seen.append, **how)
    size = sum(len(f[2]) for f in PROGRESS_FILES)
    entries = len(PROGRESS_FILES) + 5 + 1       # the files, their directories and the root
    assert seen and seen[-1] == Progress(size, size, entries, entries)
    assert {(p.bytes_total, p.items_total) for p in seen} == {(size, entries)}
    assert [p.items_done for p in seen] == sorted(p.items_done for p in seen)


def _cli(*args, stderr):
    return subprocess.Popen([sys.executable, "-m", "layerstore", *args], env=python_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr)


def _on_a_terminal(*args) -> tuple[int, str]:
    """Runs the CLI with stderr on a pseudo-terminal; returns its status and what it showed."""
    master, slave = pty.openpty()
    proc = _cli(*args, stderr=slave)
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:         # EIO: the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    proc.communicate()
    return proc.returncode, shown.decode()


def test_cli_shows_progress_on_a_terminal_only(store, tmp_path):
    image(store, tmp_path, A.layer(*PROGRESS_FILES))
    store.close()
    rc, shown = _on_a_terminal("--root", store.root, "checkout", "img:1", str(tmp_path / "tty"))
    assert rc == 0
    assert "checking out" in shown and "/706 entries" in shown and "B/s" in shown, shown
    assert shown.endswith("\r\x1b[K"), shown       # the line is cleared at the end
    rc, shown = _on_a_terminal("--root", store.root, "checkout", "--json", "img:1",
                               str(tmp_path / "json"))
    assert rc == 0 and "checking out" not in shown
    proc = _cli("--root", store.root, "checkout", "img:1", str(tmp_path / "pipe"),
                stderr=subprocess.PIPE)
    out, err = proc.communicate()
    assert proc.returncode == 0 and err == b""
    assert out.decode().startswith(f"{tmp_path / 'pipe'}: 700 files (700 copied")
