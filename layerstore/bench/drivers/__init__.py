"""Built-in drivers (layerstore.bench.driver.BUILTIN lists them), and the whiteout handling
the drivers that unpack layers themselves share."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def layer_whiteouts(names: list[str]) -> tuple[list[str], dict[str, set[str]]]:
    """From a layer's entry names: the paths its `.wh.NAME` files delete, and for each opaque
    directory (`.wh..wh..opq`) the names the layer itself puts in it (which stay)."""
    clean = [n.lstrip("./").rstrip("/") if n not in (".", "./") else "" for n in names]
    whiteouts, opaque = [], {}
    for n in clean:
        d, _, b = n.rpartition("/")
        if b == ".wh..wh..opq":
            opaque[d] = set()
        elif b.startswith(".wh."):
            whiteouts.append(f"{d}/{b[4:]}" if d else b[4:])
    for n in clean:         # what the layer has under an opaque dir, at any depth, stays
        for d in opaque:
            if n.startswith(d + "/") and n != f"{d}/.wh..wh..opq":
                opaque[d].add(n[len(d) + 1:].split("/", 1)[0])
    return whiteouts, opaque


def apply_whiteouts(rootfs: Path, whiteouts: list[str], opaque: dict[str, set[str]]) -> None:
    """After a layer was unpacked over rootfs: what its whiteouts delete goes, the markers go,
    and opaque directories keep only the layer's own entries (OCI image spec, "Applying
    changesets")."""
    for d, own in opaque.items():
        for child in os.listdir(rootfs / d):
            if child not in own and child != ".wh..wh..opq":
                _remove(rootfs / d / child)
        os.unlink(rootfs / d / ".wh..wh..opq")
    for path in whiteouts:
        _remove(rootfs / path)
        d, _, b = path.rpartition("/")
        os.unlink(rootfs / d / f".wh.{b}")


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif os.path.lexists(p):
        os.unlink(p)
