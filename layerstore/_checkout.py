"""Checkout: an image's merged tree made real in a directory.

Files are hardlinks to their objects (the default) or independent copies (copy=True, with the
recorded mtimes).  An empty file is always created fresh, never linked: a shared empty inode
would let one checkout corrupt every other.  A hardlink to an object that has too many links
already (EMLINK) or sits on another filesystem (EXDEV) becomes a copy.

Every path made comes from the tree, whose parents are always real directories made here
first (the tree resolved symlinks inside the image when layers were applied), so nothing is
ever created through a symlink.  Directories get their final mode, owner and times last, so a
read-only directory does not stop its children from being made.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat

from . import errors
from ._model import CheckoutResult, EntryType
from ._tree import Tree

_IS_ROOT = os.geteuid() == 0


def _prepare(dest: str) -> bool:
    """Makes dest, or accepts it empty.  Returns whether it was made here."""
    try:
        os.mkdir(dest, 0o700)
        return True
    except FileExistsError:
        if not os.path.isdir(dest) or os.path.islink(dest):
            raise errors.LayerstoreError(f"checkout destination {dest} exists and is not a "
                                         "directory") from None
        if os.listdir(dest):
            raise errors.LayerstoreError(f"checkout destination {dest} is not empty") from None
        return False


class _Checkout:
    def __init__(self, dest: str, object_path, copy: bool) -> None:
        self.dest = dest
        self.object_path = object_path
        self.copy = copy
        self.made_inodes: dict[int, str] = {}     # id(inode node) -> path made for it
        self.counts = dict(files=0, dirs=0, symlinks=0, hardlinked=0, copied=0, specials=0,
                           skipped_specials=0, skipped_owners=0, skipped_xattrs=0)

    def _owner(self, path: str, e) -> None:
        if not _IS_ROOT:
            if (e.uid, e.gid) != (os.geteuid(), os.getegid()):
                self.counts["skipped_owners"] += 1
            return
        os.chown(path, e.uid, e.gid, follow_symlinks=False)

    def _xattrs(self, path: str, e) -> None:
        for name, value in e.xattrs:
            try:
                os.setxattr(path, name, value, follow_symlinks=False)
            except OSError:
                self.counts["skipped_xattrs"] += 1

    def _meta(self, path: str, e, times: bool = True) -> None:
        self._owner(path, e)
        os.chmod(path, e.mode)
        self._xattrs(path, e)
        if times:
            ns = e.mtime_ns
            os.utime(path, ns=(ns, ns), follow_symlinks=False)

    def _copy_object(self, src: str, path: str, e) -> None:
        with open(src, "rb") as fi, open(path, "xb") as fo:
            shutil.copyfileobj(fi, fo, 1 << 20)
        self._meta(path, e)
        self.counts["copied"] += 1

    def file(self, path: str, e) -> None:
        self.counts["files"] += 1
        if e.size == 0:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            os.close(fd)
            self._meta(path, e)
            self.counts["copied"] += 1
            return
        src = self.object_path(e.object_id)
        if self.copy:
            self._copy_object(src, path, e)
            return
        try:
            os.link(src, path)
            self.counts["hardlinked"] += 1
        except FileNotFoundError:
            raise errors.LayerstoreError(f"object {e.object_id} of {e.path} is missing from "
                                         "the store (run fsck)") from None
        except OSError as exc:
            if exc.errno not in (errno.EMLINK, errno.EXDEV, errno.EPERM):
                raise
            self._copy_object(src, path, e)

    def node(self, node) -> None:
        e = node.entry
        path = os.path.join(self.dest, e.path)
        inode = node.inode
        first = self.made_inodes.get(id(inode))
        if first is not None:   # a hardlink of the image: the same inode here too
            os.link(first, path, follow_symlinks=False)
            self.counts["files" if inode.entry.type is EntryType.FILE else "specials"] += 1
            return
        e = inode.entry
        kind = e.type
        if kind is EntryType.DIR:
            os.mkdir(path, 0o700)
            self.counts["dirs"] += 1
        elif kind is EntryType.FILE:
            self.file(path, e)
        elif kind is EntryType.SYMLINK:
            os.symlink(e.link, path)
            self._owner(path, e)
            os.utime(path, ns=(e.mtime_ns, e.mtime_ns), follow_symlinks=False)
            self.counts["symlinks"] += 1
        else:
            if not _IS_ROOT and kind is not EntryType.FIFO:
                self.counts["skipped_specials"] += 1
                return
            fmt = {EntryType.CHAR: stat.S_IFCHR, EntryType.BLOCK: stat.S_IFBLK,
                   EntryType.FIFO: stat.S_IFIFO}[kind]
            os.mknod(path, fmt | 0o600, os.makedev(e.devmajor, e.devminor))
            self._meta(path, e)
            self.counts["specials"] += 1
        self.made_inodes[id(inode)] = path


def checkout(tree: Tree, dest: str, object_path, copy: bool = False) -> CheckoutResult:
    dest = os.path.abspath(dest)
    made = _prepare(dest)
    co = _Checkout(dest, object_path, copy)
    dirs = []
    try:
        for node in tree.walk():
            if node is tree.root:
                dirs.append((dest, node.entry))
                continue
            co.node(node)
            if node.entry.type is EntryType.DIR:
                dirs.append((os.path.join(dest, node.entry.path), node.entry))
        for path, e in reversed(dirs):
            co._meta(path, e)
    except BaseException:
        if made:
            _remove(dest)
        else:
            for name in os.listdir(dest):
                _remove(os.path.join(dest, name))
        raise
    return CheckoutResult(dest, **co.counts)


def _remove(path: str) -> None:
    def onerror(func, p, exc_info):
        # A directory made read-only (its final mode) may need its write bit back.
        try:
            os.chmod(os.path.dirname(p), 0o700)
            func(p)
        except OSError:
            pass
    if os.path.isdir(path) and not os.path.islink(path):
        for root, dirnames, _ in os.walk(path):
            for d in dirnames:
                try:
                    os.chmod(os.path.join(root, d), 0o700, follow_symlinks=False)
                except OSError:
                    pass
        shutil.rmtree(path, onerror=onerror)
    else:
        os.unlink(path)
