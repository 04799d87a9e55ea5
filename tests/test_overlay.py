"""Containers on overlayfs: shared per-layer lower dirs, whiteouts in overlay's form, commit of
an upper dir back into an image, umount, and the CLI's errors."""

import ctypes
import ctypes.util
import errno
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile

import pytest

import archives as A
from helpers import differences, need_overlay, snapshot
from layerstore import Store, errors
from layerstore.runtimes import overlay
from layerstore.cli import main


BASE = A.layer(("d", "etc"), ("f", "etc/os-release", b"NAME=test\n"),
               ("f", "etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
               ("f", "bin/sh", b"\x7fELF" * 300, 0o755), ("l", "bin/bash", "sh"),
               ("f", "etc/empty", b""), ("d", "usr/share/doc", 0o755),
               ("f", "usr/share/doc/a", b"doc a\n"), ("f", "usr/share/doc/b", b"doc b\n"),
               ("d", "var/lib/data"), ("f", "var/lib/data/x", b"x" * 5000),
               ("f", "var/lib/data/y", b"y" * 10))
TOP = A.layer(("f", "app/main.py", b"print('hi')\n"), ("wh", "etc/os-release"),
              ("opq", "usr/share/doc"), ("f", "usr/share/doc/new", b"new doc\n"),
              ("h", "app/sh-link", "bin/sh"))
OTHER = A.layer(("f", "srv/other", b"other\n"))


def _mounted_under(path: str) -> list[str]:
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].encode().decode("unicode_escape") for line in f]
    return [p for p in points if p == path or p.startswith(path + "/")]


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store") as s:
        s.import_archive(io.BytesIO(A.docker_archive([([BASE, TOP], ["app:1"]),
                                                      ([BASE, OTHER], ["other:1"])])))
        yield s
    # Whatever a test left mounted (a failed assertion before its umount) goes, deepest
    # first, detached so a busy mount cannot keep the next tests' tmp dirs alive.
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    for p in sorted(_mounted_under(str(tmp_path)), key=len, reverse=True):
        libc.umount2(os.fsencode(p), 2)     # MNT_DETACH


def _ino(path):
    return os.lstat(path).st_ino


@need_overlay
def test_two_mounts_share_lower_dirs_and_not_writes(store, tmp_path):
    m1 = store.mount("app:1", tmp_path / "c1")
    m2 = store.mount("app:1", tmp_path / "c2")
    assert m1.lowers == m2.lowers and len(m1.lowers) == 2 and m1.upper != m2.upper
    assert os.path.ismount(m1.mountpoint) and os.path.ismount(m2.mountpoint)
    base_dir = m1.lowers[-1]            # overlay's order: topmost first
    assert base_dir == os.path.join(store.root, "layers", store.image("app:1").diff_ids[0][7:])
    # The same inode in both containers and in the layer dir: one lower tree, not two copies.
    for rel in ("bin/sh", "var/lib/data/x", "etc/passwd"):
        ino = _ino(os.path.join(base_dir, rel))
        assert _ino(tmp_path / "c1" / rel) == ino == _ino(tmp_path / "c2" / rel)
    # An image sharing the base layer shares its layer dir too.
    m3 = store.mount("other:1", tmp_path / "c3")
    assert m3.lowers[-1] == base_dir
    assert (tmp_path / "c3" / "srv/other").read_bytes() == b"other\n"

    (tmp_path / "c1" / "new-file").write_bytes(b"only in c1")
    (tmp_path / "c1" / "etc/passwd").write_bytes(b"changed in c1\n")
    os.unlink(tmp_path / "c1" / "var/lib/data/y")
    assert not (tmp_path / "c2" / "new-file").exists()
    assert (tmp_path / "c2" / "etc/passwd").read_bytes() == b"root:x:0:0::/root:/bin/sh\n"
    assert (tmp_path / "c2" / "var/lib/data/y").exists()
    assert (tmp_path / "c3" / "etc/passwd").read_bytes() == b"root:x:0:0::/root:/bin/sh\n"
    # The layer dir (and so the object store) is untouched by the writes.
    assert (open(os.path.join(base_dir, "etc/passwd"), "rb").read()
            == b"root:x:0:0::/root:/bin/sh\n")
    for m in (m1, m2, m3):
        store.umount(m.mountpoint)


@need_overlay
def test_mount_shows_the_image_with_whiteouts_in_overlay_form(store, tmp_path):
    m = store.mount("app:1", tmp_path / "c")
    top = m.lowers[0]
    st = os.lstat(os.path.join(top, "etc/os-release"))
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(os.path.join(top, "usr/share/doc"), "trusted.overlay.opaque") == b"y"
    assert not os.path.lexists(os.path.join(top, "etc", ".wh.os-release"))
    # The hardlink into the base layer makes the top layer depend on its parent: chainID.
    assert os.path.basename(top).startswith("chain-")

    assert not os.path.lexists(tmp_path / "c" / "etc/os-release")
    assert sorted(os.listdir(tmp_path / "c" / "usr/share/doc")) == ["new"]
    # The mount is what checkout makes of the image.
    store.checkout("app:1", tmp_path / "co")
    a, _ = snapshot(str(tmp_path / "c"))
    b, _ = snapshot(str(tmp_path / "co"))
    assert differences(a, b) == []
    store.umount(m.mountpoint)


def _change(root):
    """What a container does: add, change, delete, replace a lower dir (opaque), links."""
    (root / "etc/passwd").write_bytes(b"root:x:0:0::/root:/bin/bash\n")
    os.chmod(root / "bin/sh", 0o700)
    os.chown(root / "var/lib/data/x", 1000, 1000)
    os.unlink(root / "etc/empty")
    os.unlink(root / "bin/bash")
    os.symlink("../bin/sh", root / "etc/shell")
    (root / "home/user").mkdir(parents=True, mode=0o750)
    (root / "home/user/notes").write_bytes(b"n" * 70000)
    os.link(root / "home/user/notes", root / "home/user/notes-link")
    (root / "home/user/empty").touch()
    os.mkfifo(root / "home/user/fifo")
    os.mknod(root / "home/user/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.setxattr(root / "home/user/notes", "user.comment", b"\xffbinary\x00value")
    os.setxattr(root / "home/user/notes", "security.test-label", b"host_t")   # a host's LSM
    subprocess.run(["rm", "-rf", str(root / "var/lib/data")], check=True)
    (root / "var/lib/data").mkdir()
    (root / "var/lib/data/fresh").write_bytes(b"fresh\n")
    subprocess.run(["rm", "-rf", str(root / "app")], check=True)


@need_overlay
def test_commit_of_a_mount_checks_out_as_the_mount_shows(store, tmp_path):
    m = store.mount("app:1", tmp_path / "c")
    root = tmp_path / "c"
    _change(root)
    upper = m.upper
    assert os.getxattr(os.path.join(upper, "var/lib/data"), "trusted.overlay.opaque") == b"y"

    image = store.commit(m.mountpoint, tags=["app:2"])
    base = store.image("app:1")
    assert image.tags == ("docker.io/library/app:2",)
    assert image.diff_ids[:2] == base.diff_ids and len(image.diff_ids) == 3
    config = store.config("app:2")
    assert config["rootfs"]["diff_ids"] == list(image.diff_ids)
    assert config["history"][-1]["created_by"] == "layerstore commit"
    assert config["history"][-1]["created"] == config["created"]
    names = {e.path for e in store.layer_entries(image.diff_ids[-1])}
    assert {"var/lib/data/.wh..wh..opq", "etc/.wh.empty", "bin/.wh.bash", ".wh.app"} <= names
    # This host's label is not the image's: only what a checkout sets again is recorded.
    (notes,) = [e for e in store.layer_entries(image.diff_ids[-1])
                if e.path == "home/user/notes"]
    assert notes.xattrs == (("user.comment", b"\xffbinary\x00value"),)

    store.checkout("app:2", tmp_path / "co")
    a, groups_a = snapshot(str(root))
    b, groups_b = snapshot(str(tmp_path / "co"))
    assert differences(a, b) == []
    assert ["home/user/notes", "home/user/notes-link"] in groups_b
    assert (os.getxattr(tmp_path / "co/home/user/notes", "user.comment")
            == b"\xffbinary\x00value")

    # Committing the same upper again gives the same layer (a deterministic changeset).
    again = store.commit(m.upper)
    assert again.diff_ids[-1] == image.diff_ids[-1]
    store.umount(m.mountpoint)
    # The committed image mounts, and shares both lower dirs of its base.
    m2 = store.mount("app:2", tmp_path / "c2")
    assert m2.lowers[1:] == m.lowers
    assert not os.path.lexists(tmp_path / "c2" / "app")
    store.umount(m2.mountpoint)


@need_overlay
def test_umount_cleans_up(store, tmp_path):
    m = store.mount("app:1", tmp_path / "c")
    cdir = os.path.join(store.root, "containers", m.id)
    assert os.path.isfile(os.path.join(cdir, "container.json"))
    assert json.load(open(os.path.join(cdir, "container.json")))["mountpoint"] == m.mountpoint
    store.umount(tmp_path / "c")
    assert not os.path.ismount(tmp_path / "c")
    assert not os.path.exists(cdir)
    assert overlay.mounts(store.root) == []
    assert _mounted_under(str(tmp_path)) == []
    with pytest.raises(errors.MountError, match="not a layerstore mount"):
        store.umount(tmp_path / "c")


@need_overlay
def test_a_busy_mount_is_refused_with_the_reason(store, tmp_path):
    m = store.mount("app:1", tmp_path / "c")
    with open(tmp_path / "c" / "etc" / "passwd"):
        with pytest.raises(errors.MountError) as info:
            store.umount(m.mountpoint)
        assert str(info.value) == (f"umount {m.mountpoint}: the mount is busy (a process has a "
                                   "file or its working directory in it)")
        assert info.value.errno == errno.EBUSY
        assert os.path.ismount(m.mountpoint)
    store.umount(m.mountpoint)
    assert not os.path.ismount(m.mountpoint)


@need_overlay
def test_user_upper_dir_is_kept_and_committable(store, tmp_path):
    up = tmp_path / "mine" / "upper"
    m = store.mount("app:1", tmp_path / "c", upper=up)
    assert m.upper == str(up) and m.work == str(tmp_path / "mine" / ".upper.work")
    (tmp_path / "c" / "hello").write_text("hello\n")
    os.unlink(tmp_path / "c" / "etc/passwd")
    store.umount(tmp_path / "c")
    assert (up / "hello").read_text() == "hello\n"
    assert not (tmp_path / "mine" / ".upper.work").exists()
    image = store.commit(up, tags=["app:mine"])
    store.checkout(image.id, tmp_path / "co")
    assert (tmp_path / "co/hello").read_text() == "hello\n"
    assert not (tmp_path / "co/etc/passwd").exists()
    # Mounting it again continues the container.
    store.mount("app:1", tmp_path / "c", upper=up)
    assert (tmp_path / "c" / "hello").read_text() == "hello\n"
    store.umount(tmp_path / "c")
    assert len(overlay.mounts(store.root)) == 1


@need_overlay
def test_many_layers_mount_through_short_links(tmp_path):
    # 90 layers of 64-hex dirs under a long root do not fit overlay's one-page options.
    root = tmp_path / ("r" * 200) / "store"
    layers = [A.layer(("f", f"f{i}", f"layer {i}\n".encode()), *(
        [("wh", f"f{i - 1}")] if i % 10 == 5 else [])) for i in range(90)]
    with Store(root) as s:
        s.import_archive(io.BytesIO(A.docker_archive([(layers, ["many:1"])])))
        try:
            m = s.mount("many:1", tmp_path / "c")
            names = os.listdir(tmp_path / "c")
            assert len(names) == 90 - 9 and "f4" not in names and "f5" in names
            assert (tmp_path / "c" / "f89").read_text() == "layer 89\n"
            assert len(os.listdir(root / "l")) == 90
            s.umount(m.mountpoint)
        finally:
            for p in _mounted_under(str(tmp_path)):
                subprocess.run(["umount", "-l", p], check=False)


def _cli(capsys, *args):
    rc = main(["--root", os.environ["LAYERSTORE_ROOT"], *args])
    out, err = capsys.readouterr()
    return rc, out, err


@need_overlay
def test_cli_mount_commit_umount(store, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LAYERSTORE_ROOT", store.root)
    rc, out, err = _cli(capsys, "mount", "app:1", str(tmp_path / "c"))
    assert rc == 0, err
    cid, point = out.split()
    assert point == str(tmp_path / "c") and len(cid) == 32
    (tmp_path / "c" / "x").write_text("x")
    rc, out, err = _cli(capsys, "commit", str(tmp_path / "c"), "--tag", "app:cli")
    assert rc == 0, err
    assert out.split()[0].startswith("sha256:") and "app:cli" in out
    rc, out, err = _cli(capsys, "mount", "app:1", str(tmp_path / "c"))
    assert rc == 1 and err.count("\n") == 1 and "already a mount point" in err
    rc, out, err = _cli(capsys, "umount", str(tmp_path / "c"))
    assert rc == 0 and out == "" and err == ""
    assert not os.path.ismount(tmp_path / "c")


def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    with Store(os.environ["LAYERSTORE_ROOT"]) as s:
        s.import_archive(io.BytesIO(A.docker_archive([([BASE], ["app:1"])])))
    rc, out, err = _cli(capsys, "umount", str(tmp_path))
    assert rc == 1 and err == f"layerstore: error: umount: {tmp_path} is not a layerstore mount\n"
    rc, out, err = _cli(capsys, "commit", str(tmp_path))
    assert rc == 1 and err.startswith("layerstore: error: commit: ") and err.count("\n") == 1
    rc, out, err = _cli(capsys, "mount", "nosuch:1", str(tmp_path / "c"))
    assert rc == 1 and err.count("\n") == 1 and "no such image" in err
    # Without root and without fuse-overlayfs it says so, and mounts nothing.
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(overlay.shutil, "which", lambda name: None)
    rc, out, err = _cli(capsys, "mount", "app:1", str(tmp_path / "d"))
    assert rc == 1 and err.startswith("layerstore: error: mount needs root") and \
        err.count("\n") == 1
    assert not (tmp_path / "d").exists()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("fuse-overlayfs") is None
                    or not os.path.exists("/dev/fuse"),
                    reason="needs root (to stand in for a user) and fuse-overlayfs")
def test_fuse_overlayfs_without_kernel_overlay(store, tmp_path, monkeypatch):
    # What a user without root gets: fuse-overlayfs over layer dirs that keep ".wh." files.
    monkeypatch.setattr(overlay, "_kernel_mode", lambda: False)
    m = store.mount("app:1", tmp_path / "c")
    assert m.kind == "fuse-overlayfs"
    top = m.lowers[0]
    assert os.path.isfile(os.path.join(top, "etc/.wh.os-release"))
    assert os.path.isfile(os.path.join(top, "usr/share/doc/.wh..wh..opq"))
    root = tmp_path / "c"
    assert not os.path.lexists(root / "etc/os-release")
    assert sorted(os.listdir(root / "usr/share/doc")) == ["new"]
    (root / "etc/passwd").write_bytes(b"changed\n")
    os.unlink(root / "var/lib/data/y")
    subprocess.run(["rm", "-rf", str(root / "usr/share/doc")], check=True)
    (root / "usr/share/doc").mkdir()
    (root / "usr/share/doc/q").write_bytes(b"q\n")
    image = store.commit(root, tags=["app:fuse"])
    store.checkout(image.id, tmp_path / "co")
    a, _ = snapshot(str(root))
    b, _ = snapshot(str(tmp_path / "co"))
    assert differences(a, b) == []
    store.umount(root)
    assert not os.path.ismount(root)


@need_overlay
def test_a_mount_gone_behind_our_back_is_forgotten(store, tmp_path):
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    m = store.mount("app:1", tmp_path / "c")
    assert libc.umount2(os.fsencode(m.mountpoint), 0) == 0     # as after a reboot
    m2 = store.mount("app:1", tmp_path / "c")
    assert [x.id for x in overlay.mounts(store.root)] == [m2.id]
    assert libc.umount2(os.fsencode(m2.mountpoint), 0) == 0
    store.umount(tmp_path / "c")
    assert overlay.mounts(store.root) == []


@need_overlay
def test_busy_umount_says_so(store, tmp_path):
    m = store.mount("app:1", tmp_path / "c")
    fd = os.open(tmp_path / "c" / "etc/passwd", os.O_RDONLY)
    try:
        with pytest.raises(errors.MountError, match="busy"):
            store.umount(m.mountpoint)
    finally:
        os.close(fd)
    store.umount(m.mountpoint)
    assert not os.path.ismount(m.mountpoint)


@need_overlay
def test_an_image_cannot_steer_the_mount_through_overlay_xattrs(tmp_path):
    """A directory whose tar entry carries overlayfs's own opaque xattr does not hide the
    lower layers' files when mounted: the mount shows what the checkout shows."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("etc")
        ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1700000000
        ti.pax_headers = {f"SCHILY.xattr.{name}": "y"
                          for name in ("trusted.overlay.opaque", "user.overlay.opaque")}
        tf.addfile(ti)
    top = buf.getvalue()
    with Store(tmp_path / "store") as s:
        s.import_archive(io.BytesIO(A.docker_archive([([BASE, top], ["steer:1"])])))
        m = s.mount("steer:1", tmp_path / "c")
        try:
            assert (tmp_path / "c" / "etc/passwd").read_bytes() == b"root:x:0:0::/root:/bin/sh\n"
        finally:
            s.umount(m.mountpoint)
        s.checkout("steer:1", tmp_path / "co")
        assert (tmp_path / "co" / "etc/passwd").exists()
