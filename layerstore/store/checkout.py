"""Checkout: an image's merged tree made real in a directory, by the C core in one call.

Python turns the merged tree into a plan (entry records, parents first; a second path of an
inode becomes a hardlink to the first path made for it), which an import keeps in the index
for each new image (store/pipeline.py); csrc/checkout.c makes it, never through a symlink.
Its files are, by default, files of their own that are safe to write (reflinks of the objects
where the filesystem has them, else copies, with the recorded mtimes); copy=True makes copies
that share no blocks with the store; link=True hardlinks the objects, for read-only use (a
write through such a file changes every image that holds it).  An empty file is always made
fresh.  A failed or interrupted checkout removes what it made.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import replace

from .. import _native, errors
from .._model import CheckoutResult, Progress
from .tree import Tree


def plan(tree: Tree) -> bytes:
    """The tree as a checkout plan (see ls_tree_checkout in csrc/layerstore.h)."""
    made: dict[int, str] = {}       # id(inode node) -> the path made for it
    out = []
    encode = _native.encode_record
    for node in tree.walk():
        inode = node.inode
        path = node.entry.path
        e = inode.entry if inode.entry.path == path else replace(inode.entry, path=path)
        first = made.get(id(inode))
        if first is not None:
            out.append(encode(e, link=first))
        else:
            made[id(inode)] = path
            out.append(encode(e))
    return b"".join(out)


def _prepare(dest: str) -> os.stat_result | None:
    """Makes dest, or accepts it empty.  Returns None when it was made here, else how it was
    found (to put back if the checkout fails)."""
    try:
        os.mkdir(dest, 0o700)       # nobody sees the tree until it is whole
        return None
    except FileExistsError:
        found = os.lstat(dest)
        if not stat.S_ISDIR(found.st_mode):
            raise errors.host_error(errno.ENOTDIR, f"checkout destination {dest} exists and "
                                                   "is not a directory") from None
        if os.listdir(dest):
            raise errors.host_error(errno.ENOTEMPTY,
                                    f"checkout destination {dest} is not empty") from None
        return found
    except FileNotFoundError:
        raise errors.host_error(errno.ENOENT, f"checkout destination {dest}: its parent "
                                              "directory does not exist") from None
    except OSError as exc:
        raise errors.host_path_error(exc, dest, "make the checkout destination") from None


def _mode(link: bool, copy: bool) -> str:
    """The checkout mode (a key of _native.CHECKOUT_MODES) the two flags ask for."""
    if link and copy:
        raise ValueError("checkout: link and copy exclude each other (hardlinks share the "
                         "store's files, copies share nothing)")
    return "link" if link else "copy" if copy else "reflink"


def checkout(checkout_plan: bytes, dest: str, objects_dir: str, link: bool = False,
             copy: bool = False, progress=None) -> CheckoutResult:
    """Makes dest (absent or empty) the plan's tree; see the module docstring for link and
    copy.  progress(Progress) is called as it goes (bytes: file content, items: entries)."""
    mode = _mode(link, copy)
    dest = os.path.abspath(dest)
    report = None
    if progress is not None:
        total_bytes, total_items = _native.plan_totals(checkout_plan)
        report = lambda b, n: progress(Progress(b, total_bytes, n, total_items))  # noqa: E731
    found = _prepare(dest)
    try:
        counts = _native.checkout(objects_dir, dest, checkout_plan, mode, os.geteuid() == 0,
                                  report)
        # Inside the try: a Ctrl-C that lands once the C call is done still undoes it (the
        # command then fails, and a failed checkout leaves nothing).
        return CheckoutResult(dest, mode, **counts)
    except BaseException as exc:
        try:
            _undo(dest, found)
        except OSError as cleanup:
            if isinstance(exc, Exception):      # an interrupt stays an interrupt
                raise errors.LayerstoreError(f"{exc}; what the checkout made in {dest} could "
                                             f"not all be removed: {cleanup}") from exc
        raise


def _undo(dest: str, found: os.stat_result | None) -> None:
    """Leaves dest as a failed checkout found it: absent, or empty with its mode, owner and
    times (the checkout gives DEST the image's, last)."""
    if found is None:
        remove_tree(dest)
        return
    remove_tree(dest, keep_top=True)
    if os.geteuid() == 0:
        os.chown(dest, found.st_uid, found.st_gid, follow_symlinks=False)
    os.chmod(dest, stat.S_IMODE(found.st_mode))
    os.utime(dest, ns=(found.st_atime_ns, found.st_mtime_ns), follow_symlinks=False)


_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir(name: str, dir_fd: int | None = None) -> int:
    """Opens a directory to empty it, never through a symlink, and gives it its owner's
    write and search bits back (a failed checkout may have given it its final, read-only
    mode)."""
    try:
        fd = os.open(name, _DIR, dir_fd=dir_fd)
    except PermissionError:
        # Not root (root opens any directory), and the mode shuts its owner out: chmod by
        # name, which an unprivileged process can only do to files of its own.
        os.chmod(name, 0o700, dir_fd=dir_fd)
        fd = os.open(name, _DIR, dir_fd=dir_fd)
    mode = os.fstat(fd).st_mode
    if mode & 0o700 != 0o700:
        os.fchmod(fd, stat.S_IMODE(mode) | 0o700)
    return fd


def _entries(fd: int) -> list[os.DirEntry]:
    with os.scandir(fd) as it:
        return list(it)


def remove_tree(path: str, keep_top: bool = False) -> None:
    """Removes path and everything under it (with keep_top, only what is under it).  Never
    follows a symlink: each directory is opened with O_NOFOLLOW relative to its parent's
    descriptor, and anything that is not a directory is unlinked.  Iterative, so a tree as
    deep as a path allows does not exhaust Python's recursion limit."""
    try:
        top = _open_dir(path)
    except OSError as exc:
        if keep_top or exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        os.unlink(path)     # a file, or a symlink (ELOOP under O_NOFOLLOW)
        return
    stack = [(top, "", iter(_entries(top)))]    # (fd, name in its parent, entries left)
    try:
        while stack:
            fd, _, left = stack[-1]
            for entry in left:
                if entry.is_dir(follow_symlinks=False):
                    sub = _open_dir(entry.name, dir_fd=fd)
                    stack.append((sub, entry.name, iter(())))   # closed below if listing fails
                    stack[-1] = (sub, entry.name, iter(_entries(sub)))
                    break
                os.unlink(entry.name, dir_fd=fd)
            else:
                fd, name, _ = stack.pop()
                os.close(fd)
                if stack:
                    os.rmdir(name, dir_fd=stack[-1][0])
    finally:
        for fd, _, _ in stack:
            os.close(fd)
    if not keep_top:
        os.rmdir(path)
