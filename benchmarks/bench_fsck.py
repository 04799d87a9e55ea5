"""fsck of a store holding every corpus image: GB/s of object bytes checked, and total time.

    python benchmarks/bench_fsck.py [--runs 5] [--json]

The store is made once (all corpus images imported) outside the timing and warmed into the
page cache.  Side by side, interleaved, best of --runs: `Store.fsck()` against a peer that
only hashes the same object files with the `blake3` package (Rust) on two threads - what
fsck's object pass costs with nothing else done.  The target (issue 5) is >= 1 GB/s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import bench_filesystem, corpus_images, fresh_dir, machine, timed  # noqa: E402

from layerstore import Store  # noqa: E402


def object_files(store: Path) -> list[tuple[str, int]]:
    out = []
    for dirpath, _, names in os.walk(store / "objects"):
        for n in names:
            p = os.path.join(dirpath, n)
            out.append((p, os.stat(p).st_size))
    return out


def peer_blake3(files: list[tuple[str, int]]) -> None:
    import blake3
    it = iter(sorted(files, key=lambda f: -f[1]))

    def work():
        for path, _ in it:
            with open(path, "rb") as f:
                blake3.blake3(f.read()).digest()
    t = threading.Thread(target=work)
    t.start()
    work()
    t.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    images = corpus_images()
    work = fresh_dir(bench_filesystem() / "fsck")
    root = work / "store"
    with Store(root) as s:
        for image in images:
            s.import_archive(image.plain)
    files = object_files(root)
    total = sum(size for _, size in files)
    peer_blake3(files)          # warms the page cache

    best = {"layerstore fsck": float("inf"), "blake3 package (2 threads)": float("inf")}
    with Store(root) as s:
        for _ in range(args.runs):
            t = timed(lambda: (problems := s.fsck()) and sys.exit(f"not clean: {problems[:3]}"))
            best["layerstore fsck"] = min(best["layerstore fsck"], t)
            t = timed(peer_blake3, files)
            best["blake3 package (2 threads)"] = min(best["blake3 package (2 threads)"], t)

    rows = [{"contestant": name, "seconds": round(t, 4), "GB/s": round(total / t / 1e9, 2),
             "vs fsck": round(t / best["layerstore fsck"], 2)} for name, t in best.items()]
    result = {"machine": machine(), "objects": len(files), "object_bytes": total,
              "images": [i.name for i in images], "results": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['machine']}\nstore: {len(images)} images, {len(files)} objects, "
          f"{total / 1e6:.1f} MB of object bytes")
    for r in rows:
        print(f"  {r['contestant']:<28} {r['seconds']:8.4f} s  {r['GB/s']:6.2f} GB/s  "
              f"x{r['vs fsck']}")


if __name__ == "__main__":
    main()
