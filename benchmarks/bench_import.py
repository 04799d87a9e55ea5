"""Image import, side by side: layerstore vs GNU tar extracting each layer into a directory of
its own (the overlay2-style baseline), Python's tarfile doing the same, and ostree committing
each layer tar; then disk use, peak memory, and the gzip OCI form vs only decompressing it.

    python benchmarks/bench_import.py [--runs 3] [--json] [--drivers layerstore,gnutar,...]

Scenarios (each driver starts from empty storage, runs interleaved, best of --runs):
  <image>            import that image into empty storage (from the decompressed docker-archive)
  rebuilt|python     import rebuilt into storage that holds python
  disk               bytes used after base + python + rebuilt (each inode counted once)
  peak RSS           of a process importing python
  oci-gzip           layerstore importing python as a gzip OCI layout, vs isal decompressing its
                     layer blobs to nothing (the least any importer of that form must do)
Ratios are against gnutar (< 1: faster or smaller).  layerstore's time includes verifying every
digest, the index commit and making its objects durable (syncfs); GNU tar's does not sync,
gnutar_sync's does (`sync -f` after each image: the durable peer).  Each driver writes to a
fresh loop-mounted filesystem of its own when root (harness.bench_filesystem).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from drivers import DRIVERS, load  # noqa: E402
from harness import (CACHE, bench_filesystem, corpus_images, machine, run,  # noqa: E402
                     sync, table, timed, warm)


def _drivers(names: list[str], workdir: Path | None) -> dict:
    """Each driver on a fresh filesystem of its own (or under workdir when given), so that
    one's writeback and freed inodes never land in another's time."""
    out = {}
    for name in names:
        cls = load(name)
        why = cls.missing()
        if why:
            print(f"skipping {name}: {why}", file=sys.stderr)
            continue
        out[name] = cls((workdir or bench_filesystem(label=name)) / name)
    return out


def bench_times(drivers: dict, runs: int) -> list[dict]:
    images = {i.name: i for i in corpus_images()}
    for image in images.values():
        warm(image.plain)
        for layer in image.layers:
            warm(layer)
    scenarios = [(name, [], [image]) for name, image in images.items()]
    if "python" in images and "rebuilt" in images:
        scenarios.append(("rebuilt|python", [images["python"]], [images["rebuilt"]]))
    rows = []
    for label, before, timed_images in scenarios:
        best = {name: float("inf") for name in drivers}
        for _ in range(runs):
            for name, d in drivers.items():
                d.reset()
                for image in before:
                    d.import_image(image)
                sync()
                best[name] = min(best[name], timed(lambda: [d.import_image(i)
                                                            for i in timed_images]))
        base = best.get("gnutar")
        row = {"scenario": label}
        for name, t in best.items():
            row[f"{name}_s"] = round(t, 3)
            if base and name != "gnutar":
                row[f"{name}/gnutar"] = round(t / base, 2)
        if "layerstore" in best and "gnutar_sync" in best:
            row["layerstore/gnutar_sync"] = round(best["layerstore"] / best["gnutar_sync"], 2)
        rows.append(row)
    return rows


def bench_disk(drivers: dict) -> dict:
    out = {}
    for name, d in drivers.items():
        d.reset()
        for image in corpus_images():
            d.import_image(image)
        out[name] = d.disk_usage()
    return out


RSS_CHILD = textwrap.dedent("""
    import resource, sys
    sys.path.insert(0, sys.argv[1])
    from pathlib import Path
    from drivers import load
    from harness import corpus_images
    d = load(sys.argv[2])(Path(sys.argv[3]))
    image = next(i for i in corpus_images() if i.name == sys.argv[4])
    d.import_image(image)
    d.cleanup()
    own = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(max(own, children))
""")


def bench_rss(names: list[str], workdir: Path, image: str = "python") -> dict:
    """Peak RSS (MiB) of a fresh process importing the image; for drivers that run a tool,
    the larger of the Python driver and the tool."""
    out = {}
    for name in names:
        res = subprocess.run([sys.executable, "-c", RSS_CHILD, str(Path(__file__).parent), name,
                              str(workdir / f"rss-{name}"), image],
                             check=True, capture_output=True, text=True)
        out[name] = round(int(res.stdout) / 1024, 1)
    return out


def _oci_gzip_layout(image) -> Path | None:
    """python as an OCI layout with gzip layers (skopeo's default compression), made once."""
    layout = CACHE / f"{image.name}.oci-gzip"
    if not (layout / "index.json").exists():
        if shutil.which("skopeo") is None:
            return None
        shutil.rmtree(layout, ignore_errors=True)
        run(["skopeo", "copy", "-q", "--dest-compress", f"docker-archive:{image.plain}",
             f"oci:{layout}:latest"])
    return layout


def _decompress_only(blobs: list[Path]) -> None:
    from isal import igzip

    for blob in blobs:
        with igzip.open(blob, "rb") as f:
            while f.read(1 << 20):
                pass


def bench_oci_gzip(workdir: Path, runs: int) -> dict | None:
    image = next((i for i in corpus_images() if i.name == "python"), None)
    layout = _oci_gzip_layout(image) if image else None
    if layout is None:
        return None
    index = json.loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"]
    manifest = json.loads((layout / "blobs" / "sha256" / manifest_digest[7:]).read_text())
    blobs = [layout / "blobs" / "sha256" / layer["digest"][7:] for layer in manifest["layers"]]
    for blob in blobs:
        warm(blob)
    ours = load("layerstore")(workdir / "oci-gzip")
    best_ours = best_gunzip = float("inf")
    for _ in range(runs):
        best_gunzip = min(best_gunzip, timed(_decompress_only, blobs))
        ours.reset()
        sync()
        best_ours = min(best_ours, timed(ours.import_archive, layout))
    ours.cleanup()
    return {"compressed_MB": round(sum(b.stat().st_size for b in blobs) / 1e6, 1),
            "layerstore_s": round(best_ours, 3), "isal_decompress_only_s": round(best_gunzip, 3),
            "ratio": round(best_ours / best_gunzip, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--drivers", default=",".join(DRIVERS))
    ap.add_argument("--workdir", type=Path, help="default: a fresh loop-mounted ext4 (root), "
                    "else " + str(CACHE / "work"))
    args = ap.parse_args()
    drivers = _drivers(args.drivers.split(","), args.workdir)
    times = bench_times(drivers, args.runs)
    disk = bench_disk(drivers)
    for d in drivers.values():
        d.cleanup()
    own = args.workdir or bench_filesystem(label="rss")
    rss = bench_rss(list(drivers), own)
    oci = bench_oci_gzip(own, args.runs)
    result = {"machine": machine(), "times": times, "disk_bytes": disk, "peak_rss_MiB": rss,
              "oci_gzip": oci}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"# image import ({machine()}), best of {args.runs}")
    columns = ["scenario"] + [k for k in times[0] if k != "scenario"]
    print(table(times, columns))
    base = disk.get("gnutar")
    print("\n# disk used by base + python + rebuilt (each inode once)")
    print(table([{"driver": n, "MB": round(b / 1e6, 1),
                  "vs gnutar": round(b / base, 2) if base else ""} for n, b in disk.items()],
                ["driver", "MB", "vs gnutar"]))
    print("\n# peak RSS importing python (MiB)")
    print(table([{"driver": n, "MiB": v} for n, v in rss.items()], ["driver", "MiB"]))
    if oci:
        print("\n# python as a gzip OCI layout: layerstore import vs isal decompressing the blobs")
        print(table([oci], list(oci)))


if __name__ == "__main__":
    main()
