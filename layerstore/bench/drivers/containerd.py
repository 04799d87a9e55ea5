"""containerd with its overlayfs, native and btrfs snapshotters, driven through `ctr`.  The
harness starts a containerd of its own per run: its own root, state, sockets and config under
the driver's directory, the CRI plugin off.  A container start is what `ctr run` does to
storage without the process: prepare an active snapshot on the image's top chainID and mount it.

containerd 1.6 still puts shim sockets under /run/containerd; no task is started here, so none
are made."""

from __future__ import annotations

import hashlib
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ..driver import Driver
from ..system import CommandFailed, mounts_under, run


def chain_id(diff_ids: list[str]) -> str:
    chain = diff_ids[0]
    for d in diff_ids[1:]:
        chain = "sha256:" + hashlib.sha256(f"{chain} {d}".encode()).hexdigest()
    return chain


class _Containerd(Driver):
    snapshotter = "?"

    @classmethod
    def available(cls):
        return cls.need("containerd", "ctr")

    def setup(self):
        # State and sockets in /run, as containerd's own default: a socket path must fit in
        # 108 bytes, which the driver's directory may not.
        self.state = state = Path(tempfile.mkdtemp(prefix="lsbench-ctd-", dir="/run"))
        for d in ("root", "containers"):
            (self.root / d).mkdir(parents=True)
        self.sock = state / "containerd.sock"
        (self.root / "config.toml").write_text(f"""version = 2
root = "{self.root / 'root'}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{self.sock}"
[ttrpc]
  address = "{self.sock}.ttrpc"
[debug]
  address = "{state / 'debug.sock'}"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{self.root / 'opt'}"
""")
        self.log = open(self.root / "containerd.log", "wb")
        self.proc = subprocess.Popen(["containerd", "--config", str(self.root / "config.toml")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(200):
            if self.sock.exists():
                break
            if self.proc.poll() is not None:
                # the log goes with the driver's filesystem: its last lines go in the message
                tail = (self.root / "containerd.log").read_text(errors="replace").splitlines()[-3:]
                raise CommandFailed(f"containerd exited {self.proc.returncode}: "
                                    + " / ".join(tail))
            time.sleep(0.05)
        plugins = self.ctr("plugins", "ls")
        line = next((l for l in plugins.splitlines()
                     if "io.containerd.snapshotter.v1" in l and f" {self.snapshotter} " in l), "")
        if not line.rstrip().endswith("ok"):
            raise CommandFailed(f"containerd's {self.snapshotter} snapshotter is not loaded: "
                                f"{line.strip() or 'absent'}")

    def ctr(self, *args) -> str:
        return run(["ctr", "-a", str(self.sock), "-n", "lsbench", *args])

    def daemons(self):
        return [self.proc.pid]

    def load(self, image):
        self.ctr("images", "import", "--snapshotter", self.snapshotter, str(image.archive))

    def start(self, image, name):
        target = self.root / "containers" / name
        target.mkdir()
        out = self.ctr("snapshots", "--snapshotter", self.snapshotter, "prepare",
                       "--target", str(target), name, chain_id(image.diff_ids))
        for line in out.splitlines():
            if line.startswith("mount "):
                run(shlex.split(line))
        return target

    def stop(self, name):
        target = self.root / "containers" / name
        run(["umount", str(target)])
        target.rmdir()
        self.ctr("snapshots", "--snapshotter", self.snapshotter, "rm", name)

    def remove(self, image):
        self.ctr("images", "rm", "--sync", image.ref)

    def gc(self):
        self.ctr("content", "prune", "references")

    def teardown(self):
        for m in reversed(mounts_under(self.root / "containers")):
            run(["umount", m], check=False)
        if getattr(self, "proc", None) and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # Mounts containerd left under its root (btrfs subvolumes are not mounts).
        for m in reversed(mounts_under(self.root)):
            run(["umount", m], check=False)
        if getattr(self, "log", None):
            self.log.close()
        if getattr(self, "state", None):
            shutil.rmtree(self.state, ignore_errors=True)


class ContainerdOverlayfs(_Containerd):
    name = "containerd-overlayfs"
    snapshotter = "overlayfs"


class ContainerdNative(_Containerd):
    name = "containerd-native"
    snapshotter = "native"


class ContainerdBtrfs(_Containerd):
    name = "containerd-btrfs"
    snapshotter = "btrfs"
    fs = "btrfs"

    @classmethod
    def available(cls):
        return cls.need("containerd", "ctr", "mkfs.btrfs")

# Where containerd reading layerstore's layers (the proxy snapshotter being built) goes: a
# subclass whose config adds [proxy_plugins.layerstore] and starts `layerstore snapshotter`,
# with snapshotter = "layerstore".
