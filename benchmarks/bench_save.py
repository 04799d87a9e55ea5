"""`save` of an image (docker-archive, uncompressed) vs `cat`-ing its layer tars into one file:
the least any exporter of those bytes must do.  layerstore's save also rebuilds every layer
from raw tar metadata and objects and checks its SHA-256 against the diffID while writing.

    python benchmarks/bench_save.py [--image python] [--runs 7] [--json]

Both write a new file on the benchmark filesystem (harness.bench_filesystem), the page cache
warm for both (the layer tars for cat, the store's objects for save), dirty pages flushed
before each run and not counted after it (neither syncs).  Interleaved, best of --runs.
Target (issue 4): save at >= 80% of cat's speed, i.e. cat_s / save_s >= 0.8.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import (bench_filesystem, corpus_images, fresh_dir, machine, sync,  # noqa: E402
                     timed, warm)

from layerstore import Store  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default="python")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    image = next(i for i in corpus_images() if i.name == args.image)
    work = fresh_dir(bench_filesystem())
    root = work / "store"
    with Store(root) as store:
        store.import_archive(image.plain)
    for layer in image.layers:
        warm(layer)
    out_cat, out_save = work / "cat.tar", work / "save.tar"
    tar_bytes = sum(os.path.getsize(p) for p in image.layers)

    def cat():
        with open(out_cat, "wb") as f:
            subprocess.run(["cat", *map(str, image.layers)], stdout=f, check=True)

    best = {"cat": float("inf"), "save": float("inf")}
    with Store(root) as store:
        store.save([image.config_digest], out_save)     # warms the objects and the index
        for _ in range(args.runs):
            for name, fn, out in (("cat", cat, out_cat),
                                  ("save", lambda: store.save([image.config_digest], out_save),
                                   out_save)):
                out.unlink(missing_ok=True)
                sync()
                best[name] = min(best[name], timed(fn))
    row = {"image": image.name, "layer_bytes": tar_bytes,
           "cat_s": round(best["cat"], 3), "save_s": round(best["save"], 3),
           "save_speed/cat_speed": round(best["cat"] / best["save"], 2),
           "save_MB/s": round(tar_bytes / best["save"] / 1e6)}
    if args.json:
        print(json.dumps({"machine": machine(), "rows": [row]}, indent=2))
        return
    print(f"# {machine()}")
    for k, v in row.items():
        print(f"{k:>22}: {v}")
    print("target: save_speed/cat_speed >= 0.8")


if __name__ == "__main__":
    main()
