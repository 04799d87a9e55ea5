"""Checkout of each corpus image, side by side: layerstore's three modes (the default, files of
their own: reflinks where the filesystem has them, else copies; --copy; --link, hardlinks) vs
GNU tar extracting the image's root filesystem, `ostree checkout -H` of the same tree committed
to a bare repository (the peer of --link), and `umoci unpack` of the image as an OCI layout.

    python benchmarks/bench_checkout.py [--runs 3] [--json] [--images python,...] [--no-xfs]

Each contestant has a fresh filesystem of its own (a loop-mounted ext4 when root, see
harness.bench_filesystem) holding its source and what it checks out: layerstore its store,
GNU tar the rootfs as one tar, ostree its repository, umoci the layout written by skopeo; all
made outside the timing.  The default checkout and GNU tar run again on a loop-mounted xfs,
where the default reflinks.  Each timed run checks out into a new directory; the ratios are
against GNU tar on the same kind of filesystem (and, for --link, against ostree -H).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (bench_filesystem, corpus_images, machine, run, sync,  # noqa: E402
                     table, timed, warm)

from layerstore import Store  # noqa: E402

MODES = {"layerstore": {}, "layerstore --copy": {"copy": True},
         "layerstore --link": {"link": True}}


class Contestant:
    """One way to check an image out, with its own filesystem (fs: its kind, "host" when the
    benchmark could not make one) and its source on it."""

    def __init__(self, name: str, fs: str, work: Path, peer: str) -> None:
        self.name, self.fs, self.work, self.peer = name, fs, work, peer
        self.runs = 0

    def dest(self, image) -> Path:
        self.runs += 1
        return self.work / image.name / f"out{self.runs}"  # never deleted during the run


def filesystems(xfs: bool, workdir: Path | None) -> list[tuple[str, str, Path]]:
    """(contestant, fs kind, work dir) for every contestant, each on a filesystem of its own
    (with workdir, a directory of its own there instead)."""
    out = []
    names = [*MODES, "gnutar", "ostree -H", "umoci unpack"]
    if not shutil.which("ostree"):
        names.remove("ostree -H")
    if not (shutil.which("umoci") and shutil.which("skopeo")):
        names.remove("umoci unpack")
    wanted = [(n, "ext4") for n in names]
    if xfs and shutil.which("mkfs.xfs"):
        wanted += [("layerstore", "xfs"), ("gnutar", "xfs")]
    for name, kind in wanted:
        label = name.replace(" ", "").replace("-", "") + f"-{kind}"
        if workdir is not None:
            work, fs = workdir / label, "given"
        else:
            work = bench_filesystem(kind, label)
            fs = kind if os.path.ismount(work.parent) else "host"
        if kind == "xfs" and fs != "xfs":
            continue        # no xfs to be had: its rows would only repeat the others
        if work.exists():
            run(["rm", "-rf", str(work)])
        work.mkdir(parents=True)
        out.append((name, fs, work))
    return out


def prepare(image, contestants: list[Contestant]) -> dict:
    """Every contestant's source for image, made once on its own filesystem: returns the
    function each times, by contestant."""
    fns = {}
    ref = None
    for c in contestants:
        base = c.work / image.name
        base.mkdir()
        if c.name in MODES:
            store = base / "store"
            with Store(store) as s:
                s.import_archive(image.plain)
                if ref is None:     # the reference tree the peers start from
                    ref = base / "ref"
                    s.checkout(image.config_digest, ref)
            fns[c] = lambda dest, store=store, how=MODES[c.name]: _layerstore(image, store,
                                                                               dest, how)
    for c in contestants:
        base = c.work / image.name
        if c.name == "gnutar":
            rootfs_tar = base / "rootfs.tar"
            run(["tar", "--xattrs", "-C", str(ref), "-cf", str(rootfs_tar), "."])
            warm(rootfs_tar)
            fns[c] = lambda dest, t=rootfs_tar: _gnutar(t, dest)
        elif c.name == "ostree -H":
            repo = base / "ostree"
            mode = "bare" if os.geteuid() == 0 else "bare-user"
            run(["ostree", "init", f"--repo={repo}", f"--mode={mode}"])
            run(["ostree", "commit", f"--repo={repo}", "--branch=image", f"--tree=dir={ref}",
                 "--no-bindings"])
            fns[c] = lambda dest, repo=repo: run(["ostree", f"--repo={repo}", "checkout",
                                                  "-H", "image", str(dest)])
        elif c.name == "umoci unpack":
            layout = base / "oci"
            run(["skopeo", "copy", "-q", f"docker-archive:{image.plain}",
                 f"oci:{layout}:latest"])
            fns[c] = lambda dest, layout=layout: _umoci(layout, dest)
    run(["rm", "-rf", str(ref)])
    return fns


def _layerstore(image, store: Path, dest: Path, how: dict) -> None:
    with Store(store) as s:
        s.checkout(image.config_digest, dest, **how)


def _gnutar(rootfs_tar: Path, dest: Path) -> None:
    os.mkdir(dest)
    run(["tar", "--xattrs", "-C", str(dest), "-xf", str(rootfs_tar)])


def _umoci(layout: Path, dest: Path) -> None:
    argv = ["umoci", "unpack", "--image", f"{layout}:latest", str(dest)]
    if os.geteuid() != 0:
        argv.insert(2, "--rootless")
    run(argv)


def bench(names: list[str], runs: int, xfs: bool, workdir: Path | None) -> list[dict]:
    contestants = [Contestant(name, fs, work, "ostree -H" if name == "layerstore --link"
                              else "") for name, fs, work in filesystems(xfs, workdir)]
    rows = []
    for image in corpus_images():
        if names and image.name not in names:
            continue
        fns = prepare(image, contestants)
        best = {c: float("inf") for c in contestants}
        for _ in range(runs):
            for c in contestants:
                dest = c.dest(image)
                sync()
                best[c] = min(best[c], timed(fns[c], dest))
        tar = {c.fs: best[c] for c in contestants if c.name == "gnutar"}
        by_name = {(c.name, c.fs): best[c] for c in contestants}
        for c in contestants:
            row = {"image": image.name, "contestant": c.name, "fs": c.fs,
                   "s": round(best[c], 3)}
            if c.name != "gnutar" and c.fs in tar:
                row["/tar"] = round(best[c] / tar[c.fs], 2)
            if (c.peer, c.fs) in by_name:
                row[f"/{c.peer}"] = round(best[c] / by_name[c.peer, c.fs], 2)
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--images", default="", help="comma-separated image names (default all)")
    ap.add_argument("--no-xfs", action="store_true",
                    help="skip the xfs filesystem (the default checkout's reflinks)")
    ap.add_argument("--workdir", type=Path,
                    help="a directory per contestant under this one instead of filesystems")
    args = ap.parse_args()
    rows = bench([n for n in args.images.split(",") if n], args.runs, not args.no_xfs,
                 args.workdir)
    if args.json:
        print(json.dumps({"machine": machine(), "checkout": rows}, indent=2))
        return
    print(f"# checkout ({machine()}), best of {args.runs}")
    columns = list(dict.fromkeys(k for r in rows for k in r))
    print(table(rows, columns))


if __name__ == "__main__":
    main()
