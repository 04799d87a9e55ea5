"""The one interface every storage driver implements, and where drivers come from.

A driver stores images its own way under `root`, a directory on a filesystem of its own that
the harness made for it, and answers the same questions.  Built-in drivers are listed in
BUILTIN; third parties add theirs through the entry-point group `layerstore.bench.drivers`
(name = "module:Class"), e.g. in their pyproject.toml:

    [project.entry-points."layerstore.bench.drivers"]
    mydriver = "mypkg.bench:MyDriver"
"""

from __future__ import annotations

import importlib
import os
import shutil
from importlib.metadata import entry_points
from pathlib import Path

from .generator import GenImage

ENTRY_POINT_GROUP = "layerstore.bench.drivers"


class Driver:
    """A storage driver under test.

    Class attributes say what the harness may expect:
      name       unique, as on the command line and in the table
      fs         the filesystem it needs ("btrfs"), or None for the run's default
      isolated   a write in one container is invisible in the others and in the store
                 (False for hardlink checkouts: writing into a file writes the shared inode)
    """

    name = "?"
    fs: str | None = None
    isolated = True

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def available(cls) -> str | None:
        """Why this driver cannot run here (a program or kernel feature missing), or None."""
        return None

    @staticmethod
    def need(*programs: str) -> str | None:
        """The reason for the first program not on PATH, or None."""
        for p in programs:
            if shutil.which(p) is None:
                return f"{p} is not installed"
        return None

    def setup(self) -> None:
        """Makes empty storage under root (and starts any daemon)."""

    def teardown(self) -> None:
        """Stops daemons and unmounts what setup and start mounted."""

    def daemons(self) -> list[int]:
        """PIDs of daemons doing this driver's work (their CPU time is charged too)."""
        return []

    def load(self, image: GenImage) -> None:
        """Brings the image in from its docker-archive (or OCI layout)."""
        raise NotImplementedError

    def start(self, image: GenImage, name: str) -> Path:
        """Makes container `name` of a loaded image: its root filesystem, ready to use (the
        storage half of a container start: no process runs).  Returns the rootfs path."""
        raise NotImplementedError

    def write_probe(self, rootfs: Path, path: str, data: bytes) -> None:
        """Writes data over `path` (an existing file of the image, so copy-up happens where
        there is one) the way a process in the container would: open for writing, truncate."""
        with open(rootfs / path, "r+b") as f:
            f.truncate(0)
            f.write(data)

    def stop(self, name: str) -> None:
        """Removes container `name`: unmounts and deletes its writable state."""
        raise NotImplementedError

    def remove(self, image: GenImage) -> None:
        """Removes the image (its storage may linger until gc)."""
        raise NotImplementedError

    def gc(self) -> None:
        """Frees what no image or container references."""


def _builtin() -> dict[str, str]:
    return {
        "tar": "layerstore.bench.drivers.tar:Tar",
        "umoci": "layerstore.bench.drivers.umoci:Umoci",
        "ostree": "layerstore.bench.drivers.ostree:OSTree",
        "podman-overlay": "layerstore.bench.drivers.podman:PodmanOverlay",
        "podman-vfs": "layerstore.bench.drivers.podman:PodmanVfs",
        "podman-btrfs": "layerstore.bench.drivers.podman:PodmanBtrfs",
        "containerd-overlayfs": "layerstore.bench.drivers.containerd:ContainerdOverlayfs",
        "containerd-native": "layerstore.bench.drivers.containerd:ContainerdNative",
        "containerd-btrfs": "layerstore.bench.drivers.containerd:ContainerdBtrfs",
        "layerstore": "layerstore.bench.drivers.layerstore:LayerstoreCheckout",
        "layerstore-link": "layerstore.bench.drivers.layerstore:LayerstoreLink",
        "layerstore-mount": "layerstore.bench.drivers.layerstore:LayerstoreMount",
        "podman-layerstore": "layerstore.bench.drivers.podman:PodmanLayerstore",
        "containerd-layerstore": "layerstore.bench.drivers.containerd:ContainerdLayerstore",
    }


BUILTIN = list(_builtin())


def all_drivers() -> dict[str, str]:
    """name -> "module:Class" for the built-in drivers and every entry point of the group."""
    out = _builtin()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        out.setdefault(ep.name, ep.value)
    return out


def load_class(spec: str) -> type[Driver]:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def resolve(names: list[str] | None) -> tuple[list[type[Driver]], list[tuple[str, str]]]:
    """The driver classes to run and the skipped ones as (name, reason): never silently."""
    known = all_drivers()
    chosen, skipped = [], []
    for name in names or list(known):
        if name not in known:
            skipped.append((name, "no such driver (known: " + ", ".join(known) + ")"))
            continue
        try:
            cls = load_class(known[name])
        except Exception as exc:       # a third-party driver that fails to import
            skipped.append((name, f"cannot load {known[name]}: {exc}"))
            continue
        why = cls.available()
        if why is None and os.geteuid() != 0:
            why = "needs root (loop filesystems, dropped caches, mounts)"
        if why:
            skipped.append((name, why))
        else:
            chosen.append(cls)
    return chosen, skipped
