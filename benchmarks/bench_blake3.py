"""Single-threaded hashing throughput of the C core, side by side with its peers.

    python benchmarks/bench_blake3.py [--runs 7] [--json]

BLAKE3: for 1 KiB, 64 KiB and 1 MiB inputs, our one-shot hash through the Python wrapper
(`_native.blake3(data)`) on each backend this CPU has, against the blake3 package
(`blake3.blake3(data).digest()`, single-threaded by default).  At 1 KiB the Python call costs
about as much as the hashing, so a "thin" row also times the bare cffi call into a reused
output buffer (`lib.ls_blake3_hash`), which is what the ingest's C code pays.

SHA-256: `_native.Sha256(data).digest()` on each backend against `hashlib.sha256(data).digest()`,
and a "thin" row that reuses one C context (update, final, reset), as ingest does.

The machine is noisy: every contestant of a size runs one batch per round, rounds interleave
the contestants (A B C A B C ...), and the fastest of --runs rounds is kept.  Ratios are
ours / theirs in throughput (> 1 is faster).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import blake3  # noqa: E402

from harness import machine, table  # noqa: E402
from layerstore import _native  # noqa: E402

SIZES = [("1 KiB", 1 << 10), ("64 KiB", 64 << 10), ("1 MiB", 1 << 20)]
BATCH_BYTES = 16 << 20     # bytes hashed per timed batch, so that a batch takes ~5-20 ms
MIN_CALLS = 2000           # ... and enough calls that small inputs are timed over many


def batch_time(fn, data, calls: int) -> float:
    t = time.perf_counter()
    for _ in range(calls):
        fn(data)
    return time.perf_counter() - t


def contestants_blake3():
    """(name, peer, setup) for each BLAKE3 contestant; setup returns a context manager."""
    lib, ffi = _native.lib, _native.ffi
    out = ffi.new("uint8_t[32]")

    def thin(data):
        lib.ls_blake3_hash(data, len(data), out)

    rows = []
    for backend in _native.blake3_backends():
        rows.append((f"ours {backend}", "blake3 pkg", backend, _native.blake3))
        rows.append((f"ours {backend} thin", "blake3 pkg", backend, thin))
    rows.append(("blake3 pkg", None, None, lambda d: blake3.blake3(d).digest()))
    return rows


def contestants_sha256():
    lib, ffi = _native.lib, _native.ffi
    ctx = ffi.gc(lib.ls_sha256_new(), lib.ls_sha256_free)
    out = ffi.new("uint8_t[32]")

    def thin(data):
        lib.ls_sha256_update(ctx, data, len(data))
        lib.ls_sha256_finalize(ctx, out)
        lib.ls_sha256_reset(ctx)

    rows = []
    for backend in _native.sha256_backends():
        rows.append((f"ours {backend}", "hashlib", backend, lambda d: _native.Sha256(d).digest()))
        rows.append((f"ours {backend} thin", "hashlib", backend, thin))
    rows.append(("hashlib", None, None, lambda d: hashlib.sha256(d).digest()))
    return rows


def measure(algo: str, contestants, switch, runs: int) -> list[dict]:
    results = []
    for label, size in SIZES:
        data = os.urandom(size)
        calls = max(MIN_CALLS, BATCH_BYTES // size)
        best = {name: float("inf") for name, *_ in contestants}
        for _ in range(runs):
            for name, _peer, backend, fn in contestants:
                if backend is None:
                    t = batch_time(fn, data, calls)
                else:
                    with switch(backend):
                        t = batch_time(fn, data, calls)
                best[name] = min(best[name], t)
        speed = {name: size * calls / t / 1e6 for name, t in best.items()}
        for name, peer, backend, _fn in contestants:
            results.append({
                "algo": algo, "size": label, "bytes": size, "impl": name,
                "mb_s": round(speed[name], 1),
                "ratio": round(speed[name] / speed[peer], 3) if peer else None,
                "ns_per_call": round(best[name] / calls * 1e9, 1),
            })
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=7, help="rounds per size; the best is kept")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()

    results = measure("blake3", contestants_blake3(), _native.blake3_backend, args.runs)
    results += measure("sha256", contestants_sha256(), _native.sha256_backend, args.runs)

    if args.json:
        print(json.dumps({"machine": machine(), "blake3_package": blake3.__version__,
                          "results": results}, indent=2))
        return
    print(f"{machine()}; blake3 package {blake3.__version__}; best of {args.runs} rounds")
    for algo in ("blake3", "sha256"):
        rows = [{**r, "ratio": "" if r["ratio"] is None else f'{r["ratio"]:.2f}x'}
                for r in results if r["algo"] == algo]
        print()
        print(table(rows, ["size", "impl", "mb_s", "ns_per_call", "ratio"]))


if __name__ == "__main__":
    main()
