"""Containers of one image: from the command to the container's process running, for the 1st
and the 10th container, and the disk each container adds.

    python benchmarks/bench_run.py [--image python] [--containers 10] [--json]

The image is imported, unpacked or loaded first (not timed) into each contestant's own
directory on a fresh loop-mounted ext4 when root (harness.bench_filesystem).  Contestants,
interleaved container by container, each container kept (not --rm) so its disk shows:
  layerstore   `layerstore run IMAGE CMD` (bundle: overlay over the store's layer dirs + a
               private upper dir; runc run); the 1st container also builds the layer dirs
  umoci+runc   `umoci unpack --image LAYOUT:TAG BUNDLE` (a full rootfs per container; its
               config.json set to CMD without a terminal) + `runc run`
  podman       `podman run --network none --ulimit nofile=1024:1024 --ulimit
               nproc=1024:1024 IMAGE CMD` with its own --root/--runroot (overlay driver,
               cgroupfs, file events, runc), the image loaded with `podman load`
CMD is `python3 -S -c 'print(clock_gettime(CLOCK_MONOTONIC))'`: "to running" is that clock
(the container's python has started) minus the clock before the command, the same Python
start-up in every contestant; "wall" is the whole command (it also waits for the exit and
the runtime's cleanup).  Disk: bytes newly allocated under the contestant's directory by
the 1st container and, on average, by each of the others, each inode once.
Needs root, runc, umoci and podman (a contestant whose tool is missing is left out).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (bench_filesystem, cli_env, corpus_images, fresh_dir, machine, table,  # noqa: E402
                     warm)

PROBE = ["python3", "-S", "-c", "import time; print(time.clock_gettime(time.CLOCK_MONOTONIC))"]
PODMAN_RUN = ["--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit",
              "nproc=1024:1024"]


def _disk(path: Path) -> int:
    """Bytes allocated under path, each inode once, not crossing into mounts (a container's
    rootfs is an overlay whose files are the layer dirs' and the upper dir's)."""
    seen = set()
    total = 0
    dev = os.lstat(path).st_dev
    for dirpath, dirnames, filenames in os.walk(path):
        for name in list(dirnames) + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_dev != dev:
                if name in dirnames:
                    dirnames.remove(name)
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def _timed(cmd: list[str], **kw) -> tuple[float, float]:
    """(seconds to the probe's clock, wall seconds) of a command whose container runs PROBE."""
    t0 = time.clock_gettime(time.CLOCK_MONOTONIC)
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kw)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd[:3])} ... failed: {proc.stderr.strip()}")
    out = proc.stdout
    wall = time.clock_gettime(time.CLOCK_MONOTONIC) - t0
    return float(out.split()[-1]) - t0, wall


class Layerstore:
    name = "layerstore"

    def __init__(self, work: Path, image) -> None:
        self.dir = work / "layerstore"
        self.cli = [sys.executable, "-m", "layerstore", "--root", str(self.dir)]
        self.env = cli_env()
        out = subprocess.run([*self.cli, "import", str(image.plain)], check=True, env=self.env,
                             capture_output=True, text=True).stdout
        self.tag = out.split()[1]

    def container(self, i: int) -> tuple[float, float]:
        return _timed([*self.cli, "run", "--name", f"c{i}", self.tag, *PROBE], env=self.env)

    def cleanup(self) -> None:
        runs = self.dir / "runs"
        for bundle in sorted(runs.iterdir()) if runs.is_dir() else []:
            subprocess.run([*self.cli, "bundle", "--remove", str(bundle)], check=True,
                           env=self.env)


class UmociRunc:
    name = "umoci+runc"

    def __init__(self, work: Path, image, layout: Path, ref: str) -> None:
        self.dir = work / "umoci"
        self.dir.mkdir()
        self.layout, self.ref = layout, ref

    def container(self, i: int) -> tuple[float, float]:
        bundle = self.dir / f"b{i}"
        t0 = time.clock_gettime(time.CLOCK_MONOTONIC)
        subprocess.run(["umoci", "unpack", "--image", f"{self.layout}:{self.ref}", str(bundle)],
                       check=True, capture_output=True)
        config = json.loads((bundle / "config.json").read_text())
        config["process"]["terminal"] = False
        config["process"]["args"] = PROBE
        (bundle / "config.json").write_text(json.dumps(config))
        out = subprocess.run(["runc", "--root", str(self.dir / "runc"), "run", "-b",
                              str(bundle), f"c{i}"], check=True, capture_output=True,
                             text=True, stdin=subprocess.DEVNULL).stdout
        wall = time.clock_gettime(time.CLOCK_MONOTONIC) - t0
        return float(out.split()[-1]) - t0, wall

    def cleanup(self) -> None:
        pass


class Podman:
    name = "podman"

    def __init__(self, work: Path, image) -> None:
        self.dir = work / "podman"
        # podman refuses a runroot path over 50 characters: a short one outside the work dir
        # (it holds only run state, no container's files).
        self.runroot = tempfile.mkdtemp(prefix="podrun-", dir="/run" if os.path.isdir("/run")
                                        else None)
        self.base = ["podman", "--root", str(self.dir / "root"), "--runroot",
                     self.runroot, "--storage-driver", "overlay",
                     "--cgroup-manager", "cgroupfs", "--events-backend", "file",
                     "--runtime", "runc",
                     "--tmpdir", str(self.dir / "tmp")]
        self.dir.mkdir()
        load = subprocess.run([*self.base, "load", "-i", str(image.plain)],
                              capture_output=True, text=True)
        if load.returncode:
            sys.exit(f"podman load failed: {load.stderr.strip()}")
        self.tag = f"docker.io/corpus/{image.name}:latest"

    def container(self, i: int) -> tuple[float, float]:
        return _timed([*self.base, "run", "--name", f"c{i}", *PODMAN_RUN, self.tag, *PROBE])

    def cleanup(self) -> None:
        # Not `podman system reset`: it also removes networks from the host's config.
        subprocess.run([*self.base, "rm", "--all", "--force"], capture_output=True)
        subprocess.run([*self.base, "rmi", "--all", "--force"], capture_output=True)
        with open("/proc/self/mounts") as f:
            points = [line.split()[1] for line in f]
        for p in sorted((p for p in points if p.startswith((str(self.dir), self.runroot))),
                        key=len, reverse=True):
            subprocess.run(["umount", "-l", p], capture_output=True)
        shutil.rmtree(self.runroot, ignore_errors=True)


def _oci_layout(work: Path, image, cli: list[str], tag: str) -> tuple[Path, str]:
    """The image as an OCI layout directory, for umoci (from `layerstore save --format oci`)."""
    tar = work / "image.oci.tar"
    subprocess.run([*cli, "save", tag, "--format", "oci", "-o", str(tar)], check=True)
    layout = work / "layout"
    with tarfile.open(tar) as tf:
        tf.extractall(layout)
    tar.unlink()
    index = json.loads((layout / "index.json").read_text())
    ref = index["manifests"][0].get("annotations", {}).get("org.opencontainers.image.ref.name")
    return layout, ref or "latest"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", default="python")
    ap.add_argument("--containers", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_run needs root (overlay mounts, runc)")
    if shutil.which("runc") is None:
        sys.exit("bench_run needs runc on PATH")
    image = next((i for i in corpus_images() if i.name == args.image), None)
    if image is None:
        sys.exit(f"no image {args.image!r} in the corpus")
    warm(image.plain)
    work = fresh_dir(args.workdir or bench_filesystem(label="run"))
    ours = Layerstore(work, image)
    contestants = [ours]
    if shutil.which("umoci"):
        layout, ref = _oci_layout(work, image, ours.cli, ours.tag)
        contestants.append(UmociRunc(work, image, layout, ref))
    if shutil.which("podman"):
        contestants.append(Podman(work, image))
    results = {c.name: [] for c in contestants}
    disk = {c.name: [_disk(c.dir)] for c in contestants}
    try:
        for i in range(args.containers):
            for c in contestants:
                os.sync()
                results[c.name].append(c.container(i))
                disk[c.name].append(_disk(c.dir))
    finally:
        for c in contestants:
            c.cleanup()
    rows = []
    n = args.containers
    for name, rs in results.items():
        d = disk[name]
        rows.append({"contestant": name,
                     "1st_running_s": round(rs[0][0], 3), "1st_wall_s": round(rs[0][1], 3),
                     f"{n}th_running_s": round(rs[-1][0], 3),
                     f"{n}th_wall_s": round(rs[-1][1], 3),
                     "median_running_s": round(sorted(r[0] for r in rs)[n // 2], 3),
                     "1st_disk_MB": round((d[1] - d[0]) / 1e6, 2),
                     "each_later_disk_MB": round((d[-1] - d[1]) / max(n - 1, 1) / 1e6, 3)})
    base = rows[0][f"{n}th_running_s"]
    for r in rows:
        r[f"{n}th_vs_layerstore"] = round(r[f"{n}th_running_s"] / base, 2)
    columns = ["contestant", "1st_running_s", "1st_wall_s", f"{n}th_running_s",
               f"{n}th_wall_s", "median_running_s", f"{n}th_vs_layerstore", "1st_disk_MB",
               "each_later_disk_MB"]
    if args.json:
        print(json.dumps({"machine": machine(), "image": image.name, "containers": n,
                          "rows": rows}, indent=2))
        return
    print(f"# containers of {image.name}: command -> process running ({machine()})")
    print(table(rows, columns))


if __name__ == "__main__":
    main()
