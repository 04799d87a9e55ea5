"""Compares two directory trees the way a container would see them: types, modes, owners,
sizes, content, symlink targets, device numbers, and which files share an inode."""

from __future__ import annotations

import hashlib
import os
import stat


def snapshot(root: str, mtimes: bool = False, owners: bool = True) -> tuple[dict, list]:
    """{relative path: description} and the groups of paths that share an inode."""
    out: dict[str, tuple] = {}
    inodes: dict[tuple, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            kind = stat.S_IFMT(st.st_mode)
            desc = [kind, stat.S_IMODE(st.st_mode)]
            if owners:
                desc += [st.st_uid, st.st_gid]
            if stat.S_ISREG(kind):
                with open(full, "rb") as f:
                    desc += [st.st_size, hashlib.sha256(f.read()).hexdigest()]
                if st.st_nlink > 1:
                    inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
            elif stat.S_ISLNK(kind):
                desc.append(os.readlink(full))
            elif stat.S_ISCHR(kind) or stat.S_ISBLK(kind):
                desc.append((os.major(st.st_rdev), os.minor(st.st_rdev)))
            if mtimes and not stat.S_ISLNK(kind):
                desc.append(st.st_mtime_ns // 10**9)
            out[rel] = tuple(desc)
    groups = sorted(sorted(g) for g in inodes.values() if len(g) > 1)
    return out, groups


def differences(a: dict, b: dict, limit: int = 20) -> list[str]:
    diffs = []
    for path in sorted(set(a) | set(b)):
        if a.get(path) != b.get(path):
            diffs.append(f"{path}: {a.get(path)} != {b.get(path)}")
            if len(diffs) >= limit:
                break
    return diffs


def groups_within(inner: list, outer: list) -> bool:
    """Whether every inode group of inner lies inside one group of outer (a hardlinked
    checkout may share more inodes than the reference: equal files are one object)."""
    where = {p: i for i, g in enumerate(outer) for p in g}
    return all(len({where.get(p, ("alone", p)) for p in g}) == 1 for g in inner)
