"""Pull from a registry on loopback, side by side: layerstore's pull vs containerd's `ctr pull`
(fetch + unpack into overlayfs snapshots) vs `skopeo copy` to an OCI directory (fetch and
verify only), and layerstore importing the same image as a gzip OCI layout; then peak RSS of
a pull of a 1 GiB single-file layer.

    python benchmarks/bench_pull.py [--runs 3] [--images python,base] [--json] [--no-rss]

A docker-registry (distribution 2.8) on 127.0.0.1, plain HTTP, serves each corpus image as
Docker v2 schema 2 with gzip layers (pushed by skopeo once; the storage is kept in CACHE).
Each contestant writes to a fresh loop-mounted ext4 of its own (root; see
harness.bench_filesystem), starts from empty storage, runs after a `sync`, and its time
includes a syncfs of its filesystem (durable: our pull syncs its objects anyway).
containerd is started by the benchmark with its own root, state and socket, fresh for every
run (its start is not timed).  Runs are interleaved, best of --runs.  Targets (issue 12):
pull python <= 0.4x containerd, <= 1.15x our import of the gzip OCI layout; peak RSS of the
1 GiB pull < 64 MiB above the interpreter (Python with layerstore imported).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (CACHE, bench_filesystem, corpus_images, fresh_dir, machine,  # noqa: E402
                     run, sync, table, timed)

REGISTRY_BIN = shutil.which("docker-registry") or shutil.which("registry")
REPO = "corpus"


# ---- the registry -------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """docker-registry on 127.0.0.1 serving storage (kept between runs of the benchmark)."""

    def __init__(self, storage: Path):
        storage.mkdir(parents=True, exist_ok=True)
        self.host = f"127.0.0.1:{_free_port()}"
        config = {"version": 0.1, "log": {"level": "error", "accesslog": {"disabled": True}},
                  "storage": {"filesystem": {"rootdirectory": str(storage)},
                              "maintenance": {"uploadpurging": {"enabled": False}}},
                  "http": {"addr": self.host, "secret": "bench"}}
        cfg = storage.parent / f"{storage.name}.yml"
        cfg.write_text(json.dumps(config))
        self.proc = subprocess.Popen([REGISTRY_BIN, "serve", str(cfg)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                conn = http.client.HTTPConnection(self.host, timeout=2)
                conn.request("GET", "/v2/")
                conn.getresponse().read()
                conn.close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("docker-registry did not start")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)

    def has(self, ref: str) -> bool:
        path, _, tag = ref.rpartition(":")
        conn = http.client.HTTPConnection(self.host, timeout=10)
        conn.request("HEAD", f"/v2/{path}/manifests/{tag}",
                     headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
        status = conn.getresponse().status
        conn.close()
        return status == 200

    def push_blob(self, repo: str, path: Path, digest: str) -> None:
        """A monolithic upload streamed from a file (skopeo would recompress it)."""
        conn = http.client.HTTPConnection(self.host, timeout=600)
        conn.request("POST", f"/v2/{repo}/blobs/uploads/")
        resp = conn.getresponse()
        resp.read()
        loc = urllib.parse.urlsplit(resp.getheader("Location"))
        with open(path, "rb") as f:
            conn.request("PUT", f"{loc.path}?{loc.query}&digest={digest}", body=f,
                         headers={"Content-Length": str(path.stat().st_size),
                                  "Content-Type": "application/octet-stream"})
            resp = conn.getresponse()
            resp.read()
        conn.close()
        assert resp.status == 201, resp.status

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> None:
        conn = http.client.HTTPConnection(self.host, timeout=60)
        conn.request("PUT", f"/v2/{repo}/manifests/{ref}", body=data,
                     headers={"Content-Type": media_type})
        resp = conn.getresponse()
        resp.read()
        conn.close()
        assert resp.status == 201, resp.status


def seed(registry: Registry, images) -> None:
    for image in images:
        ref = f"{REPO}/{image.name}:latest"
        if not registry.has(ref):
            run(["skopeo", "copy", "-q", "--dest-tls-verify=false", "--format", "v2s2",
                 f"docker-archive:{image.plain}", f"docker://{registry.host}/{ref}"])


# ---- contestants --------------------------------------------------------------------------

def _syncfs(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)        # the directory; then the whole filesystem
        subprocess.run(["sync", "-f", str(path)], check=True)
    finally:
        os.close(fd)


class Ours:
    name = "layerstore pull"

    def __init__(self, fs: Path):
        self.fs = fs

    def reset(self) -> None:
        self.root = fresh_dir(self.fs) / "store"

    def go(self, registry: Registry, image) -> None:
        from layerstore import Store
        with Store(self.root) as store:
            (got,) = store.pull(f"{registry.host}/{REPO}/{image.name}:latest")
        assert list(got.diff_ids) == image.diff_ids
        _syncfs(self.fs)


class Skopeo:
    name = "skopeo copy (fetch only)"

    def __init__(self, fs: Path):
        self.fs = fs

    def reset(self) -> None:
        self.dest = fresh_dir(self.fs) / "oci"

    def go(self, registry: Registry, image) -> None:
        run(["skopeo", "copy", "-q", "--src-tls-verify=false",
             f"docker://{registry.host}/{REPO}/{image.name}:latest", f"oci:{self.dest}:latest"])
        _syncfs(self.fs)


class Containerd:
    """containerd with its own root, state and socket; ctr pull = fetch + unpack."""

    name = "ctr pull (fetch+unpack)"

    def __init__(self, fs: Path):
        self.fs = fs
        self.proc = None
        self.sock = f"/run/lsbench-{os.getpid()}.sock"

    def reset(self) -> None:
        self.stop()
        work = fresh_dir(self.fs)
        cfg = work / "config.toml"
        cfg.write_text(textwrap.dedent(f"""\
            version = 2
            root = "{work / 'root'}"
            state = "{work / 'state'}"
            disabled_plugins = ["io.containerd.grpc.v1.cri"]
            [grpc]
              address = "{self.sock}"
            """))
        self.proc = subprocess.Popen(["containerd", "--config", str(cfg)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while subprocess.run(["ctr", "--address", self.sock, "version"],
                             capture_output=True).returncode != 0:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("containerd did not start")
            time.sleep(0.1)

    def go(self, registry: Registry, image) -> None:
        run(["ctr", "--address", self.sock, "-n", "bench", "images", "pull", "--plain-http",
             f"{registry.host}/{REPO}/{image.name}:latest"])
        _syncfs(self.fs)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        # Snapshots are overlay layer dirs, never mounted by a pull: nothing to unmount.


class OursImport:
    name = "layerstore import (gzip OCI layout)"

    def __init__(self, fs: Path, registry: Registry):
        self.fs = fs
        self.registry = registry
        self.layouts = {}

    def layout(self, image) -> Path:
        """The image skopeo fetched from the registry: the same gzip blobs."""
        if image.name not in self.layouts:
            layout = CACHE / "pull" / f"{image.name}.oci-from-registry"
            shutil.rmtree(layout, ignore_errors=True)
            run(["skopeo", "copy", "-q", "--src-tls-verify=false",
                 f"docker://{self.registry.host}/{REPO}/{image.name}:latest",
                 f"oci:{layout}:latest"])
            self.layouts[image.name] = layout
        return self.layouts[image.name]

    def reset(self) -> None:
        self.root = fresh_dir(self.fs) / "store"

    def go(self, registry: Registry, image) -> None:
        from layerstore import Store
        with Store(self.root) as store:
            store.import_archive(self.layout(image))
        _syncfs(self.fs)


def bench_times(registry: Registry, images, runs: int) -> list[dict]:
    contestants = [Ours(bench_filesystem(label="ours") / "w"),
                   Containerd(bench_filesystem(label="containerd") / "w"),
                   Skopeo(bench_filesystem(label="skopeo") / "w")]
    importer = OursImport(bench_filesystem(label="import") / "w", registry)
    contestants.append(importer)
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        print("skipping containerd: not installed (apt-get install containerd)", file=sys.stderr)
        contestants = [c for c in contestants if not isinstance(c, Containerd)]
    rows = []
    try:
        for image in images:
            importer.layout(image)      # made before the timed runs
            best = {c.name: float("inf") for c in contestants}
            for _ in range(runs):
                for c in contestants:
                    c.reset()
                    sync()
                    best[c.name] = min(best[c.name], timed(c.go, registry, image))
            ours = best["layerstore pull"]
            row = {"image": image.name}
            for name, t in best.items():
                row[name] = round(t, 3)
            for c in contestants[1:]:
                row[f"pull / {c.name.split(' (')[0]}"] = round(ours / best[c.name], 2)
            rows.append(row)
    finally:
        for c in contestants:
            if isinstance(c, Containerd):
                c.stop()
    return rows


# ---- peak RSS of a 1 GiB single-file layer ------------------------------------------------

def big_image(registry: Registry) -> str:
    """big/one-file:latest: one gzip layer holding a 1 GiB file (1 MiB of random bytes over
    and over: past deflate's window, so the blob is ~1 GiB too)."""
    ref = "big/one-file:latest"
    if registry.has(ref):
        return ref
    import tarfile

    from isal import igzip
    work = CACHE / "pull"
    work.mkdir(parents=True, exist_ok=True)
    tar_path, blob_path = work / "one-file.tar", work / "one-file.tar.gz"
    block = os.urandom(1 << 20)

    class Repeat:
        def __init__(self):
            self.left = 1 << 30

        def read(self, n):
            n = min(n, self.left, len(block))
            self.left -= n
            return block[:n]

    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("data/one-file")
        info.size, info.mode, info.mtime = 1 << 30, 0o644, 1_700_000_000
        tf.addfile(info, Repeat())
    diff = hashlib.sha256()
    with open(tar_path, "rb") as src, igzip.open(blob_path, "wb", compresslevel=1) as out:
        while chunk := src.read(1 << 20):
            diff.update(chunk)
            out.write(chunk)
    tar_path.unlink()
    bh = hashlib.sha256()
    with open(blob_path, "rb") as f:
        while chunk := f.read(1 << 20):
            bh.update(chunk)
    blob_digest = "sha256:" + bh.hexdigest()
    registry.push_blob("big/one-file", blob_path, blob_digest)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers",
                                    "diff_ids": ["sha256:" + diff.hexdigest()]}}).encode()
    config_path = work / "one-file.config"
    config_path.write_bytes(config)
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    registry.push_blob("big/one-file", config_path, config_digest)
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "digest": blob_digest, "size": blob_path.stat().st_size}]}).encode()
    registry.put_manifest("big/one-file", "latest", manifest,
                          "application/vnd.docker.distribution.manifest.v2+json")
    blob_path.unlink()
    return ref


RSS_CHILD = textwrap.dedent("""
    import sys
    def hwm():
        return next(int(l.split()[1]) for l in open("/proc/self/status")
                    if l.startswith("VmHWM"))
    from layerstore import Store
    import layerstore.registry.pull, urllib3, isal.igzip, zstandard   # what a pull loads
    base = hwm()
    with Store(sys.argv[1]) as store:
        store.pull(sys.argv[2])
    print(base, hwm())
""")


def bench_rss(registry: Registry, fs: Path) -> dict:
    ref = big_image(registry)
    root = fresh_dir(fs) / "store"
    res = subprocess.run([sys.executable, "-c", RSS_CHILD, str(root), f"{registry.host}/{ref}"],
                         check=True, capture_output=True, text=True)
    base, peak = (int(v) for v in res.stdout.split())
    shutil.rmtree(root)
    return {"interpreter_MiB": round(base / 1024, 1), "peak_MiB": round(peak / 1024, 1),
            "above_MiB": round((peak - base) / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--images", default="python,base")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-rss", action="store_true", help="skip the 1 GiB RSS measurement")
    args = ap.parse_args()
    if REGISTRY_BIN is None or shutil.which("skopeo") is None:
        sys.exit("needs docker-registry and skopeo (apt-get install docker-registry skopeo)")
    wanted = args.images.split(",")
    images = sorted((i for i in corpus_images() if i.name in wanted),
                    key=lambda i: wanted.index(i.name))
    registry = Registry(CACHE / "pull" / "registry")
    try:
        seed(registry, images)
        times = bench_times(registry, images, args.runs)
        rss = None if args.no_rss else bench_rss(registry, bench_filesystem(label="rss") / "w")
    finally:
        registry.stop()
    result = {"machine": machine(), "times": times, "rss_1GiB_layer": rss}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"# pull from a loopback registry ({machine()}), best of {args.runs}, seconds, "
          "durable")
    print(table(times, list(times[0])))
    if rss:
        print("\n# peak RSS pulling a 1 GiB single-file layer (gzip)")
        print(table([rss], list(rss)))


if __name__ == "__main__":
    main()
