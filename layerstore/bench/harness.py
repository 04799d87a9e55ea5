"""The run: every driver on a fresh filesystem of its own, the same generated images, the
same workloads, every measurement kept as a raw sample (JSON lines).

Workloads (each one ends with the driver's storage back to empty):
  load    load N images sharing layers and files, cold (caches dropped), for each N; disk and
          inodes against the generator's expected totals; then remove + gc, which must return
          disk and inodes to the baseline
  start   M containers of one image, one after the other (the first cold); a fixed list of
          files read in each (the first read cold); page cache added by the M containers;
          the tree of a container against umoci's unpack; write isolation
  chain   versions of one image loaded one after the other, each editing a share of the files
          of the previous: disk after each
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from . import system
from .driver import Driver
from .generator import GenImage, Spec, generate

WORKLOADS = ("load", "start", "chain")


@dataclass
class Plan:
    images: tuple[int, ...] = (1, 4, 16)        # N for the load workload
    containers: tuple[int, ...] = (1, 8, 32)    # M for the start workload
    versions: int = 10                          # length of the chain
    workloads: tuple[str, ...] = WORKLOADS
    spec: Spec = field(default_factory=Spec)
    fs: str = "ext4"
    fs_gib: int = 16
    check: bool = False
    read_share: int = 2                         # the read list: every read_share-th file

    @classmethod
    def quick(cls, **kw) -> "Plan":
        return cls(images=(1, 4), containers=(1, 4, 8), versions=5, spec=Spec.quick(),
                   fs_gib=4, read_share=1, **kw)


# gc must return the driver's filesystem to its baseline, but a store may keep a little
# metadata of its own (an index, lock files, a database file that does not shrink).
GC_SLACK_BYTES = 1 << 20
GC_SLACK_INODES = 16


class Failed(Exception):
    pass


class Harness:
    def __init__(self, plan: Plan, out: Path, work: Path, log=print) -> None:
        self.plan, self.out, self.work, self.log = plan, out, work, log
        out.mkdir(parents=True, exist_ok=True)
        self.samples_path = out / "samples.jsonl"
        self.samples = open(self.samples_path, "w")
        self.checks: list[dict] = []
        self.errors: dict[str, str] = {}
        count = max(plan.images) if "load" in plan.workloads else 1
        self.gen, made = generate(plan.spec, work / "images", count,
                                  plan.versions if "chain" in plan.workloads else 0)
        self.images = [i for i in made if i.name.startswith("img")]
        self.chain = [i for i in made if i.name.startswith("chain")]
        self._reference: dict[str, dict] = {}

    # ---- measuring ---------------------------------------------------------------------------
    def sample(self, **fields) -> dict:
        self.samples.write(json.dumps(fields, sort_keys=True) + "\n")
        self.samples.flush()
        return fields

    def measure(self, d: Driver, fs: system.LoopFs, workload: str, op: str, fn, **labels):
        """Runs fn once and records what it cost: wall and CPU time (the harness, the commands
        it ran, the driver's daemons), peak RSS of the largest command, disk and inode deltas
        on the driver's filesystem, bytes written to its device, and the machine's page cache
        added (machine-wide: other processes count too; the start workload's page-cache
        sample counts the driver's files alone)."""
        os.sync()
        used0, inodes0 = fs.usage()
        written0 = fs.bytes_written()
        cache0 = system.page_cache_bytes()
        daemon0 = system.process_cpu(d.daemons())
        self_cpu0 = time.process_time()
        with system.charged() as u:
            t0 = time.perf_counter()
            result = fn()
            wall = time.perf_counter() - t0
        cpu = u.cpu_s + time.process_time() - self_cpu0 + system.process_cpu(d.daemons()) - daemon0
        cache1 = system.page_cache_bytes()
        used1, inodes1 = fs.usage()
        s = self.sample(driver=d.name, workload=workload, op=op, wall_s=round(wall, 6),
                        cpu_s=round(cpu, 4), peak_rss_kib=u.peak_rss_kib,
                        disk_bytes=used1 - used0, inodes=inodes1 - inodes0,
                        written_bytes=fs.bytes_written() - written0,
                        machine_cache_bytes=cache1 - cache0, **labels)
        return result, s

    def check(self, d: Driver, what: str, ok: bool, detail: str = "", required: bool = True):
        """A property that must hold (required) or is only reported (a driver that does not
        claim it, e.g. isolation for hardlink checkouts)."""
        self.checks.append({"driver": d.name, "check": what, "ok": ok, "required": required,
                            "detail": detail})
        if not ok:
            self.log(f"  {d.name}: {what}: {'FAILED' if required else 'no'} {detail}")

    # ---- the run -----------------------------------------------------------------------------
    def run_driver(self, cls: type[Driver]) -> None:
        kind = cls.fs or self.plan.fs
        fs = system.LoopFs.make(kind, self.work / "fs", cls.name, self.plan.fs_gib)
        d = cls(fs.mnt / "driver")
        t0 = time.perf_counter()
        try:
            d.root.mkdir()
            d.setup()
            # The baseline gc must return to: storage that held every image once, so that what
            # a store makes once and keeps empty (object fan-out dirs, an index file) is in it.
            for image in self.images + self.chain:
                d.load(image)
            for image in self.images + self.chain:
                d.remove(image)
            d.gc()
            self.baseline = fs.usage(settle=True)
            self.sample(driver=d.name, workload="setup", op="baseline", fs=kind,
                        disk_bytes=self.baseline[0], inodes=self.baseline[1])
            for w in self.plan.workloads:
                getattr(self, f"w_{w}")(d, fs)
        except Exception as exc:
            self.errors[d.name] = f"{type(exc).__name__}: {exc}"
            self.log(f"  {d.name}: error: {exc}")
            (self.out / f"error-{d.name}.txt").write_text(traceback.format_exc())
        finally:
            try:
                d.teardown()
            finally:
                fs.destroy()
        self.log(f"  {d.name}: {time.perf_counter() - t0:.1f} s")

    def _empty_and_check(self, d: Driver, fs: system.LoopFs, base: tuple[int, int],
                         peak: tuple[int, int], workload: str, images: list[GenImage], **labels):
        def remove_all():
            for i in images:
                d.remove(i)
            d.gc()
        self.measure(d, fs, workload, "remove+gc", remove_all, **labels)
        used, inodes = fs.usage(settle=True)
        extra_b, extra_i = used - self.baseline[0], inodes - self.baseline[1]
        ok = extra_b <= GC_SLACK_BYTES and extra_i <= GC_SLACK_INODES
        self.check(d, f"gc to baseline ({workload})", ok,
                   f"left {extra_b} bytes, {extra_i} inodes over the baseline "
                   f"(peak {peak[0] - base[0]} bytes, {peak[1] - base[1]} inodes)")

    def w_load(self, d: Driver, fs: system.LoopFs) -> None:
        for n in self.plan.images:
            images = self.images[:n]
            base = fs.usage()
            system.drop_caches()
            for k, image in enumerate(images):
                self.measure(d, fs, "load", "load", lambda: d.load(image), n=n, index=k,
                             cold=k == 0)
            peak = fs.usage()
            exp = self.gen.expected_totals(images)
            self.sample(driver=d.name, workload="load", op="disk", n=n,
                        disk_bytes=peak[0] - base[0], inodes=peak[1] - base[1],
                        expected_layer_bytes=exp["layer_bytes"],
                        expected_object_bytes=exp["object_bytes"])
            self._empty_and_check(d, fs, base, peak, "load", images, n=n)

    def read_list(self, image: GenImage) -> list[str]:
        return image.files[::self.plan.read_share]

    def w_start(self, d: Driver, fs: system.LoopFs) -> None:
        image = self.images[0]
        base = fs.usage()
        d.load(image)
        files = self.read_list(image)
        for m in self.plan.containers:
            names = [f"c{m}-{j}" for j in range(m)]
            before = fs.usage()
            system.drop_caches()
            roots = []
            for j, name in enumerate(names):
                r, _ = self.measure(d, fs, "start", "start", lambda: d.start(image, name),
                                    m=m, index=j, cold=j == 0)
                roots.append(r)
            after = fs.usage()
            self.sample(driver=d.name, workload="start", op="containers-disk", m=m,
                        disk_bytes=after[0] - before[0], inodes=after[1] - before[1])
            system.drop_caches()
            cache0 = system.cached_bytes(fs.mnt)
            for j, r in enumerate(roots):
                self.measure(d, fs, "start", "read", lambda: _read_all(r, files), m=m,
                             index=j, cold=j == 0, files=len(files))
            self.sample(driver=d.name, workload="start", op="page-cache", m=m,
                        page_cache_bytes=system.cached_bytes(fs.mnt) - cache0)
            if m == self.plan.containers[0]:
                self._check_tree(d, image, roots[0])
            if m >= 2:
                self._check_isolation(d, image, roots)
            for j, name in enumerate(names):
                self.measure(d, fs, "start", "stop", lambda: d.stop(name), m=m, index=j)
        self._empty_and_check(d, fs, base, fs.usage(), "start", [image])

    def w_chain(self, d: Driver, fs: system.LoopFs) -> None:
        base = fs.usage()
        system.drop_caches()
        for v, image in enumerate(self.chain):
            self.measure(d, fs, "chain", "load", lambda: d.load(image), version=v)
            used, inodes = fs.usage()
            exp = self.gen.expected_totals(self.chain[:v + 1])
            self.sample(driver=d.name, workload="chain", op="disk", version=v,
                        disk_bytes=used - base[0], inodes=inodes - base[1],
                        expected_layer_bytes=exp["layer_bytes"],
                        expected_object_bytes=exp["object_bytes"])
        self._empty_and_check(d, fs, base, fs.usage(), "chain", self.chain)

    # ---- correctness -------------------------------------------------------------------------
    def reference(self, image: GenImage) -> dict | None:
        """umoci's unpack of the image, as a tree summary (None when umoci is absent)."""
        if image.name not in self._reference:
            if shutil.which("umoci") is None:
                return None
            dest = self.work / "reference" / image.name
            shutil.rmtree(dest, ignore_errors=True)
            dest.parent.mkdir(parents=True, exist_ok=True)
            system.run(["umoci", "raw", "unpack", "--image", f"{image.oci}:{image.name}",
                        str(dest)])
            self._reference[image.name] = tree_summary(dest)
            shutil.rmtree(dest)
        return self._reference[image.name]

    def _check_tree(self, d: Driver, image: GenImage, rootfs: Path) -> None:
        ref = self.reference(image)
        if ref is None:
            self.check(d, "tree equals umoci unpack", True, "not compared: umoci absent",
                       required=False)
            return
        diff = tree_diff(ref, tree_summary(rootfs))
        self.check(d, "tree equals umoci unpack", not diff, "; ".join(diff[:5]))

    def _check_isolation(self, d: Driver, image: GenImage, roots: list[Path]) -> None:
        path = self.read_list(image)[0]
        original = (roots[1] / path).read_bytes()
        d.write_probe(roots[0], path, b"written by container 0\n")
        (roots[0] / "bench-new-file").write_bytes(b"new\n")
        seen = [(roots[0] / path).read_bytes() == b"written by container 0\n"]
        others = [(r / path).read_bytes() == original and not (r / "bench-new-file").exists()
                  for r in roots[1:]]
        fresh = d.start(image, "probe")
        try:
            in_store = (fresh / path).read_bytes() == original
        finally:
            d.stop("probe")
        ok = all(seen) and all(others) and in_store
        self.check(d, "write isolation", ok,
                   "" if ok else f"write seen by {others.count(False)} of {len(others)} other "
                   f"containers; store {'unchanged' if in_store else 'changed'}",
                   required=d.isolated)

    def close(self) -> None:
        self.samples.close()


def _read_all(root: Path, files: list[str]) -> int:
    n = 0
    for f in files:
        with open(root / f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                n += len(chunk)
    return n


def tree_summary(root: Path) -> dict[str, tuple]:
    """path -> (type, mode, uid, gid, content digest or link target, user.* xattrs): what a
    container sees, without times (hardlink checkouts show canonical mtimes) or inode numbers."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                what = h.hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                what = os.readlink(p)
            else:
                what = ""
            try:
                xattrs = tuple(sorted((k, os.getxattr(p, k, follow_symlinks=False))
                                      for k in os.listxattr(p, follow_symlinks=False)
                                      if k.startswith("user.")))
            except OSError:
                xattrs = ()
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                        st.st_gid, what, xattrs)
    return out


def tree_diff(ref: dict, got: dict) -> list[str]:
    out = [f"missing {p}" for p in sorted(ref.keys() - got.keys())]
    out += [f"extra {p}" for p in sorted(got.keys() - ref.keys())]
    names = ("type", "mode", "uid", "gid", "content", "xattrs")
    for p in sorted(ref.keys() & got.keys()):
        if ref[p] != got[p]:
            bad = [n for n, a, b in zip(names, ref[p], got[p]) if a != b]
            out.append(f"{p}: {','.join(bad)} differ")
    return out
