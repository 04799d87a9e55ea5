"""Layer ingest throughput on the corpus layers, side by side with GNU tar extracting the same
layer tar, plus the peak RSS of ingesting a 1 GiB single-file layer.

    python benchmarks/bench_ingest.py [--runs 3] [--json] [--no-rss]

For each distinct layer: GNU tar -x into an empty directory; layerstore into an empty store
(every object new); layerstore again into that store (every object present).  Runs are
interleaved and the best of --runs is kept; ratios are layerstore / GNU tar (< 1 is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from drivers import load  # noqa: E402
from harness import (CACHE, bench_filesystem, corpus_images, machine, sync,  # noqa: E402
                     table, timed, warm)


def layer_stats(path: Path) -> tuple[int, int]:
    files = size = 0
    with tarfile.open(path) as tf:
        for m in tf:
            if m.isfile():
                files += 1
                size += m.size
    return files, size


def bench_layers(runs: int, workdir: Path) -> list[dict]:
    gnutar = load("gnutar")(workdir / "gnutar")
    ours = load("layerstore")(workdir / "layerstore")
    seen = {}
    for image in corpus_images():
        for layer, diff_id in zip(image.layers, image.diff_ids):
            seen.setdefault(diff_id, (image.name, layer))
    rows = []
    for diff_id, (image_name, layer) in seen.items():
        warm(layer)
        files, file_bytes = layer_stats(layer)
        best = {"tar": float("inf"), "first": float("inf"), "second": float("inf")}
        for _ in range(runs):
            gnutar.reset()
            sync()
            best["tar"] = min(best["tar"], timed(gnutar.import_layer, layer, diff_id))
            ours.reset()
            sync()
            best["first"] = min(best["first"], timed(ours.import_layer, layer, diff_id))
            sync()
            best["second"] = min(best["second"], timed(ours.import_layer, layer, diff_id))
        size = layer.stat().st_size
        rows.append({
            "layer": f"{image_name}:{diff_id[7:19]}", "tar_MB": round(size / 1e6, 1),
            "files": files,
            "gnutar_s": round(best["tar"], 3),
            "first_s": round(best["first"], 3),
            "first_ratio": round(best["first"] / best["tar"], 2),
            "first_MB/s": round(size / best["first"] / 1e6),
            "first_files/s": round(files / best["first"]),
            "second_s": round(best["second"], 3),
            "second_ratio": round(best["second"] / best["tar"], 2),
        })
    gnutar.cleanup()
    ours.cleanup()
    return rows


RSS_CHILD = textwrap.dedent("""
    import sys
    from layerstore import _native
    s = _native.ObjectStore(sys.argv[2])
    with open(sys.argv[1], "rb") as f:
        r = _native.ingest_stream(f, s)
    assert r.stats.new_objects == 1
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec.
    print(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")))
""")


def bench_rss(workdir: Path) -> dict:
    """Peak RSS of a child process ingesting a layer that holds one 1 GiB file."""
    layer = CACHE / "single-1GiB.tar"
    size = 1 << 30
    if not layer.exists():
        ti = tarfile.TarInfo("big.bin")
        ti.size = size
        with open(layer, "wb") as f:
            f.write(ti.tobuf(tarfile.PAX_FORMAT))
            block = os.urandom(1 << 20)
            for _ in range(size >> 20):
                f.write(block)
            f.write(bytes(1024))
    store = workdir / "rss-store"
    subprocess.run(["rm", "-rf", str(store)], check=True)
    store.mkdir(parents=True)
    out = subprocess.run([sys.executable, "-c", RSS_CHILD, str(layer), str(store)],
                         check=True, capture_output=True, text=True)
    subprocess.run(["rm", "-rf", str(store)], check=True)
    base = subprocess.run([sys.executable, "-c", "from layerstore import _native; print(next("
                           "l.split()[1] for l in open('/proc/self/status') if "
                           "l.startswith('VmHWM')))"],
                          check=True, capture_output=True, text=True)
    return {"layer_bytes": layer.stat().st_size, "peak_rss_MiB": round(int(out.stdout) / 1024, 1),
            "python_with_layerstore_imported_MiB": round(int(base.stdout) / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-rss", action="store_true", help="skip the 1 GiB peak-RSS run")
    ap.add_argument("--workdir", type=Path, help="default: a fresh loop-mounted ext4 (root), "
                    "else " + str(CACHE / "work"))
    args = ap.parse_args()
    args.workdir = args.workdir or bench_filesystem()
    rows = bench_layers(args.runs, args.workdir)
    rss = None if args.no_rss else bench_rss(args.workdir)
    if args.json:
        print(json.dumps({"machine": machine(), "layers": rows, "rss": rss}, indent=2))
        return
    print(f"# layer ingest vs GNU tar -x ({machine()}), best of {args.runs}")
    print(table(rows, list(rows[0])))
    if rss:
        print(f"\npeak RSS ingesting a 1 GiB single-file layer: {rss['peak_rss_MiB']} MiB "
              f"(Python with layerstore imported: {rss['python_with_layerstore_imported_MiB']}"
              " MiB)")


if __name__ == "__main__":
    main()
