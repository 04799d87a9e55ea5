"""containerd with its overlayfs, native and btrfs snapshotters, driven through `ctr`.  The
harness starts a containerd of its own per run: its own root, state, sockets and config under
the driver's directory, the CRI plugin off.  A container start is what `ctr run` does to
storage without the process: prepare an active snapshot on the image's top chainID and mount it.

containerd 1.6 still puts shim sockets under /run/containerd; no task is started here, so none
are made.

containerd-layerstore adds a `layerstore snapshotter` of its own over a layerstore root in the
driver's directory, as a [proxy_plugins] entry: images go in by `layerstore import` +
`layerstore containerd-load` (containerd gets the manifest and config, the snapshotter claims
the layers), and containers are prepared on it as on containerd's own snapshotters."""

from __future__ import annotations

import hashlib
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ...errors import LayerstoreError
from ..driver import Driver
from ..system import CommandFailed, mounts_under, run
from .layerstore import layerstore_cli


def chain_id(diff_ids: list[str]) -> str:
    chain = diff_ids[0]
    for d in diff_ids[1:]:
        chain = "sha256:" + hashlib.sha256(f"{chain} {d}".encode()).hexdigest()
    return chain


def spawn(cmd: list[str], log: Path, sock: Path) -> subprocess.Popen:
    """Starts a daemon writing to log, and returns once it listens on sock."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    for _ in range(400):
        if sock.exists():
            return proc
        if proc.poll() is not None:
            # the log goes with the driver's filesystem: its last lines go in the message
            tail = log.read_text(errors="replace").splitlines()[-3:]
            raise CommandFailed(f"{cmd[0]} exited {proc.returncode}: " + " / ".join(tail))
        time.sleep(0.05)
    stop(proc)
    raise CommandFailed(f"{' '.join(cmd)}: no socket {sock} after 20 s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def private_config(root, state, address, snapshotters: dict | None = None) -> str:
    """config.toml for a containerd of one's own, as the tests and benchmarks run one beside
    the system's: its root (the opt plugin's dir inside it), state and sockets at the paths
    given (a socket path must fit in 108 bytes), no CRI plugin, and each snapshotter of
    snapshotters ({name: socket}) served by another process as a [proxy_plugins] entry - the
    block README's "Running images with containerd" has users add to their own config."""
    lines = [
        "version = 2",
        f'root = "{root}"',
        f'state = "{state}"',
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
        "[grpc]", f'  address = "{address}"',
        "[ttrpc]", f'  address = "{address}.ttrpc"',
        "[debug]", f'  address = "{address}.debug"',
        "[metrics]", '  address = ""',
        '[plugins."io.containerd.internal.v1.opt"]', f'  path = "{root}/opt"',
    ]
    if snapshotters:
        lines.append("[proxy_plugins]")
        for name, socket in snapshotters.items():
            lines += [f"  [proxy_plugins.{name}]", '    type = "snapshot"',
                      f'    address = "{socket}"']
    return "\n".join(lines) + "\n"


class _Containerd(Driver):
    snapshotter = "?"
    namespace = "lsbench"

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
        (self.root / "config.toml").write_text(
            private_config(self.root / "root", state, self.sock, self.proxy_plugins()))
        self.proc = spawn(["containerd", "--config", str(self.root / "config.toml")],
                          self.root / "containerd.log", self.sock)
        plugins = self.ctr("plugins", "ls")
        line = next((l for l in plugins.splitlines()
                     if "io.containerd.snapshotter.v1" in l and f" {self.snapshotter} " in l), "")
        if not line.rstrip().endswith("ok"):
            raise CommandFailed(f"containerd's {self.snapshotter} snapshotter is not loaded: "
                                f"{line.strip() or 'absent'}")

    def proxy_plugins(self) -> dict:
        """Snapshotters served by other processes: {name: socket}."""
        return {}

    def ctr(self, *args) -> str:
        return run(["ctr", "-a", str(self.sock), "-n", self.namespace, *args])

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
        if getattr(self, "proc", None):
            stop(self.proc)
        # Mounts containerd left under its root (btrfs subvolumes are not mounts).
        for m in reversed(mounts_under(self.root)):
            run(["umount", m], check=False)
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


class ContainerdLayerstore(_Containerd):
    name = "containerd-layerstore"
    snapshotter = "layerstore"

    @classmethod
    def available(cls):
        try:
            from ...runtimes import containerd_api  # noqa: F401 - needs grpcio and protobuf
        except LayerstoreError as exc:
            return str(exc)
        return cls.need("containerd", "ctr")

    def setup(self):
        self.store = self.root / "store"
        self.ls_state = Path(tempfile.mkdtemp(prefix="lsbench-lss-", dir="/run"))
        self.ls_sock = self.ls_state / "snapshotter.sock"
        self.snapshotter_proc = spawn(
            [sys.executable, "-m", "layerstore", "--root", str(self.store), "snapshotter",
             "--address", str(self.ls_sock)], self.root / "snapshotter.log", self.ls_sock)
        super().setup()

    def proxy_plugins(self):
        return {self.snapshotter: self.ls_sock}

    def daemons(self):
        return [*super().daemons(), self.snapshotter_proc.pid]

    def ls(self, *args) -> str:
        return layerstore_cli(self.store, *args)

    def load(self, image):
        self.ls("import", str(image.archive))
        self.ls("containerd-load", image.id, "--address", str(self.sock),
                "--namespace", self.namespace, "--snapshotter", self.snapshotter)

    def remove(self, image):
        super().remove(image)       # containerd's gc removes its snapshots: the pins go
        self.ls("rm", image.id)

    def gc(self):
        super().gc()
        self.ls("gc")

    def teardown(self):
        super().teardown()
        if getattr(self, "snapshotter_proc", None):
            stop(self.snapshotter_proc)
        if getattr(self, "ls_state", None):
            shutil.rmtree(self.ls_state, ignore_errors=True)
