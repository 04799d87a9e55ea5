"""The union of an image's layers: the filesystem a container sees.

Layers apply in order, as the OCI image spec's "Applying changesets" says: ".wh.NAME" deletes
NAME from lower layers, ".wh..wh..opq" hides everything lower in its directory (never entries
of its own layer), a later entry replaces an earlier one of any type, and a directory over a
directory only updates its metadata.  Symlinks in a path are followed as a chroot would: never
out of the image root ("lnk -> /" then "lnk/etc/x" lands at "etc/x").  A hardlink must name an
entry that exists at that moment, by its literal path; it then shares that entry's inode, even
if a later layer removes the original name.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterator

from .. import errors
from .._model import Entry, EntryType

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
MAX_HOPS = 40


class Node:
    __slots__ = ("entry", "layer", "children", "inode")

    def __init__(self, entry: Entry, layer: int, inode: "Node | None" = None) -> None:
        self.entry = entry
        self.layer = layer
        self.children: dict[str, Node] | None = {} if entry.type is EntryType.DIR else None
        self.inode = inode or self      # the node whose entry defines content and metadata


def _implicit_dir(path: str) -> Entry:
    # A parent a layer never declared: Docker creates it as root-owned 0755.
    return Entry(path, EntryType.DIR, 0o755, 0, 0, 0)


class Tree:
    def __init__(self) -> None:
        self.root = Node(_implicit_dir("."), -1)

    def parent(self, parts: list[str], layer: int, path: str,
               create: bool = True) -> tuple[Node | None, list[str]]:
        """Resolves the directory that holds a path, following symlinks inside the root and
        creating missing directories (or returning None when create is false).  Returns it and
        its real path components."""
        todo = list(parts)
        nodes, real = [self.root], []
        hops = 0
        while todo:
            c = todo.pop(0)
            if c in ("", "."):
                continue
            if c == "..":
                if real:
                    real.pop()
                    nodes.pop()
                continue
            node = nodes[-1].children.get(c)
            if node is None:
                if not create:
                    return None, real
                node = Node(_implicit_dir("/".join(real + [c])), layer)
                nodes[-1].children[c] = node
            if node.entry.type is EntryType.SYMLINK:
                hops += 1
                if hops > MAX_HOPS:
                    raise errors.CorruptArchive(f"{path}: too many levels of symbolic links")
                target = node.entry.link or ""
                if target.startswith("/"):
                    nodes, real = [self.root], []
                todo = target.split("/") + todo
                continue
            if node.entry.type is not EntryType.DIR:
                if not create:
                    return None, real
                raise errors.CorruptArchive(f"{path}: {'/'.join(real + [c])} is not a directory")
            nodes.append(node)
            real.append(c)
        return nodes[-1], real

    def lookup(self, path: str) -> Node | None:
        """The node at path, symlinks in its parents followed inside the root (not the last
        component's), or None."""
        if path in ("", "."):
            return self.root
        head, _, name = path.rpartition("/")
        parent, _ = self.parent(head.split("/") if head else [], -1, path, create=False)
        return parent.children.get(name) if parent is not None else None

    def _prune(self, directory: Node, layer: int) -> None:
        """Hides what lower layers put under directory (an opaque whiteout)."""
        for key in list(directory.children):
            child = directory.children[key]
            if child.layer < layer:
                del directory.children[key]
            elif child.children:
                self._prune(child, layer)

    def apply(self, layer: int, entries) -> None:
        """Applies one layer's entries (in archive order)."""
        # Each entry's parent, by the path the entry names it with: most entries share it with
        # the one before.  A cached parent stands until an entry removes or replaces a
        # directory or symlink, which may lie on the way to it.
        parents: dict[str, tuple[Node, list[str]]] = {}
        for e in entries:
            if e.path == ".":
                if e.type is EntryType.DIR:
                    self.root.entry = e
                continue
            head, _, name = e.path.rpartition("/")
            found = parents.get(head)
            if found is None:
                found = parents[head] = self.parent(head.split("/") if head else [], layer,
                                                    e.path)
            parent, real = found
            if name.startswith(WHITEOUT):
                parents.clear()
                if name == OPAQUE:
                    self._prune(parent, layer)
                else:
                    victim = parent.children.get(name[len(WHITEOUT):])
                    if victim is not None and victim.layer < layer:
                        del parent.children[name[len(WHITEOUT):]]
                continue
            path = "/".join(real + [name])
            old = parent.children.get(name)
            if old is not None and old.entry.type in (EntryType.DIR, EntryType.SYMLINK) \
                    and not (e.type is EntryType.DIR and old.entry.type is EntryType.DIR):
                parents.clear()
            if e.type is EntryType.HARDLINK:
                target = self.lookup(e.link or "")
                if target is None or target.entry.type is EntryType.DIR:
                    raise errors.CorruptArchive(
                        f"hardlink {e.path} points to {e.link}, which is not a file of the "
                        "image at that point")
                node = Node(replace(e, path=path), layer, target.inode)
            elif e.type is EntryType.DIR and old is not None and old.entry.type is EntryType.DIR:
                old.entry = replace(e, path=path)
                old.layer = layer
                continue
            else:
                node = Node(replace(e, path=path) if path != e.path else e, layer)
            parent.children[name] = node

    def walk(self) -> Iterator[Node]:
        """Every node, parents before children, names sorted."""
        stack = [self.root]
        while stack:
            node = stack.pop()
            yield node
            if node.children:
                stack.extend(node.children[k] for k in sorted(node.children, reverse=True))

    def entries(self) -> Iterator[Entry]:
        """The merged view as entries; a hardlink appears as the entry it shares an inode
        with, under its own path."""
        for node in self.walk():
            if node.inode is node:
                yield node.entry
            else:
                yield replace(node.inode.entry, path=node.entry.path)


def build(layers) -> Tree:
    """The union of layers, each an iterable of entries in archive order."""
    tree = Tree()
    for i, entries in enumerate(layers):
        tree.apply(i, entries)
    return tree
