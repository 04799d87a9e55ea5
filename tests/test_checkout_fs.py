"""The default checkout on real filesystems, each made for the test on a loop device: on xfs
and btrfs its files are reflinks of the objects (their extents shared, FIEMAP says), on ext4
copies; --copy shares no blocks even where reflinks exist; writes stay out of the store."""

import fcntl
import os
import shutil
import struct
import subprocess

import pytest

import archives as A
from helpers import need_root
from layerstore import Store

pytestmark = need_root("mounts loop devices")

FS_IOC_FIEMAP = 0xC020660B          # _IOWR('f', 11, struct fiemap)
FIEMAP_FLAG_SYNC = 0x1              # flush first, so delayed allocations have extents
FIEMAP_EXTENT_SHARED = 0x2000
_EXTENT = 56                        # sizeof(struct fiemap_extent); fe_flags at offset 40


def extent_flags(path, most: int = 32) -> list[int]:
    """The fe_flags of the file's extents, from the FIEMAP ioctl."""
    buf = bytearray(struct.pack("=QQIIII", 0, 2**64 - 1, FIEMAP_FLAG_SYNC, 0, most, 0))
    buf += bytes(_EXTENT * most)
    with open(path, "rb") as f:
        fcntl.ioctl(f.fileno(), FS_IOC_FIEMAP, buf)
    mapped = struct.unpack_from("=I", buf, 20)[0]
    return [struct.unpack_from("=I", buf, 32 + _EXTENT * i + 40)[0] for i in range(mapped)]


def shared(path) -> bool:
    flags = extent_flags(path)
    assert flags, f"{path}: no extents"
    return all(f & FIEMAP_EXTENT_SHARED for f in flags)


@pytest.fixture(params=["xfs", "btrfs", "ext4"])
def loop_fs(request, tmp_path):
    """A fresh filesystem of the given kind, loop-mounted under tmp_path."""
    kind = request.param
    mkfs = shutil.which(f"mkfs.{kind}")
    if mkfs is None:
        pytest.skip(f"needs mkfs.{kind} (apt-get install "
                    f"{ {'xfs': 'xfsprogs', 'btrfs': 'btrfs-progs'}.get(kind, 'e2fsprogs') })")
    image, mnt = tmp_path / f"{kind}.img", tmp_path / "mnt"
    with open(image, "wb") as f:
        f.truncate(512 << 20)           # sparse; xfs wants 300 MB at least
    subprocess.run([mkfs, "-q", str(image)] if kind != "ext4" else
                   [mkfs, "-q", "-F", str(image)], check=True, capture_output=True)
    mnt.mkdir()
    done = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot loop-mount {kind}: {done.stderr.strip()}")
    try:
        yield kind, mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


FILES = [("d", "etc"), ("f", "etc/small", b"s" * 5000), ("f", "bin/big", os.urandom(1 << 20),
                                                          0o755),
         ("f", "empty", b"")]


def test_default_reflinks_where_it_can_and_copies_elsewhere(loop_fs, tmp_path):
    kind, mnt = loop_fs
    archive = tmp_path / "img.tar"
    archive.write_bytes(A.docker_archive([([A.layer(*FILES)], ["img:1"])]))
    reflinks = kind in ("xfs", "btrfs")
    with Store(mnt / "store") as store:
        (img,) = store.import_archive(archive)
        objects = {e.path: store.object_path(e.object_id) for e in store.image_entries(img.id)
                   if e.type.value == "file" and e.size}
        before = {p: store.open(img.id, p).read() for p in objects}

        r = store.checkout(img.id, mnt / "default")
        assert r.mode == "reflink" and r.hardlinked == 0
        assert (r.reflinked, r.copied) == ((2, 1) if reflinks else (0, 3))     # empty: made
        for path, obj in objects.items():
            got, stored = os.stat(mnt / "default" / path), os.stat(obj)
            assert got.st_ino != stored.st_ino and got.st_mtime == 1700000000
            assert shared(mnt / "default" / path) == reflinks, path
            assert shared(obj) == reflinks, path

        r = store.checkout(img.id, mnt / "copy", copy=True)
        assert (r.mode, r.reflinked, r.copied, r.hardlinked) == ("copy", 0, 3, 0)
        for path in objects:
            assert not shared(mnt / "copy" / path), path

        # Writing into the reflinked files copies their blocks: the store keeps its own.
        with open(mnt / "default" / "bin" / "big", "r+b") as f:
            f.write(b"EVIL")
        with open(mnt / "default" / "etc" / "small", "ab") as f:
            f.write(b"more")
        os.truncate(mnt / "copy" / "bin" / "big", 10)
        assert {p: store.open(img.id, p).read() for p in objects} == before
        assert store.fsck() == []

        r = store.checkout(img.id, mnt / "link", link=True)
        assert (r.mode, r.hardlinked) == ("link", 2)
        for path, obj in objects.items():
            assert os.stat(mnt / "link" / path).st_ino == os.stat(obj).st_ino
