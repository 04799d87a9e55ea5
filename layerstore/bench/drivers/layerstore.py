"""layerstore through its CLI, as a user runs it: a default checkout (reflink where the
filesystem has it, else a copy), a `--link` checkout (hardlinks to the shared objects: not
isolated) and an overlay `mount` (layers shared read-only, a writable upper dir per container)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from ..driver import Driver
from ..system import mounts_under, run


def layerstore_cli(store: Path, *args: str, check: bool = True) -> str:
    """`layerstore --root store ARGS...` with this Python, as a user runs it (the podman and
    containerd drivers over layerstore use it too)."""
    return run([sys.executable, "-m", "layerstore", "--root", str(store), *args], check=check)


class _Layerstore(Driver):
    def setup(self):
        (self.root / "containers").mkdir(parents=True)

    def ls(self, *args) -> str:
        return layerstore_cli(self.root / "store", *args)

    def load(self, image):
        self.ls("import", str(image.archive))

    def remove(self, image):
        self.ls("rm", image.id)

    def gc(self):
        self.ls("gc")


class LayerstoreCheckout(_Layerstore):
    name = "layerstore"
    flags: tuple[str, ...] = ()

    def start(self, image, name):
        rootfs = self.root / "containers" / name
        self.ls("checkout", *self.flags, image.id, str(rootfs))
        return rootfs

    def stop(self, name):
        shutil.rmtree(self.root / "containers" / name)


class LayerstoreLink(LayerstoreCheckout):
    name = "layerstore-link"
    flags = ("--link",)
    isolated = False


class LayerstoreMount(_Layerstore):
    name = "layerstore-mount"

    @classmethod
    def available(cls):
        if "overlay" not in open("/proc/filesystems").read():
            return "the kernel has no overlayfs"
        return None

    def start(self, image, name):
        rootfs = self.root / "containers" / name
        rootfs.mkdir()
        self.ls("mount", image.id, str(rootfs))
        return rootfs

    def stop(self, name):
        self.ls("umount", str(self.root / "containers" / name))
        (self.root / "containers" / name).rmdir()

    def teardown(self):
        for m in reversed(mounts_under(self.root / "containers")):
            run(["umount", m], check=False)
