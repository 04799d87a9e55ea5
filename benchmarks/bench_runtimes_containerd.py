"""containerd, from "the image is in layerstore" to its first container's process running,
and the disk each way adds.

    python benchmarks/bench_runtimes_containerd.py [--image python] [--rounds 3] [--json]

A containerd (Debian's 1.6 here) and `layerstore snapshotter` are started for the run, with
their roots on a fresh loop-mounted ext4 when root (harness.bench_filesystem); the image is
imported into the store first (not timed).  Contestants, interleaved, each round in a fresh
containerd namespace, after which the image is removed there and containerd's gc runs:
  layerstore        `layerstore containerd-load IMAGE` (manifest + config to containerd, layers
                    claimed: the store's layer dirs) + `ctr run --rm --snapshotter layerstore`
  containerd own    `ctr images import ARCHIVE` (content store + unpack into containerd's
                    overlayfs snapshotter) + `ctr run --rm`; the archive is already on disk
                    and in the page cache (the `layerstore save` that would make it is not
                    counted)
  ctr via snapshotter `ctr images import --snapshotter layerstore ARCHIVE` (containerd applies
                    each layer, the snapshotter ingests it on Commit) + `ctr run --rm`
Times are wall times of the commands (the container runs `true`); "first" is round 1 (layer
dirs not yet built), "best" the best round.  Disk: bytes newly allocated under containerd's
root and the store's root in round 1, each inode once.  Needs root, containerd, ctr, runc.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (bench_filesystem, corpus_images, disk_usage, fresh_dir, machine,  # noqa: E402
                     table, warm)

from layerstore.bench.drivers.containerd import private_config  # noqa: E402


class Bench:
    def __init__(self, work: Path, image, archive: Path) -> None:
        self.work, self.image, self.archive = work, image, archive
        self.sock = str(work / "ctd.sock")
        self.store = work / "store"
        self.layerstore = [sys.executable, "-m", "layerstore", "--root", str(self.store)]
        self.procs: list[subprocess.Popen] = []
        self.namespaces: list[str] = []
        self.tag = ""

    def start(self) -> None:
        (self.work / "config.toml").write_text(private_config(
            self.work / "ctd-root", self.work / "ctd-state", self.sock,
            {"layerstore": self.work / "snapshotter.sock"}))
        log = open(self.work / "containerd.log", "w")
        self.procs.append(subprocess.Popen(["containerd", "--config",
                                            str(self.work / "config.toml")],
                                           stdout=log, stderr=subprocess.STDOUT))
        log = open(self.work / "snapshotter.log", "w")
        self.procs.append(subprocess.Popen(
            [*self.layerstore, "snapshotter", "--address", str(self.work / "snapshotter.sock")],
            stdout=log, stderr=subprocess.STDOUT))
        for path in (self.sock, str(self.work / "snapshotter.sock")):
            end = time.monotonic() + 60
            while not os.path.exists(path):
                if time.monotonic() > end or any(p.poll() is not None for p in self.procs):
                    sys.exit(f"{path} never appeared (see {self.work}/*.log)")
                time.sleep(0.05)
        out = subprocess.run([*self.layerstore, "import", str(self.archive)], check=True,
                             capture_output=True, text=True).stdout
        self.tag = out.split()[1]

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait()
        for ns in self.namespaces:
            for sub in ("runc", "fifo"):
                shutil.rmtree(f"/run/containerd/{sub}/{ns}", ignore_errors=True)

    def ctr(self, ns: str, *args: str) -> None:
        subprocess.run(["ctr", "-a", self.sock, "-n", ns, *args], check=True,
                       stdout=subprocess.DEVNULL)

    def disk(self) -> int:
        return disk_usage(self.work / "ctd-root") + disk_usage(self.store)

    def round(self, name: str, i: int) -> tuple[float, float, int]:
        """One contestant once: (seconds to get the image, seconds of ctr run, bytes added)."""
        ns = f"bench-{name.replace(' ', '-')}-{i}-{os.getpid()}"
        self.namespaces.append(ns)
        snap = [] if name == "containerd own" else ["--snapshotter", "layerstore"]
        before = self.disk() if i == 0 else 0
        os.sync()
        t = time.perf_counter()
        if name == "layerstore":
            subprocess.run([*self.layerstore, "containerd-load", "--address", self.sock,
                            "--namespace", ns, self.tag], check=True, stdout=subprocess.DEVNULL)
        else:
            self.ctr(ns, "images", "import", *snap, str(self.archive))
        load = time.perf_counter() - t
        t = time.perf_counter()
        self.ctr(ns, "run", "--rm", *snap, self.tag, f"c{i}", "true")
        first_run = time.perf_counter() - t
        added = self.disk() - before if i == 0 else 0
        self.ctr(ns, "images", "rm", "--sync", self.tag)
        return load, first_run, added


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", default="python")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_runtimes_containerd needs root (containerd, runc)")
    for tool in ("containerd", "ctr", "runc"):
        if shutil.which(tool) is None:
            sys.exit(f"bench_runtimes_containerd needs {tool} on PATH")
    image = next((i for i in corpus_images() if i.name == args.image), None)
    if image is None:
        sys.exit(f"no image {args.image!r} in the corpus")
    warm(image.plain)
    work = fresh_dir(args.workdir or bench_filesystem(label="ctd"))
    bench = Bench(work, image, image.plain)
    contestants = ["layerstore", "containerd own", "ctr via snapshotter"]
    results = {c: [] for c in contestants}
    try:
        bench.start()
        for i in range(args.rounds):
            for c in contestants:
                results[c].append(bench.round(c, i))
    finally:
        bench.stop()
    rows = []
    for c, rs in results.items():
        totals = [load + r for load, r, _ in rs]
        best = min(range(len(rs)), key=lambda k: totals[k])
        rows.append({"contestant": c, "first_s": round(totals[0], 3),
                     "best_s": round(totals[best], 3),
                     "best_load_s": round(rs[best][0], 3), "best_run_s": round(rs[best][1], 3),
                     "disk_added_MB": round(rs[0][2] / 1e6, 2)})
    own = next(r for r in rows if r["contestant"] == "containerd own")
    for r in rows:
        r["best_vs_own"] = round(r["best_s"] / own["best_s"], 3)
    if args.json:
        print(json.dumps({"machine": machine(), "image": image.name, "rounds": args.rounds,
                          "rows": rows}, indent=2))
        return
    print(f"# containerd: image in layerstore -> first container process ({image.name}, "
          f"{machine()})")
    print(table(rows, ["contestant", "first_s", "best_s", "best_load_s", "best_run_s",
                       "best_vs_own", "disk_added_MB"]))


if __name__ == "__main__":
    main()
