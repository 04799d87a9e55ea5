"""OCI runtime bundles from stored images, and containers run in them by runc or crun.

A bundle is a directory with config.json and rootfs/ (the OCI runtime spec's "filesystem
bundle").  rootfs/ is an overlay mount of the image's shared per-layer dirs with a private
upper dir (runtimes/overlay.py), or, where overlay cannot be mounted here (no root and no
fuse-overlayfs, or a kernel without overlayfs), a checkout that is safe to write.  config.json
is derived from the image config as `umoci unpack` derives it: args = Entrypoint + Cmd, Env
laid over the runtime's default PATH and TERM, WorkingDir, User resolved against the image's
own /etc/passwd and /etc/group (read from the store, never the host's) as runc's libcontainer
resolves it (name or uid, optional :group or :gid, supplementary groups from /etc/group when
no group is given, HOME from passwd), the image's Volumes as tmpfs mounts and its labels and
properties as annotations.  Everything else is `runc spec`'s default (runc 1.1): mounts,
namespaces, capabilities, masked and read-only paths, rlimits; `rootless` is
`runc spec --rootless`: a user namespace mapping the caller's uid and gid to 0, no network
namespace, /sys bound from the host, no cgroup resources.  A marker, layerstore.json, says
the bundle is layerstore's, so `bundle --remove` never deletes a directory it did not make.

A container (`run`) is such a bundle under root/runs/<id>/ plus run.json (name, image, pid of
the supervising `layerstore run`, runtime, status), started with `runc run` in the foreground
(runc's state under root/runc/), stdio attached, signals forwarded, its exit status returned.
The overlay mount's record carries the same id (root/containers/<id>/), so every container of
an image shares the image's layer dirs.  rm refuses an image a recorded container uses unless
forced (Runs below); gc keeps the layer dirs of mounted containers (overlay.Overlay).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
from dataclasses import asdict, dataclass

from .. import errors
from ..errors import ContainerError
from ..store import read
from ..store.checkout import remove_tree
from . import overlay

MARKER = "layerstore.json"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]


def default_spec() -> dict:
    """`runc spec` of runc 1.1 (spec 1.0.2), the defaults every bundle starts from."""
    return {
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": True,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": [DEFAULT_PATH, "TERM=xterm"],
            "cwd": "/",
            "capabilities": {k: list(_CAPS) for k in
                             ("bounding", "effective", "permitted", "ambient")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "runc",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                         "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                            "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                            "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                              "/proc/sysrq-trigger"],
        },
    }


def to_rootless(spec: dict, uid: int, gid: int) -> None:
    """runc's specconv.ToRootless: a user namespace mapping uid and gid to 0, no network
    namespace, /sys bound read-only from the host, no uid=/gid= mount options, no cgroup
    resources."""
    linux = spec["linux"]
    linux["namespaces"] = [ns for ns in linux["namespaces"]
                           if ns["type"] not in ("network", "user")] + [{"type": "user"}]
    linux["uidMappings"] = [{"containerID": 0, "hostID": uid, "size": 1}]
    linux["gidMappings"] = [{"containerID": 0, "hostID": gid, "size": 1}]
    mounts = []
    for m in spec["mounts"]:
        if os.path.normpath(m["destination"]) == "/sys":
            mounts.append({"destination": "/sys", "type": "none", "source": "/sys",
                           "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]})
            continue
        if "options" in m:
            m = {**m, "options": [o for o in m["options"]
                                  if not o.startswith(("uid=", "gid="))]}
        mounts.append(m)
    spec["mounts"] = mounts
    linux.pop("resources", None)


# ---- users, as runc's libcontainer/user resolves them --------------------------------------

def _rows(data: bytes | None, fields: int) -> list[list[str]]:
    out = []
    for line in (data or b"").decode("utf-8", "replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        out.append((parts + [""] * fields)[:fields])
    return out


def _number(s: str) -> int | None:
    return int(s) if s.isdigit() and int(s) < 2**31 else None


def resolve_user(spec: str, passwd: bytes | None, group: bytes | None,
                 image: str = "") -> tuple[int, int, list[int], str]:
    """(uid, gid, supplementary gids, home) of spec ("", "user", "uid", "user:group",
    "uid:gid", ...) in the image's passwd and group files (None: absent), as runc's
    GetExecUser with umoci's defaults (uid 0, gid 0, HOME "/")."""
    user_arg, _, group_arg = (spec or "").partition(":")
    uid, gid, home, name = 0, 0, "/", None
    users = _rows(passwd, 7)
    want = _number(user_arg)
    for u in users:
        u_uid = _number(u[2])
        if (u_uid == 0 if not user_arg else u_uid == want if want is not None
                else u[0] == user_arg):
            name, uid, gid, home = u[0], u_uid or 0, _number(u[3]) or 0, u[5]
            break
    else:
        if user_arg:
            if want is None:
                raise ContainerError(f"user {user_arg!r} is not in the image{image}'s "
                                     "/etc/passwd")
            uid = want
    sgids: list[int] = []
    if group_arg or name is not None:
        groups = _rows(group, 4)
        if group_arg:
            match = [g for g in groups if group_arg in (g[0], g[2])]
            if match:
                gid = _number(match[0][2]) or 0
            elif _number(group_arg) is not None:
                gid = _number(group_arg)
            else:
                raise ContainerError(f"group {group_arg!r} is not in the image{image}'s "
                                     "/etc/group")
        else:
            sgids = [_number(g[2]) or 0 for g in groups if name in g[3].split(",")]
    return uid, gid, sgids, home


def _set_env(env: list[str], item: str) -> None:
    key = item.split("=", 1)[0]
    for i, old in enumerate(env):
        if old.split("=", 1)[0] == key:
            env[i] = item
            return
    env.append(item)


def spec_for(config: dict, passwd: bytes | None, group: bytes | None, *, command=(),
             env=(), workdir: str | None = None, user: str | None = None,
             read_only: bool = False, rootless: bool = False, terminal: bool = True,
             hostname: str = "layerstore", image: str = "") -> dict:
    """config.json for an image config (the whole config document), as umoci unpack writes
    it, with `docker run`'s overrides: command replaces Cmd (Entrypoint stays), env items
    (K=V) are set after the image's, workdir and user replace the image's."""
    c = config.get("config") or {}
    args = list(c.get("Entrypoint") or []) + list(command or c.get("Cmd") or [])
    if not args:
        raise ContainerError(f"the image{image} has no command (no Entrypoint or Cmd): "
                             "give one")
    spec = default_spec()
    proc = spec["process"]
    proc["terminal"] = terminal
    proc["args"] = args
    penv = proc["env"]
    for item in list(c.get("Env") or []) + list(env):
        _set_env(penv, item)
    uid, gid, sgids, home = resolve_user(user if user is not None else c.get("User") or "",
                                         passwd, group, image)
    proc["user"] = {"uid": uid, "gid": gid}
    if sgids:
        proc["user"]["additionalGids"] = sgids
    if home and not any(e.startswith("HOME=") for e in penv):
        penv.append("HOME=" + home)
    proc["cwd"] = workdir or c.get("WorkingDir") or "/"
    spec["root"] = {"path": "rootfs", "readonly": bool(read_only)}
    spec["hostname"] = hostname
    for vol in sorted(c.get("Volumes") or {}):
        spec["mounts"].append({"destination": vol, "type": "tmpfs", "source": "none",
                               "options": ["rw", "nosuid", "nodev", "noexec", "relatime"]})
    notes = dict(c.get("Labels") or {})
    for key, value in (("architecture", config.get("architecture")),
                       ("os", config.get("os")), ("created", config.get("created")),
                       ("author", config.get("author")),
                       ("stopSignal", c.get("StopSignal")),
                       ("exposedPorts", ",".join(sorted(c.get("ExposedPorts") or {})))):
        if value:
            notes["org.opencontainers.image." + key] = value
    if notes:
        spec["annotations"] = notes
    if rootless:
        to_rootless(spec, os.geteuid(), os.getegid())
    return spec


# ---- bundles ----------------------------------------------------------------------------------

def _rootfs_file(rootfs: str, path: str) -> bytes | None | bool:
    """A file of a made rootfs, read only where no component is a symlink (which would have
    to be resolved inside the image root): its bytes, None when absent, False when the
    image's tree must answer."""
    parts = path.split("/")
    cur = rootfs
    for i, part in enumerate(parts):
        cur = os.path.join(cur, part)
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            return None
        except OSError:
            return False
        if stat.S_ISLNK(st.st_mode):
            return False
        if i < len(parts) - 1 and not stat.S_ISDIR(st.st_mode):
            return None
    if not stat.S_ISREG(st.st_mode):
        return None
    try:
        fd = os.open(cur, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        return f.read(1 << 22)


def _image_files(store, image_id: str, rootfs: str | None, paths) -> list[bytes | None]:
    """The image's files at paths (None: absent): from rootfs when it is made (a mount or a
    checkout of the image; no tree to build), else, or behind a symlink, from the store."""
    out = [_rootfs_file(rootfs, p) if rootfs is not None else False for p in paths]
    if any(got is False for got in out):
        ctx = store._ctx
        tree = ctx.tree(image_id)
        for i, p in enumerate(paths):
            if out[i] is False:
                try:
                    with read.open_file(tree, p, ctx.object_path) as f:
                        out[i] = f.read(1 << 22)
                except (errors.PathNotFound, errors.NotADirectory, errors.IsADirectory,
                        errors.NotAFile, errors.SymlinkLoop):
                    out[i] = None
    return out


def image_spec(store, ref: str, rootfs: str | None = None, **kw) -> tuple[str, dict]:
    """(image id, config.json) for the image ref names, users looked up in rootfs when it
    is made.  ContainerError when the command or the user cannot be had."""
    image = store.image(ref)
    passwd, group = _image_files(store, image.id, rootfs, ("etc/passwd", "etc/group"))
    return image.id, spec_for(store.config(image.id), passwd, group, image=f" {ref}", **kw)


def overlay_usable() -> bool:
    """Whether rootfs can be an overlay mount here (overlay.mount's own test, plus the
    kernel's filesystem list)."""
    if os.geteuid() != 0:
        return shutil.which("fuse-overlayfs") is not None
    try:
        with open("/proc/filesystems") as f:
            return "overlay" in f.read().split()
    except OSError:
        return False


def _write_json(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent="\t")
        f.write("\n")
    os.replace(tmp, path)


def make_bundle(store, ref: str, bundle: str, cid: str | None = None, **kw) -> dict:
    """Makes bundle (absent or empty) an OCI runtime bundle of the image; returns its marker
    {id, image, rootfs: "overlay" | "checkout"}.  Nothing is left when it fails."""
    image_id = store.image(ref).id
    config = store.config(image_id)
    # The command first: an image without one is refused before anything is made.  The user
    # is looked up in the made rootfs (no tree to build), which is undone if it is not there.
    spec_for(config, None, None, image=f" {ref}", **{**kw, "user": "0"})
    bundle = os.path.abspath(bundle)
    made = False
    try:
        os.makedirs(bundle, mode=0o755)
        made = True
    except FileExistsError:
        if not os.path.isdir(bundle) or os.listdir(bundle):
            raise ContainerError(f"bundle: {bundle} exists and is not an empty directory") \
                from None
    except OSError as exc:
        raise errors.host_path_error(exc, bundle, "make the bundle") from None
    cid = cid or secrets.token_hex(16)
    rootfs = os.path.join(bundle, "rootfs")
    marker = {"id": cid, "image": image_id,
              "rootfs": "overlay" if overlay_usable() else "checkout"}
    try:
        if marker["rootfs"] == "overlay":
            with store._lock.shared():
                overlay.mount(store._ctx, store._ctx.image(image_id), rootfs, cid=cid)
        else:
            store.checkout(image_id, rootfs)
        _write_json(os.path.join(bundle, MARKER), marker)
        _, spec = image_spec(store, ref, rootfs, **kw)
        _write_json(os.path.join(bundle, "config.json"), spec)
    except BaseException:
        _free(store.root, bundle, marker)
        if made:
            os.rmdir(bundle)
        raise
    return marker


def _free(root: str, bundle: str, marker: dict) -> None:
    rootfs = os.path.join(bundle, "rootfs")
    if marker["rootfs"] == "overlay" and os.path.ismount(rootfs):
        overlay.umount(root, rootfs)
    if os.path.lexists(rootfs):
        remove_tree(rootfs)
    for name in ("config.json", "run.json", MARKER):
        try:
            os.unlink(os.path.join(bundle, name))
        except FileNotFoundError:
            pass


def remove_bundle(root: str, bundle: str) -> dict:
    """Unmounts (or deletes) a bundle's rootfs and removes the bundle dir; only a bundle
    layerstore made (its marker names it)."""
    bundle = os.path.abspath(bundle)
    try:
        with open(os.path.join(bundle, MARKER)) as f:
            marker = json.load(f)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        raise ContainerError(f"bundle --remove: {bundle} is not a bundle layerstore made "
                             f"(no {MARKER})") from None
    _free(root, bundle, marker)
    try:
        os.rmdir(bundle)
    except OSError:
        pass    # the user's other files stay
    return marker


# ---- containers -------------------------------------------------------------------------------

@dataclass
class Run:
    id: str
    name: str
    image: str
    bundle: str
    pid: int            # the `layerstore run` that supervises it
    runtime: str
    created: str
    status: str         # "running" or "exited"
    exit_code: int | None = None


def _runs_dir(root: str) -> str:
    return os.path.join(root, "runs")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def runs(root: str) -> list[Run]:
    """Every recorded container; one whose supervisor is gone without saying so (killed)
    shows as exited."""
    out = []
    try:
        names = sorted(os.listdir(_runs_dir(root)))
    except FileNotFoundError:
        return out
    for name in names:
        try:
            with open(os.path.join(_runs_dir(root), name, "run.json")) as f:
                r = Run(**json.load(f))
        except (FileNotFoundError, NotADirectoryError, ValueError, TypeError):
            continue
        if r.status == "running" and not _alive(r.pid):
            r.status = "exited"
        out.append(r)
    return out


def find_runtime(choice: str | None) -> str:
    """The runtime binary: choice (runc, crun or a path), else runc, else crun on PATH."""
    if choice:
        path = shutil.which(choice)
        if path is None:
            raise ContainerError(f"OCI runtime {choice!r} not found (not on PATH and not an "
                                 "executable file)")
        return path
    for name in ("runc", "crun"):
        path = shutil.which(name)
        if path is not None:
            return path
    raise ContainerError("no OCI runtime: install runc or crun, or give --runtime PATH")


class Runs:
    """Run containers as rm and gc see them (store/lifecycle.py: Runtime).  rm refuses an
    image a recorded container uses unless forced (the container keeps running on its own
    mount; gc keeps its layer dirs through its overlay record)."""

    yields_to_force = True

    def __init__(self, root: str) -> None:
        self.root = root

    def mounted_at(self, image_id: str) -> str | None:
        for r in runs(self.root):
            if r.image == image_id:
                return f"container {r.name} ({r.status}, bundle {r.bundle})"
        return None

    def unused_dirs(self, txn) -> list[str]:
        return []

    def dangling_links(self) -> list[str]:
        return []


_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
              signal.SIGUSR2, signal.SIGWINCH)


def run(store, ref: str, command=(), *, name: str | None = None, remove: bool = False,
        env=(), workdir: str | None = None, user: str | None = None, read_only: bool = False,
        runtime: str | None = None, started=None) -> int:
    """See Store.run."""
    root = store.root
    binary = find_runtime(runtime)
    cid = secrets.token_hex(16)
    name = name or cid[:12]
    if any(r.name == name for r in runs(root)):
        raise ContainerError(f"the container name {name!r} is in use")
    terminal = os.isatty(0)
    bundle = os.path.join(_runs_dir(root), cid)
    os.makedirs(_runs_dir(root), mode=0o700, exist_ok=True)
    marker = make_bundle(store, ref, bundle, cid=cid, command=command, env=env,
                         workdir=workdir, user=user, read_only=read_only,
                         rootless=os.geteuid() != 0, terminal=terminal, hostname=name[:63])
    record = Run(cid, name, marker["image"], bundle, os.getpid(), binary,
                 overlay._now(), "running")
    _write_json(os.path.join(bundle, "run.json"), asdict(record))
    state = os.path.join(root, "runc")
    os.makedirs(state, mode=0o700, exist_ok=True)
    old = {}
    try:
        proc = subprocess.Popen([binary, "--root", state, "run", "--bundle", bundle, cid])
        for sig in _FORWARDED:
            old[sig] = signal.signal(sig, lambda s, _f: proc.send_signal(s))
        if started is not None:
            started(record)
        code = proc.wait()
    except BaseException:
        # Interrupted before runc could be waited for: stop the container, leave nothing.
        subprocess.run([binary, "--root", state, "kill", cid, "KILL"], capture_output=True)
        _cleanup(root, binary, state, bundle, cid)
        raise
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if code < 0:
        code = 128 - code   # runc itself killed by a signal, as a shell reports it
    if remove:
        _cleanup(root, binary, state, bundle, cid)
    else:
        subprocess.run([binary, "--root", state, "delete", "--force", cid],
                       capture_output=True)
        record.status, record.exit_code = "exited", code
        _write_json(os.path.join(bundle, "run.json"), asdict(record))
    return code


def _cleanup(root: str, binary: str, state: str, bundle: str, cid: str) -> None:
    subprocess.run([binary, "--root", state, "delete", "--force", cid], capture_output=True)
    remove_container(root, bundle)


def remove_container(root: str, bundle: str) -> None:
    """Unmounts a container's rootfs and deletes its bundle, upper dir and record."""
    marker_path = os.path.join(bundle, MARKER)
    if os.path.exists(marker_path):
        remove_bundle(root, bundle)
    if os.path.lexists(bundle):
        remove_tree(bundle)


