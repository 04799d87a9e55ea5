"""gc with nothing to free, and du, on a store holding the whole corpus.

    python benchmarks/bench_gc.py [--runs 9] [--json]

Imports every corpus image into a fresh store on the benchmark filesystem
(harness.bench_filesystem), then times, best of --runs: gc with nothing to free (the common
case: it must not walk objects/, target < 100 ms), gc --full (which walks objects/ for files
the index does not know: the cost a store pays after an interrupted import), and du.  Also
prints du's figures.  The peer, as elsewhere in benchmarks/, is a plain os.walk of objects/
with an lstat per file (what `du -sl` does), timed side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import bench_filesystem, corpus_images, fresh_dir, machine, timed  # noqa: E402

from layerstore import Store  # noqa: E402


def walk_objects(root: Path) -> int:
    total = 0
    for dirpath, _, names in os.walk(root / "objects"):
        for n in names:
            total += os.lstat(os.path.join(dirpath, n)).st_blocks
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    images = corpus_images()
    work = fresh_dir(bench_filesystem())
    root = work / "store"
    with Store(root) as store:
        for image in images:
            store.import_archive(image.plain)
    best = {"gc": float("inf"), "gc_full": float("inf"), "du": float("inf"),
            "walk": float("inf")}
    with Store(root) as store:
        first = store.gc()      # nothing to free: a fresh store of whole imports
        assert first.files == 0 and first.layers == 0, first
        for _ in range(args.runs):
            best["gc"] = min(best["gc"], timed(store.gc))
            best["gc_full"] = min(best["gc_full"], timed(store.gc, False, True))
            best["du"] = min(best["du"], timed(store.du))
            best["walk"] = min(best["walk"], timed(walk_objects, root))
        du = store.du()
    row = {"images": len(images), "objects": du.objects, "inodes": du.inodes,
           "gc_nothing_ms": round(best["gc"] * 1e3, 1),
           "gc_full_ms": round(best["gc_full"] * 1e3, 1),
           "du_ms": round(best["du"] * 1e3, 1),
           "walk_lstat_ms": round(best["walk"] * 1e3, 1),
           "logical_MB": round(du.logical_bytes / 1e6, 1),
           "layer_MB": round(du.layer_bytes / 1e6, 1),
           "disk_MB": round(du.disk_bytes / 1e6, 1),
           "objects_MB": round(du.object_bytes / 1e6, 1),
           "index_MB": round(du.index_bytes / 1e6, 1),
           "dedup_ratio": du.dedup_ratio,
           "per_image": [{"id": u.id[7:19], "tags": list(u.tags),
                          "logical_MB": round(u.logical_bytes / 1e6, 1),
                          "disk_MB": round(u.disk_bytes / 1e6, 1),
                          "shared_MB": round(u.shared_bytes / 1e6, 1),
                          "unique_MB": round(u.unique_bytes / 1e6, 1)} for u in du.images]}
    if args.json:
        print(json.dumps({"machine": machine(), "rows": [row]}, indent=2))
        return
    print(f"# {machine()}")
    for k, v in row.items():
        if k != "per_image":
            print(f"{k:>16}: {v}")
    for u in row["per_image"]:
        print(f"  {u['id']} {','.join(u['tags'])}: logical {u['logical_MB']} MB, on disk "
              f"{u['disk_MB']} MB, shared {u['shared_MB']} MB, unique {u['unique_MB']} MB")
    print("target: gc_nothing_ms < 100")


if __name__ == "__main__":
    main()
