"""Extended attributes: which are applied to files and which live in the records only.

An image records every xattr and save gives them back byte for byte, but only user.*, and as
root trusted.* and security.capability, are set on objects, copies and directories
(ls_xattr_applies).  security.selinux is the build host's label, which this host's kernel may
refuse (an invalid context) or replace with its own, so it stays in the records, and fsck
compares only the applied namespaces: a store nothing has touched is fsck-clean, as root and
as non-root, and a changed user.* xattr is still damage that repair undoes.
"""

import io
import os
import shutil
import struct
import subprocess
import tarfile
import tempfile

import pytest

import archives as A
from helpers import (context, in_child_as, mount_or_skip, need_root, saved_layers, tar_bytes,
                     tarinfo)
from layerstore import Store, _native
from layerstore.cli import main

ROOT = os.geteuid() == 0
# A file capability as the kernel stores it (v2: cap_net_raw permitted and effective).
CAP_V2 = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
# The same as v3 with root id 0: the kernel stores it as CAP_V2 (a rewrite fsck must accept).
CAP_V3_ROOT0 = struct.pack("<IIIIII", 0x03000001, 1 << 13, 0, 0, 0, 0)
LABELS = {  # the build host's, several; the last is no valid context anywhere
    "bin/ping": b"system_u:object_r:ping_exec_t:s0\x00",
    "etc/passwd": b"system_u:object_r:passwd_file_t:s0\x00",
    "srv/data": b"unconfined_u:object_r:user_home_t:s0",
    "srv/twin": b"system_u:object_r:etc_t:s0\x00",
    "usr/bin/odd": b"not a context at all",
}
XATTRS = {
    "bin/ping": {"security.capability": CAP_V2},
    "srv": {"user.dir": b"d", "trusted.dir": b"t"},
    "srv/data": {"user.mime": b"text/plain", "trusted.origin": b"\x00\xffbinary"},
    "usr/bin/caps3": {"security.capability": CAP_V3_ROOT0},
}


def _pax(xattrs: dict) -> dict:
    return {"SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape") for k, v in xattrs.items()}


def _layer() -> bytes:
    items = [tarinfo("srv", "d", mode=0o755, pax_headers=_pax({**XATTRS["srv"],
                                                             "security.selinux": b"x_t"}))]
    for path, content in (("bin/ping", b"\x7fELF ping"), ("etc/passwd", b"root:x:0:0\n"),
                          ("srv/data", b"same bytes" * 50), ("srv/twin", b"same bytes" * 50),
                          ("usr/bin/odd", b"odd"), ("usr/bin/caps3", b"\x7fELF caps"),
                          ("usr/bin/plain", b"plain")):
        xattrs = {**XATTRS.get(path, {})}
        if path in LABELS:
            xattrs["security.selinux"] = LABELS[path]
        items.append(tarinfo(path, content=content, mode=0o755, pax_headers=_pax(xattrs)))
    # Labelled entries that have no descriptor to set xattrs through: nothing to skip.
    label = _pax({"security.selinux": b"system_u:object_r:bin_t:s0\x00"})
    items.append(tarinfo("bin/ping6", "l", linkname="ping", pax_headers=label))
    items.append(tarinfo("srv/pipe", "p", mode=0o600, pax_headers=label))
    return tar_bytes(items, tarfile.PAX_FORMAT)


LAYER = _layer()


def _applied(xattrs: dict, owners: bool) -> dict:
    return {k: v for k, v in xattrs.items() if _native.xattr_applies(k, owners)}


def _on_file(path, owners: bool) -> dict:
    return {n: os.getxattr(path, n, follow_symlinks=False)
            for n in os.listxattr(path, follow_symlinks=False)
            if _native.xattr_applies(n, owners)}


@pytest.fixture
def archive(tmp_path):
    path = tmp_path / "img.tar"
    path.write_bytes(A.docker_archive([([LAYER], ["test/labels:1"])]))
    return path


@pytest.fixture
def store(tmp_path, archive):
    with Store(tmp_path / "store") as s:
        s.import_archive(archive)
        yield s


def test_the_rule():
    applies = _native.xattr_applies
    assert applies("user.x", False) and applies("user.x", True)
    assert not applies("trusted.x", False) and applies("trusted.x", True)
    assert not applies("security.capability", False) and applies("security.capability", True)
    for name in ("security.selinux", "security.ima", "security.capabilityX",
                 "system.posix_acl_access", "userx", "other.x",
                 # overlayfs's own: a layer must not make a mount see opaque dirs or redirects
                 "trusted.overlay.opaque", "trusted.overlay.redirect", "user.overlay.opaque",
                 "user.fuseoverlayfs.opaque"):
        assert not applies(name, True) and not applies(name, False), name


def test_labelled_image_imports_checks_out_and_is_fsck_clean(store, tmp_path, capsys):
    assert store.fsck() == []
    assert main(["--root", store.root, "fsck"]) == 0
    assert capsys.readouterr().out == ""
    for path in ("bin/ping", "srv/data", "etc/passwd", "usr/bin/odd"):
        want = {**XATTRS.get(path, {})}
        obj = store.object_path(store.stat("test/labels:1", path).object_id)
        assert _on_file(obj, ROOT) == _applied(want, ROOT), path
    for mode in ("link", "default", "copy"):
        dest = tmp_path / f"co-{mode}"
        r = store.checkout("test/labels:1", dest, **({mode: True} if mode != "default" else {}))
        if ROOT:    # labels of the build host are no xattrs a root checkout skipped
            assert r.skipped_xattrs == 0
        for path in ("bin/ping", "srv", "srv/data", "etc/passwd"):
            assert _on_file(dest / path, ROOT) == _applied(XATTRS.get(path, {}), ROOT), path
        try:    # the host may label it, but never with the build host's invalid context
            label = os.getxattr(dest / "usr/bin/odd", "security.selinux")
        except OSError:
            label = None
        assert label != LABELS["usr/bin/odd"]
    assert store.fsck() == []


def test_save_gives_back_every_recorded_xattr(store, tmp_path):
    out = tmp_path / "saved.tar"
    store.save(["test/labels:1"], out)
    assert saved_layers(out, "docker") == [LAYER]
    entries = {e.path: dict(e.xattrs) for e in store.image_entries("test/labels:1")}
    assert entries["usr/bin/odd"] == {"security.selinux": LABELS["usr/bin/odd"]}
    assert entries["usr/bin/caps3"] == {"security.capability": CAP_V3_ROOT0}


def test_changed_user_xattr_is_found_and_repaired(store, capsys):
    ids = [store.stat("test/labels:1", p).object_id for p in ("srv/data", "usr/bin/plain")]
    obj, plain = map(store.object_path, ids)
    os.setxattr(obj, "user.mime", b"text/evil")
    os.setxattr(plain, "user.added", b"1")
    assert sorted((p.kind, p.subject, p.detail) for p in store.fsck()) == sorted(
        ("object-metadata", oid, "xattrs differ from its records") for oid in ids)
    assert main(["--root", store.root, "fsck"]) == 1
    capsys.readouterr()
    assert all(p.fixed for p in store.fsck(repair=True))
    assert os.getxattr(obj, "user.mime") == b"text/plain"
    assert "user.added" not in os.listxattr(plain)
    assert store.fsck() == []


@need_root("sets a security.selinux label as this host's policy would")
def test_labels_the_host_puts_on_objects_are_not_damage(store):
    """A host with SELinux labels every file it makes; its label is neither recorded nor
    compared, and repair leaves it alone."""
    objs = [store.object_path(e.object_id) for e in store.image_entries("test/labels:1")
            if e.object_id and e.size]
    for obj in objs:
        os.setxattr(obj, "security.selinux", b"system_u:object_r:container_file_t:s0")
        os.setxattr(obj, "security.ima", b"\x03x")
    assert store.fsck() == []
    os.setxattr(objs[0], "trusted.extra", b"1")      # an applied namespace: damage
    (p,) = store.fsck(repair=True)
    assert p.fixed
    assert os.getxattr(objs[0], "security.selinux") == b"system_u:object_r:container_file_t:s0"
    assert store.fsck() == []


@need_root("mounts a ramfs, which refuses user and trusted xattrs")
def test_a_filesystem_that_refuses_xattrs_keeps_the_store_clean(archive, tmp_path, capsys):
    mnt = tmp_path / "ramfs"
    mount_or_skip(mnt, "-t", "ramfs", "ramfs")
    try:
        with Store(mnt / "store") as s:
            s.import_archive(archive)
            records = _records(s)
            assert records["srv/data"] & _native.XATTRS_SKIPPED
            assert not records["etc/passwd"] & _native.XATTRS_SKIPPED   # nothing applied
            assert s.fsck() == []
            assert main(["--root", s.root, "fsck"]) == 0
            s.checkout("test/labels:1", mnt / "co", copy=True)
            assert s.fsck() == []
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def _records(store) -> dict:
    """{path: record flags} of the image's only layer."""
    (diff_id,) = store.image("test/labels:1").diff_ids
    with context(store).index.read() as txn:
        blob = bytes(context(store).index.layer_data(txn, diff_id, "records"))
    return {r.entry.path: r.flags for r in _native.decode_records(blob)}


def test_what_the_kernel_rewrites_or_refuses_is_recorded(store):
    """A v3 capability of root id 0 is stored as v2 (root); a user xattr larger than ext4's
    block answers ENOSPC with space to spare: the import goes on, the record says skipped
    where the file differs, and fsck is clean."""
    records = _records(store)
    assert bool(records["usr/bin/caps3"] & _native.XATTRS_SKIPPED) == ROOT
    assert not records["bin/ping"] & _native.XATTRS_SKIPPED
    big = tar_bytes([tarinfo("big", content=b"b", pax_headers=_pax({"user.big": b"v" * 6000}))],
               tarfile.PAX_FORMAT)
    store.import_archive(io.BytesIO(A.docker_archive([([big], ["test/big:1"])])))
    assert store.fsck() == []


@need_root("drops to an unprivileged user")
def test_unprivileged_store_is_fsck_clean(archive):
    top = tempfile.mkdtemp(prefix="layerstore-user-")     # pytest's tmp_path is root-only
    os.chmod(top, 0o755)
    try:
        shutil.copy(archive, os.path.join(top, "img.tar"))
        os.chown(top, 65534, 65534)

        def run():
            with Store(os.path.join(top, "store")) as s:
                s.import_archive(os.path.join(top, "img.tar"))
                problems = [s.fsck(), main(["--root", s.root, "fsck"])]
                s.checkout("test/labels:1", os.path.join(top, "co"), copy=True)
                data = os.path.join(top, "co", "srv", "data")
                problems.append(_on_file(data, False) == {"user.mime": b"text/plain"})
                obj = s.object_path(s.stat("test/labels:1", "srv/data").object_id)
                os.setxattr(obj, "user.mime", b"changed")
                problems.append([p.kind for p in s.fsck()])
                s.fsck(repair=True)
                problems.append(s.fsck())
                return problems

        assert in_child_as(65534, run) == str([[], 0, True, ["object-metadata"], []])
    finally:
        shutil.rmtree(top)
