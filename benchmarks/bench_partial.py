"""Partial pulls over an emulated 100 Mbit/s link: `layerstore pull --partial always` vs
`--partial never` of corpus `rebuilt` (zstd:chunked) into a store that holds corpus `python`;
then `layerstore push --compress zstd:chunked` of `python` vs skopeo's zstd:chunked push.

    python benchmarks/bench_partial.py [--runs 3 | --quick] [--rate 100] [--rtt 20]
                                       [--part all|pull|push] [--json]

The link is a TCP proxy on 127.0.0.1 in a process of its own, in front of the registry.  Each
direction is a wire shared by every connection: the bytes read from one side are sent one
chunk after another at --rate Mbit/s (a token bucket with no burst: a chunk waits until the
wire has carried everything read before it), and each chunk reaches the other side --rtt/2 ms
after its last byte went out (propagation delay: every request and every response is delayed
rtt/2 each way, so a request and its answer cost one --rtt more than on loopback).  A new
connection's first byte to the server is also held until --rtt after the accept (TCP's
handshake).  The proxy counts the bytes each way and the HTTP requests (by parsing the
request heads and skipping their bodies); the tables give both.  It is not the bottleneck:
it used ~0.4 s of CPU (proxy_cpu_s) to carry a full pull's 82 MB, and the full pulls' mean
rate (Mbit/s: bytes received over the whole command's time) comes within 10% of --rate.

Pull.  The registry (docker-registry on 127.0.0.1) holds `rebuilt` in two zstd:chunked forms:
- "skopeo 1.9.3": pushed by Debian's skopeo (`--format oci --dest-compress-format
  zstd:chunked`), the older format, with no tar-split (so a partial pull also fetches the
  frames between files, which hold the tar headers).  Its storage is kept in CACHE/partial
  (skopeo takes ~15 s to compress it).
- "layerstore": pushed by `layerstore push --compress zstd:chunked` into a fresh registry at
  every start of the benchmark; left out ("not available") when `layerstore push --help`
  does not list zstd:chunked.
Each contestant is the CLI (`layerstore pull --json --partial never|always|auto REF`) on a
fresh loop-mounted ext4 of its own (harness.bench_filesystem) whose store was given
corpus/python (`import` of its docker-archive, then a sync: not timed); the time runs from
the command's start to the end of a syncfs of that filesystem.  It includes the first
partial pull's one-off cost of mapping the store's content SHA-256s (the store never met a
chunked layer before).  Every pull must give the same image ID as the full pull of the
same form, or the benchmark stops; `--partial auto` runs too, and the layers column says
what it chose (its reasons are in --json).  Runs are interleaved (every contestant once, then
again), best of --runs.  Targets (issue 15): full/partial >= 3x with skopeo's format,
>= 8x with ours.

Push.  `layerstore push IMAGE --compress C --format oci` from a store that holds python (a
copy whose objects are hardlinks, as bench_push.py: every run is a first push) vs `skopeo
copy --format oci --dest-compress-format C docker-archive:python.docker.tar docker://...`
(the corpus archive decompressed, as bench_pull.py feeds skopeo), each into a registry
started fresh for each run with empty storage on a filesystem of its own, C = zstd:chunked
and, for scale, zstd; on plain loopback (compression speed is what differs) and through the
link.  The time includes a syncfs of the registry's filesystem.  Target: zstd:chunked on
loopback <= 0.3x skopeo's time.

skopeo's blob-info cache (as root /var/lib/containers/cache/blob-info-cache-v1.boltdb; it
has no flag to move it) remembers where it pushed which compressed form of a layer and
reuses one the destination has, whatever the requested compression.  Every skopeo command
here runs in a mount namespace of its own with an empty tmpfs over that directory (not
root: XDG_DATA_HOME pointing at an empty directory), so it starts from an empty cache and
the machine's cache is left alone.

The 1-minute load average is given with each figure (taken before the kept run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_pull import REGISTRY_BIN, Registry, _syncfs  # noqa: E402
from bench_push import _store_copy  # noqa: E402
from harness import (CACHE, bench_filesystem, cli_env, corpus_images, fresh_dir,  # noqa: E402
                     machine, sync, table, warm)

from layerstore import Store  # noqa: E402

SKOPEO_CACHE = Path("/var/lib/containers/cache")
ENV = cli_env()
LAYERSTORE = [sys.executable, "-m", "layerstore"]
UP, DOWN, CONNECTIONS, REQUESTS = range(4)


# ---- the link -----------------------------------------------------------------------------

class _Wire:
    """One direction of the link, shared by every connection: a chunk starts when the wire
    has sent everything before it, takes n / rate seconds, and arrives delay later."""

    def __init__(self, rate: float, delay: float):
        self.rate, self.delay, self.free = rate, delay, 0.0

    def send(self, n: int, now: float) -> tuple[float, float]:
        start = max(now, self.free)
        self.free = start + n / self.rate
        return start, self.free + self.delay


class _Requests:
    """Counts HTTP/1.1 requests in a client's byte stream: a head up to its blank line, then
    a body of Content-Length bytes or in chunks."""

    def __init__(self):
        self.count, self.left, self.line, self.state = 0, 0, b"", "head"
        self.in_head, self.length, self.chunked = False, 0, False

    def feed(self, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            if self.left:
                n = min(self.left, len(data) - pos)
                self.left -= n
                pos += n
                continue
            end = data.find(b"\n", pos)
            if end < 0:
                self.line += data[pos:]
                return
            line, self.line, pos = (self.line + data[pos:end]).rstrip(b"\r"), b"", end + 1
            if self.state == "size":
                size = int(line.split(b";")[0], 16)
                if size:
                    self.left = size + 2            # the chunk and its CRLF
                else:
                    self.state = "trailer"
            elif self.state == "trailer":
                if not line:
                    self.state = "head"
            elif not self.in_head:
                if line:                            # a request line
                    self.count += 1
                    self.in_head, self.length, self.chunked = True, 0, False
            elif line:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    self.length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    self.chunked = True
            else:                                   # the end of the head
                self.in_head = False
                if self.chunked:
                    self.state = "size"
                else:
                    self.left = self.length


CHUNK = 32 << 10        # 2.6 ms on the wire at 100 Mbit/s


async def _pump(reader, writer, wire: _Wire, not_before: float, counters, index: int,
                requests: _Requests | None) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue(maxsize=256)

    async def deliver():
        while (item := await queue.get()) is not None:
            if (wait := item[0] - loop.time()) > 0:
                await asyncio.sleep(wait)
            writer.write(item[1])
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    delivery = asyncio.create_task(deliver())
    try:
        while data := await reader.read(CHUNK):
            counters[index] += len(data)
            if requests is not None:
                requests.feed(data)
                counters[REQUESTS] += requests.count
                requests.count = 0
            start, arrive = wire.send(len(data), max(loop.time(), not_before))
            await queue.put((arrive, data))
            # Read the next chunk while this one is on the wire: a timer that fires late
            # then leaves no gap on the wire.
            if (wait := start - loop.time()) > 0:
                await asyncio.sleep(wait)
    finally:
        if not delivery.done():
            await queue.put(None)
        await delivery


def _serve(target: str, rate: float, rtt: float, counters, ready) -> None:
    host, port = target.rsplit(":", 1)

    async def connection(c_reader, c_writer):
        loop = asyncio.get_running_loop()
        accepted = loop.time()
        counters[CONNECTIONS] += 1
        try:
            s_reader, s_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            c_writer.close()
            return
        try:
            await asyncio.gather(
                _pump(c_reader, s_writer, wires[UP], accepted + rtt, counters, UP, _Requests()),
                _pump(s_reader, c_writer, wires[DOWN], 0.0, counters, DOWN, None))
        except (ConnectionError, OSError):
            pass
        finally:
            for w in (s_writer, c_writer):
                w.close()

    async def main():
        server = await asyncio.start_server(connection, "127.0.0.1", 0)
        ready.send(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    wires = {UP: _Wire(rate, rtt / 2), DOWN: _Wire(rate, rtt / 2)}
    asyncio.run(main())


class Link:
    """The emulated link to target (host:port), in a process of its own; host is its end."""

    def __init__(self, target: str, rate_mbit: float, rtt_ms: float):
        self.counters = multiprocessing.RawArray("q", 4)
        ours, theirs = multiprocessing.Pipe()
        self.proc = multiprocessing.Process(
            target=_serve, args=(target, rate_mbit * 1e6 / 8, rtt_ms / 1e3, self.counters,
                                 theirs), daemon=True)
        self.proc.start()
        if not ours.poll(10):
            self.stop()
            raise RuntimeError("the link proxy did not start")
        self.host = f"127.0.0.1:{ours.recv()}"

    def counts(self) -> list[int]:
        return list(self.counters)

    def cpu(self) -> float:
        """CPU seconds the proxy used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
        self.proc.join(5)


class Through:
    """Counts what one command moved over a link (nothing to count on plain loopback)."""

    def __init__(self, link: Link | None):
        self.link = link

    def __enter__(self):
        if self.link:
            self.before, self.cpu_before = self.link.counts(), self.link.cpu()
        return self

    def __exit__(self, *exc):
        if self.link:
            moved = [a - b for a, b in zip(self.link.counts(), self.before)]
            self.up, self.down, self.requests = moved[UP], moved[DOWN], moved[REQUESTS]
            self.cpu = self.link.cpu() - self.cpu_before


# ---- commands -----------------------------------------------------------------------------

def skopeo(*args: str) -> tuple[list[str], dict]:
    """A skopeo command and its environment, with an empty blob-info cache of its own."""
    if os.geteuid() == 0:
        SKOPEO_CACHE.mkdir(parents=True, exist_ok=True)
        return (["unshare", "--mount", "--propagation", "private", "sh", "-c",
                 f'mount -t tmpfs lsbench {SKOPEO_CACHE} && exec skopeo "$@"', "skopeo",
                 *args], ENV)
    return ["skopeo", *args], dict(ENV, XDG_DATA_HOME=tempfile.mkdtemp(prefix="lsbench-"))


def skopeo_push(source: Path, dest: str, compress: str) -> tuple[list[str], dict]:
    return skopeo("copy", "-q", "--dest-tls-verify=false", "--format", "oci",
                  "--dest-compress-format", compress, f"docker-archive:{source}",
                  f"docker://{dest}")


def ours_can_push_chunked() -> bool:
    out = subprocess.run([*LAYERSTORE, "push", "--help"], env=ENV, check=True,
                         capture_output=True, text=True).stdout
    return "zstd:chunked" in out


def load() -> float:
    return round(os.getloadavg()[0], 2)


def timed_command(cmd: list[str], env: dict, fs: Path) -> tuple[float, bytes]:
    """Runs cmd after a sync; its seconds up to the end of a syncfs of fs, and its stdout."""
    sync()
    t = time.perf_counter()
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, env=env).stdout
    _syncfs(fs)
    return time.perf_counter() - t, out


def started(cleanup: contextlib.ExitStack, *args, link: bool = False):
    """A Registry(storage) or, with link, a Link(target, rate, rtt), stopped by cleanup."""
    server = Link(*args) if link else Registry(*args)
    cleanup.callback(server.stop)
    return server


def warm_registry(storage: Path) -> None:
    for path in storage.rglob("data"):
        warm(path)


# ---- pull ---------------------------------------------------------------------------------

FORMS = {"skopeo 1.9.3": "corpus/rebuilt:chunked", "layerstore": "corpus/rebuilt:ours"}
MODES = ["never", "always", "auto"]


def skopeo_registry(cleanup, rebuilt) -> Registry:
    """The registry holding rebuilt as skopeo's zstd:chunked, seeded once and kept."""
    storage = CACHE / "partial" / "skopeo-chunked"
    seeded = storage / ".seeded"
    if not seeded.exists():
        fresh_dir(storage)
    registry = started(cleanup, storage)
    if not seeded.exists():
        print("seeding: skopeo compresses rebuilt as zstd:chunked (~15 s)", file=sys.stderr)
        cmd, env = skopeo_push(rebuilt.plain, f"{registry.host}/{FORMS['skopeo 1.9.3']}",
                               "zstd:chunked")
        subprocess.run(cmd, env=env, check=True)
        seeded.touch()
    warm_registry(storage)
    return registry


def ours_registry(cleanup, rebuilt, work: Path) -> Registry:
    """A fresh registry holding rebuilt as pushed by `layerstore push --compress zstd:chunked`
    (pushed anew every time: the format may change with the code)."""
    storage = fresh_dir(CACHE / "partial" / "ours-chunked")
    registry = started(cleanup, storage)
    root = fresh_dir(work) / "store"
    with Store(root) as store:
        (image,) = store.import_archive(rebuilt.plain)
    subprocess.run([*LAYERSTORE, "--root", str(root), "push", "--quiet", "--compress",
                    "zstd:chunked", "--format", "oci", image.id,
                    f"{registry.host}/{FORMS['layerstore']}"], env=ENV, check=True)
    fresh_dir(work)
    warm_registry(storage)
    return registry


def _layers_summary(layers: list[dict]) -> str:
    actions: dict[str, int] = {}
    for layer in layers:
        actions[layer["action"]] = actions.get(layer["action"], 0) + 1
    return ", ".join(f"{n} {a}" for a, n in sorted(actions.items()))


def bench_pull(args, python, rebuilt) -> tuple[list[dict], dict]:
    fs = {mode: bench_filesystem(label=f"partial-{mode}") for mode in MODES}
    best: dict[tuple[str, str], dict] = {}
    notes = {}
    with contextlib.ExitStack() as cleanup:
        registries = {"skopeo 1.9.3": skopeo_registry(cleanup, rebuilt)}
        if ours_can_push_chunked():
            registries["layerstore"] = ours_registry(
                cleanup, rebuilt, bench_filesystem(label="partial-seed"))
        else:
            notes["layerstore"] = "not available: `layerstore push --help` lists no zstd:chunked"
        links = {form: started(cleanup, r.host, args.rate, args.rtt, link=True)
                 for form, r in registries.items()}
        warm(python.plain)
        for _ in range(args.runs):
            for form in registries:
                for mode in MODES:
                    root = fresh_dir(fs[mode]) / "store"
                    with Store(root) as store:
                        store.import_archive(python.plain)
                    _syncfs(fs[mode])
                    before = load()
                    ref = f"{links[form].host}/{FORMS[form]}"
                    with Through(links[form]) as moved:
                        seconds, out = timed_command(
                            [*LAYERSTORE, "--root", str(root), "pull", "--json",
                             "--partial", mode, ref], ENV, fs[mode])
                    doc = json.loads(out)
                    run = {"seconds": seconds, "load": before, "doc": doc, "moved": moved}
                    key = (form, mode)
                    if key not in best or seconds < best[key]["seconds"]:
                        best[key] = run
                    image_id = doc["images"][0]["id"]
                    full = best.get((form, "never"))
                    if full and image_id != full["doc"]["images"][0]["id"]:
                        sys.exit(f"FAILED: {form} --partial {mode} gave image {image_id}, the "
                                 f"full pull {full['doc']['images'][0]['id']}")
                    actions = {layer["action"] for layer in doc["layers"]}
                    want = {"never": {"downloaded"}, "always": {"partial"}}.get(mode)
                    if want and actions != want:
                        sys.exit(f"FAILED: {form} --partial {mode}: layers {actions}")
    rows = []
    for form in FORMS:
        if form in notes:
            rows.append({"form": form, "pull": "not available"})
            continue
        full_s = best[(form, "never")]["seconds"]
        for mode in MODES:
            run = best[(form, mode)]
            layers, moved = run["doc"]["layers"], run["moved"]
            rows.append({
                "form": form, "pull": f"--partial {mode}",
                "s": round(run["seconds"], 2),
                "link_MB": round((moved.up + moved.down) / 1e6, 2),
                "requests": moved.requests,
                "Mbit/s": round(moved.down * 8 / run["seconds"] / 1e6, 1),
                "blob_MB": round(sum(layer["size"] for layer in layers) / 1e6, 1),
                "layers": _layers_summary(layers),
                "full/this": round(full_s / run["seconds"], 2),
                "proxy_cpu_s": round(moved.cpu, 2),
                "load": run["load"],
                "image": run["doc"]["images"][0]["id"][:19]})
    details = {f"{form} --partial {mode}": [
        {k: layer[k] for k in ("digest", "size", "action", "bytes", "requests", "partial")}
        for layer in best[(form, mode)]["doc"]["layers"]]
        for form, mode in best}
    return rows, {"notes": notes, "layers": details}


# ---- push ---------------------------------------------------------------------------------

def bench_push(args, python) -> list[dict]:
    work = fresh_dir(bench_filesystem(label="partial-push-work"))
    regfs = {tool: bench_filesystem(label=f"partial-push-{tool}")
             for tool in ("layerstore", "skopeo")}
    store = work / "python-store"
    with Store(store) as s:
        (stored,) = s.import_archive(python.plain)
    warm(python.plain)
    chunked = ours_can_push_chunked()
    compressions = ["zstd:chunked", "zstd"]
    best: dict[tuple, dict] = {}
    for _ in range(args.runs):
        for path in ("loopback", "link"):
            for compress in compressions:
                for tool in ("layerstore", "skopeo"):
                    if tool == "layerstore" and compress == "zstd:chunked" and not chunked:
                        continue
                    with contextlib.ExitStack() as cleanup:
                        registry = started(cleanup, fresh_dir(regfs[tool] / "reg"))
                        link = (started(cleanup, registry.host, args.rate, args.rtt, link=True)
                                if path == "link" else None)
                        dest = f"{(link or registry).host}/bench/python:1"
                        if tool == "layerstore":
                            _store_copy(store, work / "run-store")
                            cmd, env = [*LAYERSTORE, "--root", str(work / "run-store"), "push",
                                        "--quiet", "--json", "--compress", compress,
                                        "--format", "oci", stored.id, dest], ENV
                        else:
                            cmd, env = skopeo_push(python.plain, dest, compress)
                        before = load()
                        with Through(link) as moved:
                            seconds, out = timed_command(cmd, env, regfs[tool])
                    if tool == "layerstore":
                        doc = json.loads(out)
                        if {b["action"] for b in doc["layers"]} != {"uploaded"}:
                            sys.exit(f"FAILED: push {compress} did not upload every layer")
                    key = (path, compress, tool)
                    if key not in best or seconds < best[key]["seconds"]:
                        best[key] = {"seconds": seconds, "load": before, "moved": moved}
    def link_mb(run):
        return f"{(run['moved'].up + run['moved'].down) / 1e6:.1f}" if run else "-"

    rows = []
    for path in ("loopback", "link"):
        for compress in compressions:
            ours = best.get((path, compress, "layerstore"))
            theirs = best[(path, compress, "skopeo")]
            row = {"path": path, "compress": compress,
                   "layerstore_s": round(ours["seconds"], 2) if ours else "not available",
                   "skopeo_s": round(theirs["seconds"], 2),
                   "ratio": round(ours["seconds"] / theirs["seconds"], 2) if ours else "",
                   "load": f"{ours['load'] if ours else '-'} / {theirs['load']}"}
            if path == "link":
                row["link_MB"] = f"{link_mb(ours)} / {link_mb(theirs)}"
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one run")
    ap.add_argument("--rate", type=float, default=100.0, help="link Mbit/s (each way)")
    ap.add_argument("--rtt", type=float, default=20.0, help="link round trip, ms")
    ap.add_argument("--part", choices=["all", "pull", "push"], default="all")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.runs = 1
    if REGISTRY_BIN is None or not (shutil.which("skopeo") and shutil.which("unshare")):
        sys.exit("needs docker-registry, skopeo and unshare")
    images = {i.name: i for i in corpus_images()}
    python, rebuilt = images["python"], images["rebuilt"]
    result = {"machine": machine(), "runs": args.runs, "rate_mbit": args.rate,
              "rtt_ms": args.rtt, "load_start": os.getloadavg()}
    if args.part in ("all", "pull"):
        result["pull"], result["pull_details"] = bench_pull(args, python, rebuilt)
    if args.part in ("all", "push"):
        result["push"] = bench_push(args, python)
    result["load_end"] = os.getloadavg()
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"# {machine()}; best of {args.runs}; link {args.rate:g} Mbit/s each way, "
          f"{args.rtt:g} ms round trip")
    if "pull" in result:
        print("\n# pull rebuilt into a store holding python, through the link, durable")
        print(table(result["pull"], list(result["pull"][0])))
        for note in result["pull_details"]["notes"].values():
            print(f"layerstore's zstd:chunked: {note}")
        print("targets: full/this of --partial always >= 3x (skopeo 1.9.3), >= 8x (layerstore)")
    if "push" in result:
        print("\n# push python into a fresh registry (ratio = layerstore / skopeo), durable")
        print(table(result["push"], list(result["push"][-1])))
        print("target: zstd:chunked on loopback, ratio <= 0.3")


if __name__ == "__main__":
    main()
