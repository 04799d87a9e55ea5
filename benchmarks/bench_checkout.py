"""Checkout of each corpus image, side by side: layerstore (hardlinks, and --copy) vs GNU tar
extracting the flattened root filesystem, `ostree checkout -H` of the same tree committed to a
bare repository, and `umoci unpack` of the image as an OCI layout.

    python benchmarks/bench_checkout.py [--runs 3] [--json] [--images python,...]

Each contestant's source is prepared outside the timing (layerstore: the image imported;
GNU tar: the rootfs as one tar; ostree: the rootfs committed; umoci: the layout written by
skopeo); each timed run checks out into a new directory.  Ratios are against GNU tar.
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


def prepare(image, work: Path) -> dict:
    """Everything each contestant needs, made once: returns paths by contestant."""
    store = work / "store"
    with Store(store) as s:
        s.import_archive(image.plain)
        ref = work / "ref"
        s.checkout(image.config_digest, ref)
    rootfs_tar = work / "rootfs.tar"
    run(["tar", "--xattrs", "-C", str(ref), "-cf", str(rootfs_tar), "."])
    out = {"store": store, "rootfs_tar": rootfs_tar}
    if shutil.which("ostree"):
        repo = work / "ostree"
        mode = "bare" if os.geteuid() == 0 else "bare-user"
        run(["ostree", "init", f"--repo={repo}", f"--mode={mode}"])
        run(["ostree", "commit", f"--repo={repo}", "--branch=image", f"--tree=dir={ref}",
             "--no-bindings"])
        out["ostree"] = repo
    if shutil.which("umoci") and shutil.which("skopeo"):
        layout = work / "oci"
        run(["skopeo", "copy", "-q", f"docker-archive:{image.plain}", f"oci:{layout}:latest"])
        out["oci"] = layout
    shutil.rmtree(ref)
    return out


def contestants(image, prep: dict):
    def layerstore(dest, copy=False):
        with Store(prep["store"]) as s:
            s.checkout(image.config_digest, dest, copy=copy)

    yield "layerstore", layerstore
    yield "layerstore --copy", lambda dest: layerstore(dest, copy=True)

    def gnutar(dest):
        os.mkdir(dest)
        run(["tar", "--xattrs", "-C", str(dest), "-xf", str(prep["rootfs_tar"])])
    yield "gnutar", gnutar
    if "ostree" in prep:
        yield "ostree -H", lambda dest: run(["ostree", f"--repo={prep['ostree']}", "checkout",
                                             "-H", "image", str(dest)])
    if "oci" in prep:
        def umoci(dest):
            argv = ["umoci", "unpack", "--image", f"{prep['oci']}:latest", str(dest)]
            if os.geteuid() != 0:
                argv.insert(2, "--rootless")
            run(argv)
        yield "umoci unpack", umoci


def bench(names: list[str], runs: int, work: Path) -> list[dict]:
    rows = []
    for image in corpus_images():
        if names and image.name not in names:
            continue
        base = work / image.name
        base.mkdir(parents=True)
        prep = prepare(image, base)
        warm(prep["rootfs_tar"])
        best: dict[str, float] = {}
        n = 0
        for _ in range(runs):
            for name, fn in contestants(image, prep):
                n += 1
                dest = base / f"out{n}"     # never deleted during the run (see harness)
                sync()
                best[name] = min(best.get(name, float("inf")), timed(fn, dest))
        row = {"image": image.name}
        tar = best["gnutar"]
        for name, t in best.items():
            row[f"{name} s"] = round(t, 3)
            if name != "gnutar":
                row[f"{name} /tar"] = round(t / tar, 2)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--images", default="", help="comma-separated image names (default all)")
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args()
    work = args.workdir or bench_filesystem()
    if work.exists():
        run(["rm", "-rf", str(work)])
    work.mkdir(parents=True)
    rows = bench([n for n in args.images.split(",") if n], args.runs, work)
    if args.json:
        print(json.dumps({"machine": machine(), "checkout": rows}, indent=2))
        return
    print(f"# checkout ({machine()}), best of {args.runs}")
    columns = list(dict.fromkeys(k for r in rows for k in r))
    print(table(rows, columns))


if __name__ == "__main__":
    main()
