"""`layerstore push` of a corpus image into a fresh registry vs `skopeo copy oci:DIR
docker://...` of the same image into a fresh registry, with the same compression.

    python benchmarks/bench_push.py [--image python ...] [--compress gzip zstd] [--runs 3] [--json]

Both start from uncompressed layers, so both compress every layer while uploading: skopeo
reads an OCI layout directory whose layers are the plain tars (what `layerstore save
--format oci` writes), layerstore rebuilds them from its store (checking each diffID).  For
layerstore each run starts from the store as imported (a copy whose objects are hardlinks),
so no run finds blobs an earlier run recorded: every run is a first push.  Each run gets a
new registry (Debian's docker-registry on 127.0.0.1, started before the clock starts) whose
storage is on a filesystem of its own per contestant (harness.bench_filesystem); the time
runs from the command's start to the end of a sync after it, so the registry's writes are
durable for both.  Both run as commands (a process each, Python's start-up included for
layerstore).  Interleaved, best of --runs.  Target (issue 12): push no slower than skopeo.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

from harness import (bench_filesystem, cli_env, corpus_images, fresh_dir, machine,  # noqa: E402
                     sync, table)

from layerstore import Store  # noqa: E402


def _registry(workdir: Path):
    from registry_servers import RegistryServer      # tests/: the tests' registry process
    return RegistryServer(fresh_dir(workdir) / "r")


def _store_copy(src: Path, dest: Path) -> None:
    """The store as imported: objects hardlinked (read-only), the index copied."""
    fresh_dir(dest)
    subprocess.run(["cp", "-al", str(src / "objects"), str(dest / "objects")], check=True)
    shutil.copytree(src / "index", dest / "index")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", nargs="*", default=None, help="corpus images (default: all)")
    ap.add_argument("--compress", nargs="*", default=["gzip", "zstd"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if shutil.which("skopeo") is None or not (shutil.which("docker-registry")
                                               or shutil.which("registry")):
        sys.exit("needs skopeo and docker-registry")

    images = [i for i in corpus_images() if args.image is None or i.name in args.image]
    work = fresh_dir(bench_filesystem(label="push-work"))
    regfs = {"layerstore": bench_filesystem(label="push-reg-ours"),
             "skopeo": bench_filesystem(label="push-reg-skopeo")}
    env = cli_env()
    rows = []
    for image in images:
        store = work / f"{image.name}-store"
        layout = work / f"{image.name}-oci"
        with Store(store) as s:
            (stored,) = s.import_archive(image.plain)
            s.save([stored.id], work / "oci.tar", format="oci")     # uncompressed layers
        with tarfile.open(work / "oci.tar") as tf:
            tf.extractall(layout)
        (work / "oci.tar").unlink()
        tar_bytes = sum(os.path.getsize(p) for p in image.layers)
        for compress in args.compress:
            fmt = "oci" if compress == "zstd" else "docker"
            best = {"layerstore": float("inf"), "skopeo": float("inf")}
            sent = {}
            for _ in range(args.runs):
                for name in ("layerstore", "skopeo"):
                    reg = _registry(regfs[name] / "reg")
                    try:
                        dest = f"{reg.host}/bench/{image.name}:1"
                        if name == "layerstore":
                            _store_copy(store, work / "run-store")
                            cmd = [sys.executable, "-m", "layerstore", "--root",
                                   str(work / "run-store"), "push", "--quiet", "--json",
                                   "--compress", compress, "--format", fmt, stored.id, dest]
                        else:
                            cmd = ["skopeo", "copy", "-q", "--dest-tls-verify=false",
                                   "--format", "v2s2" if fmt == "docker" else "oci",
                                   "--dest-compress-format", compress,
                                   f"oci:{layout}", f"docker://{dest}"]
                        sync()
                        t = time.perf_counter()
                        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE,
                                             env=env).stdout
                        sync()
                        best[name] = min(best[name], time.perf_counter() - t)
                        if name == "layerstore":
                            doc = json.loads(out)
                            sent[name] = doc["bytes_sent"]
                            assert {l["action"] for l in doc["layers"]} == {"uploaded"}
                    finally:
                        reg.stop()
            rows.append({"image": image.name, "compress": compress, "format": fmt,
                         "tar_MB": round(tar_bytes / 1e6, 1),
                         "sent_MB": round(sent.get("layerstore", 0) / 1e6, 1),
                         "layerstore_s": round(best["layerstore"], 3),
                         "skopeo_s": round(best["skopeo"], 3),
                         "ratio": round(best["layerstore"] / best["skopeo"], 2)})
    if args.json:
        print(json.dumps({"machine": machine(), "rows": rows}, indent=2))
        return
    print(f"# {machine()}")
    print(table(rows, list(rows[0])))
    print("target: ratio (layerstore_s / skopeo_s) <= 1.0")


if __name__ == "__main__":
    main()
