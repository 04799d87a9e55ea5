"""podman (containers/storage) with its overlay, vfs and btrfs drivers, each run with a storage
root, run root, storage.conf and containers.conf of its own.  A container start is `podman
create` + `podman mount`: the storage work of `podman run` without the process.

Flags this machine needs (see the research notes on runtimes): cgroupfs and file events (no
systemd), no network, low ulimits (runc may not raise them without CAP_SYS_RESOURCE), and runc
as the runtime (crun, podman's first choice when installed, refuses a hybrid cgroup
hierarchy).

podman-layerstore is podman's overlay driver reading the images from a read-only image store
that `layerstore cstore` keeps over layerstore's layer dirs (`--storage-opt
overlay.imagestore=DIR`): podman's own store holds only the containers' layers."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ..driver import Driver
from ..system import run
from .layerstore import layerstore_cli


class _Podman(Driver):
    storage_driver = "?"
    storage_opts: tuple[str, ...] = ()      # --storage-opt values

    @classmethod
    def available(cls):
        return cls.need("podman")

    def setup(self):
        conf = self.root / "conf"
        conf.mkdir(parents=True)
        # podman refuses a run root longer than 50 characters (its sockets live there)
        self.storage = self.root / "storage"
        self.runroot = Path(tempfile.mkdtemp(prefix="lsbench-", dir="/run"))
        (conf / "storage.conf").write_text(
            f'[storage]\ndriver = "{self.storage_driver}"\n'
            f'graphroot = "{self.storage}"\nrunroot = "{self.runroot}"\n')
        tmp = self.root / "tmp"
        tmp.mkdir()
        (conf / "containers.conf").write_text(
            '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
            'netns = "none"\n[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'tmp_dir = "{tmp}"\nstatic_dir = "{self.storage}/libpod"\n'
            f'volume_path = "{self.storage}/volumes"\n')
        self.env = {"CONTAINERS_STORAGE_CONF": str(conf / "storage.conf"),
                    "CONTAINERS_CONF": str(conf / "containers.conf"),
                    "CONTAINERS_REGISTRIES_CONF": str(conf / "registries.conf")}
        (conf / "registries.conf").write_text("unqualified-search-registries = []\n")

    def podman(self, *args, check: bool = True) -> str:
        return run(["podman", "--root", str(self.storage), "--runroot", str(self.runroot),
                    "--storage-driver", self.storage_driver, "--cgroup-manager", "cgroupfs",
                    "--events-backend", "file",
                    *(f for o in self.storage_opts for f in ("--storage-opt", o)), *args],
                   env=self.env, check=check)

    def load(self, image):
        self.podman("load", "-q", "-i", str(image.archive))

    def start(self, image, name):
        self.podman("create", "--name", name, "--network", "none",
                    "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                    image.id[7:], "/bin/sh")
        return Path(self.podman("mount", name).strip())

    def stop(self, name):
        self.podman("rm", "-f", name)

    def remove(self, image):
        self.podman("rmi", image.id[7:])

    def gc(self):
        self.podman("image", "prune", "-a", "-f")

    def teardown(self):
        if hasattr(self, "env"):
            self.podman("rm", "-a", "-f", check=False)
            self.podman("system", "reset", "-f", check=False)
        if hasattr(self, "runroot"):
            shutil.rmtree(self.runroot, ignore_errors=True)


class PodmanOverlay(_Podman):
    name = "podman-overlay"
    storage_driver = "overlay"


class PodmanVfs(_Podman):
    name = "podman-vfs"
    storage_driver = "vfs"


class PodmanBtrfs(_Podman):
    name = "podman-btrfs"
    storage_driver = "btrfs"
    fs = "btrfs"

    @classmethod
    def available(cls):
        return cls.need("podman", "mkfs.btrfs")


class PodmanLayerstore(PodmanOverlay):
    """Images in layerstore (`layerstore import`), served to podman by `layerstore cstore
    DIR`; containers in podman's own overlay store, as for podman-overlay."""
    name = "podman-layerstore"

    def setup(self):
        self.store, self.cstore = self.root / "store", self.root / "cstore"
        self.storage_opts = (f"overlay.imagestore={self.cstore}",)
        super().setup()

    def ls(self, *args) -> str:
        return layerstore_cli(self.store, *args)

    def load(self, image):
        self.ls("import", str(image.archive))
        self.ls("cstore", str(self.cstore), image.id)

    def remove(self, image):
        self.ls("cstore", str(self.cstore), "--remove", image.id)
        self.ls("rm", image.id)

    def gc(self):
        super().gc()
        self.ls("gc")
