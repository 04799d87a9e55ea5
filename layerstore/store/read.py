"""Reading an image without checking it out: resolve paths in the merged tree, list, stat,
open file content straight from the object store, and diff two images; and what `inspect` and
`history` show of an image's config, manifest and layers.

Paths resolve as inside a chroot at the image root: ".." at the root stays there, an absolute
symlink target starts again at the image root, so no symlink can lead out of the image.
"""

from __future__ import annotations

import errno
import io
import json
import os
import stat as _stat
from dataclasses import replace
from typing import Callable, Iterator

from .. import errors
from .._model import DiffResult, Entry, EntryType, HistoryEntry, InspectResult
from ..errors import LayerNotFound
from .context import Context, image_of, layer_of
from .tree import MAX_HOPS, Node, Tree

_FMT = {EntryType.FILE: _stat.S_IFREG, EntryType.DIR: _stat.S_IFDIR,
        EntryType.SYMLINK: _stat.S_IFLNK, EntryType.CHAR: _stat.S_IFCHR,
        EntryType.BLOCK: _stat.S_IFBLK, EntryType.FIFO: _stat.S_IFIFO}


def _error(cls, code: int, message: str):
    # errno set after construction keeps str(exc) the plain message the CLI prints.
    exc = cls(message)
    exc.errno = code
    return exc


def display(path: str) -> str:
    """An entry path as users see it in the image: absolute."""
    return "/" if path == "." else "/" + path


def entry(node: Node) -> Entry:
    """A node's entry; a hardlink shows the inode it shares, under its own path."""
    if node.inode is node:
        return node.entry
    return replace(node.inode.entry, path=node.entry.path)


def _kind(node: Node) -> EntryType:
    return node.inode.entry.type


def resolve(tree: Tree, path: str, follow: bool = False) -> Node:
    """The node at path.  Symlinks among the parents are always followed, the last component's
    only with follow (or a trailing "/", as POSIX)."""
    todo = path.split("/")[::-1]
    dirs: list[Node] = [tree.root]
    hops = 0
    while todo:
        c = todo.pop()
        if c in ("", "."):
            continue
        if c == "..":
            if len(dirs) > 1:
                dirs.pop()
            continue
        child = dirs[-1].children.get(c)
        if child is None:
            raise _error(errors.PathNotFound, errno.ENOENT,
                         f"{path}: no such file or directory in the image")
        more = bool(todo)     # a trailing "/" counts, as POSIX: "lnk/" follows lnk
        kind = _kind(child)
        if kind is EntryType.SYMLINK and (more or follow):
            hops += 1
            if hops > MAX_HOPS:
                raise _error(errors.SymlinkLoop, errno.ELOOP,
                             f"{path}: too many levels of symbolic links")
            target = child.inode.entry.link or ""
            if not target:
                raise _error(errors.PathNotFound, errno.ENOENT,
                             f"{path}: {display(child.entry.path)} is an empty symlink")
            if target.startswith("/"):
                dirs = [tree.root]
            todo.extend(reversed(target.split("/")))
            continue
        if not more:
            return child
        if kind is not EntryType.DIR:
            raise _error(errors.NotADirectory, errno.ENOTDIR,
                         f"{path}: {display(child.entry.path)} is not a directory")
        dirs.append(child)
    return dirs[-1]


def walk(tree: Tree, path: str = ".") -> Iterator[Entry]:
    """The entries under path (itself first), parents before children, names sorted.  A
    symlink given as path is followed, as `find -H` does."""
    start = resolve(tree, path, follow=True)
    stack = [start]
    while stack:
        node = stack.pop()
        yield entry(node)
        if node.children:
            stack.extend(node.children[k] for k in sorted(node.children, reverse=True))


def stat(tree: Tree, path: str, follow: bool = False) -> Entry:
    return entry(resolve(tree, path, follow))


def listing(tree: Tree, path: str, follow: bool = True) -> tuple[Entry, list[Entry]]:
    """What `ls` shows: (the entry at path, its children sorted by name, or [] for a
    non-directory)."""
    node = resolve(tree, path, follow)
    if _kind(node) is not EntryType.DIR:
        return entry(node), []
    return entry(node), [entry(node.children[k]) for k in sorted(node.children)]


def open_file(tree: Tree, path: str, object_path: Callable[[str], str]) -> io.BufferedReader:
    """A read-only binary file object over the content of the regular file at path (symlinks
    followed inside the image)."""
    node = resolve(tree, path, follow=True)
    e = entry(node)
    if e.type is EntryType.DIR:
        raise _error(errors.IsADirectory, errno.EISDIR, f"{path}: is a directory")
    if e.type is not EntryType.FILE:
        raise _error(errors.NotAFile, errno.EINVAL,
                     f"{path}: is a {e.type.value}, which has no content in the store")
    if e.size == 0 or not e.object_id:
        return io.BufferedReader(io.BytesIO(b""))
    src = object_path(e.object_id)
    try:
        # Objects are never symlinks; O_NOFOLLOW makes a tampered store fail rather than
        # lead a reader elsewhere.
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise errors.LayerstoreError(f"object {e.object_id} of {display(e.path)} is missing "
                                     "from the store (run fsck)") from None
    raw = io.FileIO(fd, "rb", closefd=True)
    raw.name = src
    return io.BufferedReader(raw, 1 << 17)


def mode_string(e: Entry) -> str:
    # Linux ignores a symlink's permission bits and shows 0777, as a checkout's `ls -l` does.
    perms = 0o777 if e.type is EntryType.SYMLINK else e.mode & 0o7777
    return _stat.filemode(_FMT.get(e.type, _stat.S_IFREG) | perms)


def _signature(e: Entry) -> tuple:
    # mtime is left out on purpose: a rebuilt layer re-stamps every file (see DESIGN.md,
    # mtime is not part of an object's identity either).
    return (e.type, e.mode & 0o7777, e.uid, e.gid, e.size, e.object_id, e.link, e.xattrs,
            e.devmajor, e.devminor)


def diff(a: Tree, b: Tree) -> DiffResult:
    """Paths added, removed and changed from a to b (absolute, sorted)."""
    old = {e.path: e for e in a.entries()}
    new = {e.path: e for e in b.entries()}
    added = sorted(display(p) for p in new.keys() - old.keys())
    removed = sorted(display(p) for p in old.keys() - new.keys())
    changed = sorted(display(p) for p in old.keys() & new.keys()
                     if _signature(old[p]) != _signature(new[p]))
    return DiffResult(tuple(added), tuple(removed), tuple(changed))


# ---- an image's metadata ---------------------------------------------------------------------

def inspect(ctx: Context, ref: str) -> InspectResult:
    """See Store.inspect."""
    index = ctx.index
    with index.read() as txn:
        rec = ctx.resolve(txn, ref)
        layers = []
        for d in rec.diff_ids:
            layer = index.layer(txn, d)
            if layer is None:
                raise LayerNotFound(f"no such layer: {d}")
            layers.append(layer_of(layer))
        return InspectResult(image_of(rec, ctx.platform(txn, rec),
                                      ctx.index.repo_digests(txn, rec.id)),
                             json.loads(index.metadata(txn, rec.id)), _manifest(ctx, txn, rec),
                             tuple(layers))


def manifest(ctx: Context, ref: str) -> dict | None:
    """See Store.manifest."""
    with ctx.index.read() as txn:
        return _manifest(ctx, txn, ctx.resolve(txn, ref))


def _manifest(ctx: Context, txn, rec) -> dict | None:
    if rec.manifest_digest is None:
        return None
    return json.loads(ctx.index.metadata(txn, rec.manifest_digest))


def history(ctx: Context, ref: str) -> list[HistoryEntry]:
    """See Store.history."""
    index = ctx.index
    with index.read() as txn:
        rec = ctx.resolve(txn, ref)
        config = json.loads(index.metadata(txn, rec.id) or b"{}")
        sizes = {}
        for d in rec.diff_ids:
            layer = index.layer(txn, d)
            sizes[d] = layer.file_bytes if layer is not None else 0
    steps = config.get("history") if isinstance(config, dict) else None
    steps = [s for s in steps if isinstance(s, dict)] if isinstance(steps, list) else []
    made = [i for i, s in enumerate(steps) if s.get("empty_layer") is not True]
    paired = min(len(made), len(rec.diff_ids))
    undescribed = len(rec.diff_ids) - paired
    layer_of_step = dict(zip(made[len(made) - paired:], rec.diff_ids[undescribed:]))
    rows = [HistoryEntry(None, None, "", "", False, d, sizes[d])
            for d in rec.diff_ids[:undescribed]]
    for i, step in enumerate(steps):
        created, diff_id = step.get("created"), layer_of_step.get(i)
        rows.append(HistoryEntry(None, created if isinstance(created, str) else None,
                                 _text(step.get("created_by")), _text(step.get("comment")),
                                 step.get("empty_layer") is True, diff_id,
                                 sizes.get(diff_id, 0)))
    rows.reverse()
    if rows:
        rows[0] = replace(rows[0], image_id=rec.id)
    return rows


def _text(value) -> str:
    """A config field shown as text: absent is empty."""
    return value if isinstance(value, str) else "" if value is None else str(value)
