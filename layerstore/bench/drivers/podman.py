"""podman (containers/storage) with its overlay, vfs and btrfs drivers, each run with a storage
root, run root, storage.conf and containers.conf of its own.  A container start is `podman
create` + `podman mount`: the storage work of `podman run` without the process.

Flags this machine needs (see the research notes on runtimes): cgroupfs and file events (no
systemd), no network, and low ulimits (runc may not raise them without CAP_SYS_RESOURCE)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ..driver import Driver
from ..system import run


class _Podman(Driver):
    storage_driver = "?"

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
            'netns = "none"\n[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
            f'tmp_dir = "{tmp}"\nstatic_dir = "{self.storage}/libpod"\n'
            f'volume_path = "{self.storage}/volumes"\n')
        self.env = {"CONTAINERS_STORAGE_CONF": str(conf / "storage.conf"),
                    "CONTAINERS_CONF": str(conf / "containers.conf"),
                    "CONTAINERS_REGISTRIES_CONF": str(conf / "registries.conf")}
        (conf / "registries.conf").write_text("unqualified-search-registries = []\n")

    def podman(self, *args, check: bool = True) -> str:
        return run(["podman", "--root", str(self.storage), "--runroot", str(self.runroot),
                    "--storage-driver", self.storage_driver, "--cgroup-manager", "cgroupfs",
                    "--events-backend", "file", *args], env=self.env, check=check)

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

# Where podman reading layerstore's layers (the additional image store being built in
# layerstore/runtimes/) goes: a subclass whose setup exports the cstore and adds
# `--storage-opt overlay.imagestore=<store>/cstore`, whose load is `layerstore import`.
