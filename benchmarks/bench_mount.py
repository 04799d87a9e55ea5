"""Containers on overlayfs: the time to mount one more container of an image already mounted
(the issue's target: under 50 ms for python), against the floor any overlay driver pays,
a bare mount(2) of the same lower dirs with a fresh upper and work dir.

    python benchmarks/bench_mount.py [--image python] [--mounts 20] [--json]

Scenarios (a store on a fresh loop-mounted ext4 when root, see harness.bench_filesystem):
  first mount       Store.mount of the image into an empty layer cache: builds every layer dir
                    from the objects by hardlinks, then mounts
  next mount        Store.mount of another container, layer dirs cached: resolve the image,
                    make upper/work dirs, record the container, mount(2); best and median
  bare mount(2)     the same lower dirs, mkdir upper/work + mount(2) alone (the floor);
                    interleaved with "next mount", so both see the same machine state
  umount            Store.umount: umount2(2) and removing the container's dirs
  checkout          Store.checkout of the image (what a container costs without overlay)
Needs root and the overlay filesystem.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import bench_filesystem, corpus_images, fresh_dir, machine, table, warm  # noqa: E402

from layerstore import Store  # noqa: E402

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _bare_mount(lowers: list[str], base: Path, i: int) -> str:
    up, work, target = base / f"u{i}", base / f"w{i}", base / f"m{i}"
    for d in (up, work, target):
        d.mkdir()
    opts = (f"lowerdir={':'.join(lowers)},upperdir={up},workdir={work},"
            "index=off,redirect_dir=off,metacopy=off")
    if _libc.mount(b"overlay", str(target).encode(), b"overlay", 0, opts.encode()) != 0:
        raise OSError(ctypes.get_errno(), f"mount {target}")
    return str(target)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", default="python")
    ap.add_argument("--mounts", type=int, default=20, help="containers mounted after the first")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_mount needs root (overlay mounts)")
    image = next((i for i in corpus_images() if i.name == args.image), None)
    if image is None:
        sys.exit(f"no image {args.image!r} in the corpus")
    warm(image.plain)
    work = fresh_dir(args.workdir or bench_filesystem())
    mounted: list[str] = []
    store = Store(work / "store")
    try:
        store.import_archive(image.plain)
        ref = image.config_digest
        t = time.perf_counter()
        first = store.mount(ref, work / "c0")
        first_s = time.perf_counter() - t
        mounted.append(first.mountpoint)

        bare_dir = work / "bare"
        bare_dir.mkdir()
        ours, bare, umounts = [], [], []
        for i in range(1, args.mounts + 1):
            t = time.perf_counter()
            m = store.mount(ref, work / f"c{i}")
            ours.append(time.perf_counter() - t)
            mounted.append(m.mountpoint)
            t = time.perf_counter()
            target = _bare_mount(list(first.lowers), bare_dir, i)
            bare.append(time.perf_counter() - t)
            mounted.append(target)
        # Every container sees the same lower inodes: one tree of layer dirs, not N.
        probe = "usr/bin/python3"
        inos = {os.stat(os.path.join(p, probe)).st_ino for p in mounted}
        for p in list(mounted):
            if p.startswith(str(bare_dir)):
                _libc.umount2(p.encode(), 0)
            else:
                t = time.perf_counter()
                store.umount(p)
                umounts.append(time.perf_counter() - t)
            mounted.remove(p)
        t = time.perf_counter()
        store.checkout(ref, work / "checkout")
        checkout_s = time.perf_counter() - t
        layer_dirs = len(os.listdir(os.path.join(store.root, "layers")))
    finally:
        for p in mounted:
            _libc.umount2(p.encode(), 2)    # MNT_DETACH: never leave a benchmark mount behind
        store.close()

    result = {
        "machine": machine(), "image": image.name, "layers": len(image.diff_ids),
        "containers": args.mounts + 1, "layer_dirs_cached": layer_dirs,
        "distinct_lower_inodes_of_" + probe: len(inos),
        "first_mount_ms": _ms(first_s),
        "next_mount_best_ms": _ms(min(ours)), "next_mount_median_ms": _ms(statistics.median(ours)),
        "next_mount_max_ms": _ms(max(ours)),
        "bare_mount2_best_ms": _ms(min(bare)),
        "bare_mount2_median_ms": _ms(statistics.median(bare)),
        "next/bare (median)": round(statistics.median(ours) / statistics.median(bare), 2),
        "umount_median_ms": _ms(statistics.median(umounts)),
        "checkout_ms": _ms(checkout_s),
        "target_next_mount_ms": 50,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"# overlay mounts of {image.name} ({machine()})")
    print(table([{"what": k, "value": v} for k, v in result.items() if k != "machine"],
                ["what", "value"]))


if __name__ == "__main__":
    main()
