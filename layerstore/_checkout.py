"""Checkout: an image's merged tree made real in a directory, by the C core in one call.

Python turns the merged tree into a plan (entry records, parents first; a second path of an
inode becomes a hardlink to the first path made for it); csrc/checkout.c makes it, never
through a symlink.  Its files are, by default, files of their own that are safe to write
(reflinks of the objects where the filesystem has them, else copies, with the recorded
mtimes); copy=True makes copies that share no blocks with the store; link=True hardlinks the
objects, for read-only use (a write through such a file changes every image that holds it).
An empty file is always made fresh.  A failed checkout removes what it made.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace

from . import _native, errors
from ._model import CheckoutResult, Progress
from ._tree import Tree


def plan(tree: Tree) -> bytes:
    """The tree as a checkout plan (see ls_checkout in csrc/layerstore.h)."""
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


def _prepare(dest: str) -> bool:
    """Makes dest, or accepts it empty.  Returns whether it was made here."""
    try:
        os.mkdir(dest, 0o700)
        return True
    except FileNotFoundError:
        raise errors.LayerstoreError(f"checkout destination {dest}: its parent directory "
                                     "does not exist") from None
    except PermissionError:
        raise errors.LayerstoreError(f"checkout destination {dest}: permission denied") from None
    except FileExistsError:
        if not os.path.isdir(dest) or os.path.islink(dest):
            raise errors.LayerstoreError(f"checkout destination {dest} exists and is not a "
                                         "directory") from None
        if os.listdir(dest):
            raise errors.LayerstoreError(f"checkout destination {dest} is not empty") from None
        return False


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
    made = _prepare(dest)
    try:
        counts = _native.checkout(objects_dir, dest, checkout_plan, mode, os.geteuid() == 0,
                                  report)
    except BaseException:
        if made:
            _remove(dest)
        else:
            for name in os.listdir(dest):
                _remove(os.path.join(dest, name))
        raise
    return CheckoutResult(dest, mode, **counts)


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
