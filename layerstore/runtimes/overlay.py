"""Containers on overlayfs: per-layer lower directories, mounts, and commit of an upper dir.

Lower directories.  Each layer is made real once, from the object store by hardlinks, under
root/layers/<diffID hex> and shared by every mount of every image that has the layer: N
containers of one image cost N upper dirs and N mounts, not N checkouts.  A layer dir is built
in a temporary directory beside its final place and renamed there, so a reader sees a whole
layer dir or none, and two processes building one layer at once both succeed (one rename
wins).  Whiteouts take overlay's form (".wh.NAME" -> a 0/0 character device NAME,
".wh..wh..opq" -> xattr trusted.overlay.opaque=y on the directory).  A layer whose hardlinks
point into a lower layer (Docker and containerd allow it) cannot be built from the layer
alone, so it is keyed by its chainID instead: its content then depends on its parents.
A layer's paths are resolved inside the layer itself, as Docker's overlay2 driver does: a
path through a symlink of a lower layer is a real directory in this layer, so where an image
relies on that, the mount differs from `checkout` (which follows the symlink).

Mounting uses mount(2) through the C core: one system call, no fork and exec of mount(8) (the
target for a second container is well under 50 ms), and errno comes back directly so the
error can say what is wrong.  Overlay takes its options in one page (4096 bytes); when the
absolute lower paths do not fit, short symlinks root/l/<20 hex> name the layer dirs and
mount(8) runs with the store root as its working directory, so the options hold
"l/<20 hex>" per layer (as containers/storage does with its re-exec'd "mountfrom" child).
A child process does this rather than os.chdir, since the working directory is the whole
process's and a Store may be shared by threads.

Without root, the kernel will not mount overlayfs here: fuse-overlayfs is used when it is on
PATH (its layer dirs keep whiteouts as ".wh." files, which it understands, since mknod of a
0/0 device needs root), otherwise the error says that mount needs root.

Commit writes the upper dir as a layer tar (tarfile, PAX where needed, names sorted, whole-
second mtimes, so one upper dir always gives one diffID) into root/tmp, imports it as a layer
and adds an image whose config is the base's plus that diffID and a history entry.

Each mount records itself in root/containers/<id>/container.json, so umount and commit find
it by mountpoint or upper dir.  The upper and work dirs live in that directory unless the user
gives an upper dir; then the work dir sits beside it (overlay needs both on one filesystem)
and the upper dir is kept on umount, so it can still be committed.

Overlay is a Runtime to store/lifecycle.py: rm keeps the image of a mounted container, and gc
removes the layer dirs that no stored layer and no container needs.  The Store facade takes
the store lock around mount (shared, while layer dirs are built) and commit (an import).
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import os
import secrets
import shutil
import stat
import subprocess
import tarfile
import tempfile
import threading
from dataclasses import asdict

from .. import _native, errors
from .._model import EntryType, Image, Layer, Mount
from ..errors import MountError
from ..store import pipeline
from ..store.checkout import checkout, plan, remove_tree
from ..store.context import Context
from ..store.index import ImageRecord
from ..store.tree import OPAQUE, WHITEOUT, Tree, build

OPAQUE_XATTR = "trusted.overlay.opaque"
# Overlay's own bookkeeping (and fuse-overlayfs's): never part of a committed layer.
_OPAQUE_XATTRS = (OPAQUE_XATTR, "user.overlay.opaque", "user.fuseoverlayfs.opaque")
_SHORT = 20     # hex digits of a layer's short link name


def _err(message: str, code: int | None = None) -> MountError:
    # One argument keeps str(exc) the message (OSError(msg, code) would print "[Errno ...]").
    exc = MountError(message)
    exc.errno = code
    return exc


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _hex(digest: str) -> str:
    return digest.split(":", 1)[-1]


def chain_ids(diff_ids) -> list[str]:
    out: list[str] = []
    for d in diff_ids:
        out.append(d if not out else
                   "sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


def _kernel_mode() -> bool:
    return os.geteuid() == 0


# ---- layer directories -----------------------------------------------------------------------

class _LayerTree(Tree):
    """One layer's entries alone; a hardlink whose target is not in the layer is looked up
    in the image's lower layers (then the layer dir is keyed by chainID)."""

    def __init__(self, lower) -> None:
        super().__init__()
        self._lower_fn = lower
        self._lower: Tree | None = None
        self.used_lower = False

    def lookup(self, path: str):
        node = super().lookup(path)
        if node is None:
            if self._lower is None:
                self._lower = self._lower_fn()
            node = self._lower.lookup(path)
            if node is not None:
                self.used_lower = True
        return node


def _layer_tree(entries, lower) -> tuple[_LayerTree, list[str], list[str]]:
    """The layer's tree plus its whiteouts and opaque dirs, as real paths in the layer.
    Lookups here use Tree.lookup: this layer alone, never the lower fallback."""
    tree = _LayerTree(lower)
    whiteouts, opaques = [], []
    for e in entries:
        head, _, name = e.path.rpartition("/")
        if not name.startswith(WHITEOUT):
            tree.apply(0, [e])
            continue
        try:
            parent, real = tree.parent(head.split("/") if head else [], 0, e.path)
        except errors.CorruptArchive:
            continue    # under a non-directory of this layer: it hides nothing here
        if name == OPAQUE:
            opaques.append("/".join(real) or ".")
        else:
            whiteouts.append("/".join(real + [name[len(WHITEOUT):]]))
    # The spec: a whiteout applies to lower layers only, so an entry of the same layer at
    # that name stays (and hides the lower one by itself).
    whiteouts = [p for p in dict.fromkeys(whiteouts) if Tree.lookup(tree, p) is None]
    opaques = [p for p in dict.fromkeys(opaques)
               if (n := Tree.lookup(tree, p)) is not None and n.entry.type is EntryType.DIR]
    return tree, whiteouts, opaques


def _build_layer(ctx: Context, entries, lower, tmp: str, kernel: bool) -> bool:
    """Makes tmp the layer dir.  Returns whether it needed lower layers (chainID keying)."""
    tree, whiteouts, opaques = _layer_tree(entries, lower)
    checkout(plan(tree), tmp, ctx.objects_dir, link=True)
    touched = set()
    for p in whiteouts:
        path = os.path.join(tmp, p)
        if kernel:
            os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        else:
            head, _, name = p.rpartition("/")
            fd = os.open(os.path.join(tmp, head, WHITEOUT + name),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o000)
            os.close(fd)
        touched.add(p.rpartition("/")[0] or ".")
    for p in opaques:
        path = os.path.join(tmp, p)
        if kernel:
            os.setxattr(path, OPAQUE_XATTR, b"y", follow_symlinks=False)
        else:
            os.close(os.open(os.path.join(path, OPAQUE),
                             os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o000))
            touched.add(p)
    for p in touched:   # making the whiteouts moved their directories' mtimes
        node = Tree.lookup(tree, p)
        ns = node.inode.entry.mtime_ns
        os.utime(os.path.join(tmp, p), ns=(ns, ns), follow_symlinks=False)
    return tree.used_lower


def layer_dirs(ctx: Context, diff_ids, kernel: bool = True) -> list[str]:
    """The layer dirs of an image, bottom layer first; builds those not yet cached."""
    base = os.path.join(ctx.root, "layers" if kernel else "layers-fuse")
    if not diff_ids:
        empty = os.path.join(base, "empty")
        os.makedirs(empty, mode=0o755, exist_ok=True)
        return [empty]
    chains = chain_ids(diff_ids)
    out = []
    for i, diff_id in enumerate(diff_ids):
        by_diff = os.path.join(base, _hex(diff_id))
        by_chain = os.path.join(base, "chain-" + _hex(chains[i]))
        if os.path.isdir(by_diff):
            out.append(by_diff)
            continue
        if os.path.isdir(by_chain):
            out.append(by_chain)
            continue
        os.makedirs(base, mode=0o700, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=base)
        os.rmdir(tmp)       # checkout makes it
        try:
            entries = ctx.layer_entries(diff_id)
            lower = lambda i=i: build(ctx.layer_entries(d) for d in diff_ids[:i])  # noqa: E731
            final = by_chain if _build_layer(ctx, entries, lower, tmp, kernel) else by_diff
            try:
                os.rename(tmp, final)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                remove_tree(tmp)    # another process built it first: theirs is as good
        except BaseException:
            if os.path.lexists(tmp):
                remove_tree(tmp)
            raise
        out.append(final)
    return out


def _short_link(root: str, layer_dir: str) -> str:
    """root/l/<20 hex> -> the layer dir; returns the path relative to the store root."""
    name = os.path.basename(layer_dir).removeprefix("chain-")[:_SHORT]
    rel = os.path.join("l", name)
    target = os.path.relpath(layer_dir, os.path.join(root, "l"))
    link = os.path.join(root, rel)
    os.makedirs(os.path.dirname(link), mode=0o700, exist_ok=True)
    try:
        os.symlink(target, link)
    except FileExistsError:
        if os.readlink(link) != target:
            raise _err(f"short layer link {link} points to {os.readlink(link)}, not "
                       f"{target}") from None
    return rel


# ---- mount(2) ---------------------------------------------------------------------------------

def _escape(path: str) -> str:
    # overlay splits its options at "," and lowerdir at ":"; a backslash escapes either.
    return path.replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


def _extra_options() -> list[str]:
    """Turned off where the kernel has them: index and redirect_dir would record lower
    dirs' identities and renames in the upper dir (commit reads the upper dir as a plain
    changeset, as Docker's overlay2 does), metacopy would leave data-less copies there."""
    params = "/sys/module/overlay/parameters"
    return [f"{p}=off" for p in ("index", "redirect_dir", "metacopy")
            if os.path.exists(os.path.join(params, p))]


def _mount_error(code: int, target: str, detail: str = "") -> MountError:
    if code in (errno.EPERM, errno.EACCES):
        return _err(f"mount needs root (CAP_SYS_ADMIN): mounting {target} was refused",
                    code)
    if code == errno.ENODEV:
        return _err("mount needs the overlay filesystem, which this kernel does not "
                    "have (try: modprobe overlay)", code)
    if code == errno.EINVAL:
        return _err(f"mount {target}: overlay rejected the mount (upper and work dir "
                    "must be on one filesystem that can hold an overlay upper dir; the "
                    f"kernel log says more){detail}", code)
    return _err(f"mount {target}: {os.strerror(code)}{detail}", code)


def _ensure_overlay_fs() -> None:
    try:
        with open("/proc/filesystems") as f:
            if any(line.split()[-1:] == ["overlay"] for line in f):
                return
    except OSError:
        return
    subprocess.run(["modprobe", "overlay"], check=False, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def _kernel_mount(root: str, lowers: list[str], upper: str, work: str, target: str) -> None:
    tail = [f"upperdir={_escape(upper)}", f"workdir={_escape(work)}", *_extra_options()]
    opts = ",".join(["lowerdir=" + ":".join(_escape(p) for p in reversed(lowers)), *tail])
    page = os.sysconf("SC_PAGE_SIZE")
    if len(opts) < page:
        code = _native.overlay_mount(target, opts)
        if code == errno.ENODEV:
            _ensure_overlay_fs()
            code = _native.overlay_mount(target, opts)
        if code:
            raise _mount_error(code, target)
        return
    rel = [_short_link(root, p) for p in reversed(lowers)]
    opts = ",".join(["lowerdir=" + ":".join(rel), *tail])
    if len(opts) >= page:
        raise _err(f"mount {target}: the image has {len(lowers)} layers, too many for "
                   f"overlay's mount options ({len(opts)} bytes of at most {page - 1})")
    if shutil.which("mount") is None:
        raise _err(f"mount {target}: the image has {len(lowers)} layers, which needs "
                   "mount(8) (util-linux) to mount from the store root")
    r = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, target],
                       cwd=root, capture_output=True, text=True)
    if r.returncode != 0:
        msg = (r.stderr.strip().splitlines() or [""])[-1]
        code = errno.EPERM if "permission denied" in msg.lower() or "only root" in msg else None
        if code is not None:
            raise _mount_error(code, target)
        raise _err(f"mount {target}: {msg or 'mount(8) failed'}")


def _fuse_mount(lowers: list[str], upper: str, work: str, target: str) -> None:
    opts = (f"lowerdir={':'.join(_escape(p) for p in reversed(lowers))},"
            f"upperdir={_escape(upper)},workdir={_escape(work)}")
    r = subprocess.run(["fuse-overlayfs", "-o", opts, target], capture_output=True, text=True)
    if r.returncode != 0:
        msg = (r.stderr.strip().splitlines() or ["failed"])[-1]
        raise _err(f"mount {target}: fuse-overlayfs: {msg}")


def _unmount(m: Mount) -> None:
    target = m.mountpoint
    if m.kind == "fuse-overlayfs" and os.geteuid() != 0:
        tool = shutil.which("fusermount3") or shutil.which("fusermount")
        if tool is None:
            raise _err(f"umount {target}: neither fusermount3 nor fusermount is on PATH")
        r = subprocess.run([tool, "-u", target], capture_output=True, text=True)
        if r.returncode != 0 and os.path.ismount(target):
            msg = (r.stderr.strip().splitlines() or ["failed"])[-1]
            raise _err(f"umount {target}: {msg}")
        return
    code = _native.overlay_unmount(target)
    if code:
        if code == errno.EINVAL and not os.path.ismount(target):
            return      # already unmounted by someone else: just forget it
        if code == errno.EBUSY:
            raise _err(f"umount {target}: the mount is busy (a process has a file or "
                       "its working directory in it)", code)
        if code == errno.EPERM:
            raise _err(f"umount {target}: umount needs root (CAP_SYS_ADMIN)", code)
        raise _err(f"umount {target}: {os.strerror(code)}", code)


# ---- containers -------------------------------------------------------------------------------

def _containers(root: str) -> str:
    return os.path.join(root, "containers")


def _load(path: str) -> Mount:
    with open(path) as f:
        d = json.load(f)
    d["diff_ids"], d["lowers"] = tuple(d["diff_ids"]), tuple(d["lowers"])
    return Mount(**d)


def mounts(root: str) -> list[Mount]:
    """Every container recorded in the store at root (mounted, or kept in a user's upper
    dir)."""
    base = _containers(root)
    out = []
    try:
        names = sorted(os.listdir(base))
    except FileNotFoundError:
        return out
    for name in names:
        path = os.path.join(base, name, "container.json")
        try:
            out.append(_load(path))
        except (FileNotFoundError, NotADirectoryError):
            continue
    return out


def _save(root: str, m: Mount) -> None:
    d = os.path.join(_containers(root), m.id)
    tmp = os.path.join(d, ".container.json.tmp")
    with open(tmp, "w") as f:
        json.dump(asdict(m), f, indent=1)
    os.replace(tmp, os.path.join(d, "container.json"))


def find(root: str, path: str) -> Mount | None:
    """The container whose mountpoint, else whose upper dir, path is."""
    real = os.path.realpath(path)
    for m in mounts(root):
        if m.mountpoint == real:
            return m
    for m in mounts(root):
        if m.upper == real:
            return m
    return None


def mount(ctx: Context, image: ImageRecord, mountpoint, upper=None,
          cid: str | None = None) -> Mount:
    """See Store.mount; the caller holds the store lock shared.  cid: the container's id (a
    `run` container's mount carries its id), else a new one."""
    root = ctx.root
    kernel = _kernel_mode()
    if not kernel and shutil.which("fuse-overlayfs") is None:
        raise _err("mount needs root (or fuse-overlayfs on PATH for a mount without root)",
                   errno.EPERM)
    target = os.path.abspath(os.fspath(mountpoint))
    made_target = False
    try:
        os.mkdir(target, 0o755)
        made_target = True
    except FileExistsError:
        if not os.path.isdir(target):
            raise _err(f"mount: {target} exists and is not a directory") from None
    except OSError as exc:
        raise errors.host_path_error(exc, target, "make the mount point") from None
    target = os.path.realpath(target)
    if os.path.ismount(target):
        raise _err(f"mount: {target} is already a mount point")
    for old in mounts(root):
        if old.mountpoint == target:
            _forget(root, old)      # its mount is gone (a reboot, a manual umount)
    try:
        return _mount(ctx, image, target, upper, kernel, cid)
    except BaseException:
        if made_target:
            os.rmdir(target)
        raise


def _mount(ctx: Context, image: ImageRecord, target: str, upper, kernel: bool,
           cid: str | None) -> Mount:
    root = ctx.root
    lowers = layer_dirs(ctx, image.diff_ids, kernel)
    cid = cid or secrets.token_hex(16)
    cdir = os.path.join(_containers(root), cid)
    os.makedirs(cdir, mode=0o700)
    try:
        if upper is None:
            up, work = os.path.join(cdir, "upper"), os.path.join(cdir, "work")
            os.mkdir(up, 0o755)
            os.mkdir(work, 0o700)
        else:
            up = os.path.realpath(os.fspath(upper))
            old = find(root, up)
            if old is not None and old.upper == up:
                if old.mountpoint is not None and os.path.ismount(old.mountpoint):
                    raise _err(f"mount: upper dir {up} is in use by the mount at "
                               f"{old.mountpoint}")
                remove_tree(os.path.dirname(_record(root, old)))    # re-mounted: one record
            try:
                os.makedirs(up, mode=0o755, exist_ok=True)
            except OSError as exc:
                raise errors.host_path_error(exc, upper, "make the upper dir") from None
            parent, name = os.path.split(up)
            work = os.path.join(parent, f".{name}.work")
            if os.path.lexists(work):
                remove_tree(work)
            os.mkdir(work, 0o700)
        if not os.listdir(up):
            # The merged root shows the upper dir's metadata: make it the image's.
            st = os.stat(lowers[-1])
            if kernel:
                os.chown(up, st.st_uid, st.st_gid)
            os.chmod(up, stat.S_IMODE(st.st_mode))
        m = Mount(cid, image.id, tuple(image.diff_ids), target, up, work,
                  tuple(reversed(lowers)), "overlay" if kernel else "fuse-overlayfs",
                  upper is None, _now())
        _save(root, m)
        if kernel:
            _kernel_mount(root, lowers, up, work, target)
        else:
            _fuse_mount(lowers, up, work, target)
    except BaseException:
        if upper is not None and "work" in locals() and os.path.lexists(work):
            remove_tree(work)
        remove_tree(cdir)
        raise
    return m


def _record(root: str, m: Mount) -> str:
    return os.path.join(_containers(root), m.id, "container.json")


def umount(root: str, mountpoint) -> Mount:
    """See Store.umount."""
    target = os.path.realpath(os.fspath(mountpoint))
    m = next((m for m in mounts(root) if m.mountpoint == target), None)
    if m is None:
        raise _err(f"umount: {target} is not a layerstore mount")
    _unmount(m)
    return _forget(root, m)


def _forget(root: str, m: Mount) -> Mount:
    """After its mount is gone: a container in the store goes entirely; one in a user's
    upper dir keeps its record (mountpoint None), so the upper dir stays committable."""
    if m.own_upper:
        remove_tree(os.path.join(_containers(root), m.id))
        return m
    if os.path.lexists(m.work):
        remove_tree(m.work)
    m = Mount(**{**asdict(m), "mountpoint": None})
    _save(root, m)
    return m


class Overlay:
    """The overlay runtime as rm and gc see it (store/lifecycle.py: Runtime)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def mounted_at(self, image_id: str) -> str | None:
        """A `run` container's mount (root/runs/<id>/ holds its record) is runtimes/oci.py's
        to answer for: rm may be forced past it."""
        root = self.ctx.root
        return next((m.mountpoint for m in mounts(root)
                     if m.image == image_id and m.mountpoint is not None
                     and not os.path.isdir(os.path.join(root, "runs", m.id))), None)

    def unused_dirs(self, txn) -> list[str]:
        """Cached layer dirs (root/layers/, root/layers-fuse/) that no stored layer and no
        recorded container needs: named by a diffID no longer indexed, or by a chainID no
        stored image or pin has, or half-built (.tmp-*: no build runs while gc holds the lock
        exclusively)."""
        index = self.ctx.index
        keep = {_hex(r.diff_id) for r in index.layers(txn)}
        chains = [r.diff_ids for r in index.images(txn)] + list(index.pins(txn).values())
        keep |= {"chain-" + _hex(c) for diff_ids in chains for c in chain_ids(diff_ids)}
        keep.add("empty")
        used = {p for m in mounts(self.ctx.root) for p in m.lowers}
        out = []
        for base in ("layers", "layers-fuse"):
            d = os.path.join(self.ctx.root, base)
            try:
                names = os.listdir(d)
            except FileNotFoundError:
                continue
            for name in names:
                path = os.path.join(d, name)
                if name not in keep and path not in used:
                    out.append(path)
        return out

    def dangling_links(self) -> list[str]:
        """Short links root/l/* whose layer dirs are gone."""
        d = os.path.join(self.ctx.root, "l")
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return []
        return [os.path.join(d, n) for n in names if not os.path.exists(os.path.join(d, n))]


# ---- commit ----------------------------------------------------------------------------------

def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _xattrs(path: str) -> list[tuple[str, bytes]]:
    """What commit records of a file's xattrs: those a checkout would set again (the rule of
    ls_xattr_applies), so neither overlayfs's own nor this host's security labels."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []
    out = []
    owners = os.geteuid() == 0
    for name in sorted(names):
        if not _native.xattr_applies(name, owners):
            continue
        try:
            out.append((name, os.getxattr(path, name, follow_symlinks=False)))
        except OSError:
            continue
    return out


def _opaque(path: str) -> bool:
    for name in _OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


def _info(name: str, st: os.stat_result) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.mode = stat.S_IMODE(st.st_mode)
    ti.uid, ti.gid = st.st_uid, st.st_gid
    ti.mtime = int(st.st_mtime)     # whole seconds: a deterministic header, as Docker writes
    ti.uname = ti.gname = ""
    return ti


def _open_listed(path: str, st: os.stat_result):
    """The regular file the directory listing saw at path.  A running container may have
    replaced it since with a symlink to a host file, which this (root) process must not
    read into a layer."""
    changed = errors.LayerstoreError(f"{path} changed while its layer was written: commit "
                                     "a stopped container")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise changed from None
        raise
    now = os.fstat(fd)
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        raise changed
    return open(fd, "rb")


def write_changeset(upper: str, out) -> int:
    """Writes the upper dir as a layer tar: overlay whiteouts become ".wh.NAME", opaque dirs
    get "DIR/.wh..wh..opq", hardlinks within the upper dir stay hardlinks.  Each directory's
    opaque marker comes first, then its whiteouts, then its entries, names sorted (the OCI
    spec asks whiteouts before their siblings).  Returns the number of entries."""
    count = 0
    seen: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tf:
        def add(ti, f=None):
            nonlocal count
            tf.addfile(ti, f)
            count += 1

        def walk(dirpath: str, rel: str) -> None:
            with os.scandir(dirpath) as it:
                items = sorted(((e.name, e.stat(follow_symlinks=False)) for e in it))
            # Kernel overlay marks whiteouts with 0/0 devices and opaque dirs with an xattr;
            # fuse-overlayfs falls back to ".wh." files where it may not do that.  Both
            # forms become one marker each.
            opaque = bool(rel) and _opaque(dirpath)
            gone = set()
            for name, st in items:
                marker = _is_whiteout(st) or (stat.S_ISREG(st.st_mode) and
                                              name.startswith(WHITEOUT))
                if not marker:
                    continue
                target = name[len(WHITEOUT):] if not _is_whiteout(st) else name
                if name == OPAQUE or target.startswith(WHITEOUT):
                    opaque = opaque or bool(rel)
                else:
                    gone.add(target)
            if opaque:
                ti = tarfile.TarInfo(f"{rel}/{OPAQUE}")
                ti.mode = 0
                ti.mtime = int(os.lstat(dirpath).st_mtime)
                add(ti)
            for name in sorted(gone):
                ti = tarfile.TarInfo(f"{rel}/{WHITEOUT}{name}" if rel else WHITEOUT + name)
                ti.mode = 0
                add(ti)
            for name, st in items:
                if _is_whiteout(st) or (stat.S_ISREG(st.st_mode) and name.startswith(WHITEOUT)):
                    continue
                path = os.path.join(dirpath, name)
                arc = f"{rel}/{name}" if rel else name
                ti = _info(arc, st)
                for k, v in _xattrs(path):
                    ti.pax_headers["SCHILY.xattr." + k] = v.decode("utf-8", "surrogateescape")
                mode = st.st_mode
                if stat.S_ISDIR(mode):
                    ti.type = tarfile.DIRTYPE
                    add(ti)
                    walk(path, arc)
                    continue
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in seen:
                    ti.type, ti.linkname = tarfile.LNKTYPE, seen[key]
                    add(ti)
                    continue
                if st.st_nlink > 1:
                    seen[key] = arc
                if stat.S_ISREG(mode):
                    ti.size = st.st_size
                    with _open_listed(path, st) as f:
                        add(ti, f)
                elif stat.S_ISLNK(mode):
                    ti.type, ti.linkname = tarfile.SYMTYPE, os.readlink(path)
                    add(ti)
                elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                    ti.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
                    ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
                    add(ti)
                elif stat.S_ISFIFO(mode):
                    ti.type = tarfile.FIFOTYPE
                    add(ti)
                # sockets are not content: like Docker, they are left out

        walk(upper, "")
    return count


def import_changeset(ctx: Context, job: pipeline.Job, upper: str) -> Layer:
    """Ingests the upper dir as a layer (write_changeset), streamed: tarfile writes it into a
    pipe on a thread of its own while the C ingest reads the other end, so the two overlap
    and no copy of the layer lands on disk (containerd's unpacks through the snapshotter
    commit whole layers this way)."""
    r, w = os.pipe()
    failed: list[BaseException] = []

    def produce() -> None:
        try:
            with open(w, "wb", buffering=1 << 20) as out:
                write_changeset(upper, out)
        except BrokenPipeError:
            pass        # the import stopped reading: its own error is the one to report
        except BaseException as exc:    # noqa: BLE001 - handed to the importing thread
            failed.append(exc)

    writer = threading.Thread(target=produce, name="changeset", daemon=True)
    writer.start()
    try:
        with open(r, "rb") as stream:
            layer = pipeline.import_layer(ctx, job, stream)
    finally:
        writer.join()       # the read end is closed: a blocked writer gets EPIPE and ends
    if failed:      # the tar was cut short, whatever the ingest made of it
        raise failed[0]
    return layer


def commit(ctx: Context, job: pipeline.Job, m: Mount, tags=()) -> Image:
    """See Store.commit; the caller holds the store lock shared for the import (job)."""
    config = ctx.config(m.image)
    layer = import_changeset(ctx, job, m.upper)
    now = _now()
    config = dict(config)
    config["created"] = now
    rootfs = dict(config.get("rootfs") or {"type": "layers"})
    rootfs["diff_ids"] = list(rootfs.get("diff_ids", [])) + [layer.diff_id]
    config["rootfs"] = rootfs
    config["history"] = list(config.get("history") or []) + [
        {"created": now, "created_by": "layerstore commit"}]
    data = json.dumps(config, separators=(",", ":")).encode()
    return pipeline.add_image(ctx, data, tags=tags)
