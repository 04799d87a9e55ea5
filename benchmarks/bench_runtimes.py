"""Runtimes served from the store: the time from "image in layerstore" to the first
container's process running, and the disk that adds, against the same image loaded into the
runtime's own store.

    python benchmarks/bench_runtimes.py [--image python] [--rounds 3] [--json]

podman (runtimes/cstore.py):
  layerstore   `Store.cstore` of the image just imported (its layer dirs built from the
               objects by hardlinks, containers-storage metadata and tar-split written), then
               `podman run` with the store as overlay.imagestore, until the container's first
               line of output arrives
  podman load  `podman load` of the same docker-archive (uncompressed, in the page cache)
               into an empty podman store, then the same `podman run`
  disk         bytes allocated (each inode once) that each adds: for layerstore the layer
               dirs, the exported store and podman's root; for podman load, podman's root
Each round starts from a fresh layerstore store (the import is not timed) and a fresh podman
root, contestants interleaved; the best round is kept.  Needs root, podman and overlay.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (bench_filesystem, corpus_images, disk_usage, fresh_dir, machine,  # noqa: E402
                     sync, table, warm)

from layerstore import Store  # noqa: E402


# ---- podman -----------------------------------------------------------------------------------

class _Podman:
    """podman with a root, runroot and config of its own; imagestore: a read-only store."""

    def __init__(self, base: Path, imagestore: Path | None) -> None:
        base.mkdir(parents=True)
        (base / "tmp").mkdir()
        # podman refuses a runroot longer than 50 characters.
        self.runroot = tempfile.mkdtemp(prefix="lsb-", dir="/tmp")
        (base / "containers.conf").write_text(
            '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
            f'events_logfile_path = "{base}/events.log"\ntmp_dir = "{base}/tmp"\n'
            f'static_dir = "{base}/root/libpod"\n')
        self.root = base / "root"
        self.env = {**os.environ, "CONTAINERS_CONF": str(base / "containers.conf")}
        self.flags = ["--root", str(self.root), "--runroot", f"{self.runroot}/run",
                      "--storage-driver", "overlay"]
        if imagestore is not None:
            self.flags += ["--storage-opt", f"overlay.imagestore={imagestore}"]

    def __call__(self, *args) -> None:
        subprocess.run(["podman", *self.flags, *args], env=self.env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def first_output(self, image: str) -> float:
        """Runs a container; returns when its process's first line arrives (perf_counter)."""
        proc = subprocess.Popen(
            ["podman", *self.flags, "run", "--rm", "--network", "none", "--ulimit",
             "nofile=1024:1024", "--ulimit", "nproc=1024:1024", image, "echo", "running"],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = proc.stdout.readline()
        t = time.perf_counter()
        _, err = proc.communicate()
        if line != b"running\n" or proc.returncode:
            raise SystemExit(f"podman run failed: {err.decode().strip()}")
        return t

    def close(self) -> None:
        with open("/proc/self/mounts") as f:
            points = [line.split()[1] for line in f]
        for p in sorted((p for p in points if p.startswith(self.runroot)), key=len,
                        reverse=True):
            subprocess.run(["umount", "-l", p], check=False)
        shutil.rmtree(self.runroot, ignore_errors=True)


def podman_layerstore_round(image, work: Path) -> dict:
    """Image in layerstore -> cstore -> podman run."""
    base = fresh_dir(work / "layerstore")
    with Store(base / "store") as store:
        store.import_archive(image.plain)
        before = disk_usage(base)
        podman = _Podman(base / "podman", base / "cs")
        try:
            sync()
            t = time.perf_counter()
            store.cstore(base / "cs", [image.config_digest])
            exported = time.perf_counter()
            running = podman.first_output(image.config_digest.split(":")[1])
        finally:
            podman.close()
        added = disk_usage(base) - before
    return {"export_s": exported - t, "run_s": running - exported, "total_s": running - t,
            "disk_added": added}


def podman_load_round(image, work: Path) -> dict:
    """The docker-archive -> podman load -> podman run."""
    base = fresh_dir(work / "podman-load")
    podman = _Podman(base / "podman", None)
    try:
        sync()
        t = time.perf_counter()
        podman("load", "-i", str(image.plain))
        loaded = time.perf_counter()
        running = podman.first_output(image.config_digest.split(":")[1])
    finally:
        podman.close()
    return {"export_s": loaded - t, "run_s": running - loaded, "total_s": running - t,
            "disk_added": disk_usage(base / "podman" / "root")}


def bench_podman(image, work: Path, rounds: int) -> list[dict]:
    if shutil.which("podman") is None:
        raise SystemExit("bench_runtimes (podman) needs podman on PATH")
    best: dict[str, dict] = {}
    for _ in range(rounds):
        for name, fn in (("layerstore cstore + podman run", podman_layerstore_round),
                         ("podman load + podman run", podman_load_round)):
            r = fn(image, work)
            if name not in best or r["total_s"] < best[name]["total_s"]:
                best[name] = r
    ours, peer = best["layerstore cstore + podman run"], best["podman load + podman run"]
    rows = []
    for name, r in best.items():
        rows.append({"runtime": "podman", "how": name,
                     "to store (s)": round(r["export_s"], 3), "run (s)": round(r["run_s"], 3),
                     "to running (s)": round(r["total_s"], 3),
                     "ratio": round(r["total_s"] / peer["total_s"], 2),
                     "disk added (MB)": round(r["disk_added"] / 1e6, 1)})
    rows[0]["disk ratio"] = round(ours["disk_added"] / peer["disk_added"], 3)
    return rows


# ---- main -------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", default="python")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_runtimes needs root (overlay mounts)")
    image = next((i for i in corpus_images() if i.name == args.image), None)
    if image is None:
        sys.exit(f"no image {args.image!r} in the corpus")
    warm(image.plain)
    work = fresh_dir(args.workdir or bench_filesystem())
    rows = bench_podman(image, work, args.rounds)
    if args.json:
        print(json.dumps({"machine": machine(), "image": image.name, "rows": rows}, indent=2))
        return
    print(f"# {image.name}: image in layerstore -> first container running ({machine()})")
    print(table(rows, ["runtime", "how", "to store (s)", "run (s)", "to running (s)", "ratio",
                       "disk added (MB)", "disk ratio"]))


if __name__ == "__main__":
    main()
