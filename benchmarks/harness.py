"""Shared pieces of the benchmarks: the corpus unpacked once, timing side by side, disk use.

These machines are noisy, so every figure is a ratio against a peer run in the same process
tree, interleaved (A B A B ...), and the best of several runs is kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("LAYERSTORE_CORPUS", REPO.parent / "shared" / "corpus"))
CACHE = Path(os.environ.get("LAYERSTORE_BENCH_CACHE", "/var/tmp/layerstore-bench"))


@dataclass
class BenchImage:
    """An image as the benchmarks see it: its name, archive, and ordered layer tars."""

    name: str
    archive: Path
    layers: list[Path]
    diff_ids: list[str]
    config: dict = field(default_factory=dict)
    config_digest: str = ""     # the image ID

    @property
    def plain(self) -> Path:
        """The docker-archive decompressed: a seekable tar, as `docker save` writes it."""
        return CACHE / f"{self.name}.docker.tar"


def corpus_images() -> list[BenchImage]:
    """Every docker-archive of the corpus, unpacked into CACHE once (reused across runs)."""
    import zstandard

    if not CORPUS.is_dir():
        sys.exit(f"no corpus at {CORPUS} (set LAYERSTORE_CORPUS)")
    images = []
    for archive in sorted(CORPUS.glob("*.tar.zst")):
        name = archive.name.split(".")[0]
        dest = CACHE / name
        done = dest / ".unpacked"
        if not done.exists():
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            with open(archive, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as zr:
                with tarfile.open(fileobj=zr, mode="r|") as tf:
                    for m in tf:
                        if m.isfile() and "/" not in m.name:
                            with open(dest / m.name, "wb") as out:
                                shutil.copyfileobj(tf.extractfile(m), out, 1 << 20)
            with open(archive, "rb") as f, open(CACHE / f"{name}.docker.tar", "wb") as out:
                zstandard.ZstdDecompressor().copy_stream(f, out)
            done.touch()
        (manifest,) = json.loads((dest / "manifest.json").read_text())
        config_bytes = (dest / manifest["Config"]).read_bytes()
        config = json.loads(config_bytes)
        images.append(BenchImage(name, archive, [dest / p for p in manifest["Layers"]],
                                 config["rootfs"]["diff_ids"], config,
                                 "sha256:" + hashlib.sha256(config_bytes).hexdigest()))
    return images


def cli_env() -> dict:
    """The environment to time the layerstore CLI in, from this tree: as an installed package
    runs, from compiled bytecode (pip compiles it; this sandbox sets PYTHONDONTWRITEBYTECODE,
    which left every run compiling all of layerstore again, ~70 ms of each).  The bytecode
    goes to CACHE, compiled here once, never into the tree."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(PYTHONPATH=str(REPO), PYTHONPYCACHEPREFIX=str(CACHE / "pycache"))
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "layerstore")],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    return env


def warm(path: Path) -> None:
    """Reads a file so that every contestant finds it in the page cache."""
    with open(path, "rb") as f:
        while f.read(1 << 22):
            pass


def timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def run(cmd: list[str], **kw) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)


def disk_usage(path: Path) -> int:
    """Bytes allocated under path, each inode counted once (as du does)."""
    seen = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def bench_filesystem(kind: str = "ext4", label: str = "") -> Path:
    """Where the contestants write: a fresh filesystem (ext4 with a journal, as mkfs makes it,
    unless kind says xfs or btrfs) on a loop device, made for this run, so every run starts
    from the same state.  On the host's filesystem, inodes freed in the last minutes slow down
    new ones in the same block groups (ext4 without a journal re-reads each), which made
    figures depend on what ran before.  label tells several apart (one per contestant).
    Needs root and mkfs.<kind>; otherwise, or with LAYERSTORE_BENCH_FS=host, CACHE/work."""
    import atexit

    if (os.environ.get("LAYERSTORE_BENCH_FS") == "host" or os.geteuid() != 0
            or shutil.which(f"mkfs.{kind}") is None):
        return CACHE / "work" / label if label else CACHE / "work"
    # Per process, so that benchmarks run side by side do not share (or unmount) one.
    name = f"{os.getpid()}-{label}" if label else f"{os.getpid()}"
    image, mnt = CACHE / f"bench-fs-{name}.img", CACHE / f"mnt-{name}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(16 << 30)            # sparse: takes only what the run writes
    # ext4 otherwise zeroes its inode tables from a kernel thread for minutes after the mount,
    # slowing whichever contestant runs then (seen: one checkout at 2.6x its own best).
    opts = ["-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"] if kind == "ext4" else ["-f"]
    run([f"mkfs.{kind}", "-q", *opts, str(image)])
    mnt.mkdir(exist_ok=True)
    run(["mount", "-o", "loop", str(image), str(mnt)])

    def unmount():
        subprocess.run(["umount", str(mnt)], check=False)
        image.unlink(missing_ok=True)
        mnt.rmdir()
    atexit.register(unmount)
    return mnt / "work"


def fresh_dir(path: Path) -> Path:
    if path.exists():
        subprocess.run(["rm", "-rf", str(path)], check=True)
    path.mkdir(parents=True)
    return path


def sync() -> None:
    """Flushes dirty pages so one contestant's writeback does not land in the next's time."""
    os.sync()


def table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    for r in rows:
        lines.append("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))
    return "\n".join(lines)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {sys.version.split()[0]}"
