"""Seeded synthetic images: the same seed gives the same bytes, on any machine.

The shape is fitted to the corpus's debootstrap base layer (measured once: 5232 regular files,
log-normal sizes with mu 7.97 and sigma 1.96 in ln(bytes), median 2.9 kB; about 10 files per
directory, 4 levels deep; one symlink per 8 files; zlib -1 compresses file data to about 0.4).
Knobs say what the workloads vary: layers shared by every image, files shared between different
layers, the share of files a new version edits, whiteouts, hardlinks and xattrs.

Each image is written as a docker-archive (what `docker save` writes) and into one OCI layout
holding all of them (what umoci and skopeo read).  expected_totals() says what a store that
keeps every distinct file once must hold for a set of images.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

MTIME = 1700000000          # every entry: fixed, so bytes depend on the seed alone


@dataclass(frozen=True)
class Spec:
    seed: int = 1
    base_files: int = 2000      # files of the shared base layer(s)
    shared_layers: int = 1      # base layers every image has
    app_files: int = 300        # files of each image's own top layer
    shared_files: float = 0.5   # share of an app layer's files equal to another image's
    edit_rate: float = 0.1      # share of files a new version in the chain changes
    whiteouts: int = 8          # base entries each app layer deletes (plus one opaque dir)
    hardlink_rate: float = 0.01
    xattr_rate: float = 0.02
    symlink_rate: float = 0.12
    max_size: int = 4 << 20
    compressibility: float = 0.4   # target zlib ratio of file data

    @classmethod
    def quick(cls, seed: int = 1) -> "Spec":
        return cls(seed=seed, base_files=400, app_files=80)


@dataclass
class Entry:
    path: str
    kind: str                   # "file" | "dir" | "symlink" | "hardlink" | "whiteout" | "opaque"
    data: bytes = b""
    mode: int = 0o644
    target: str = ""
    xattrs: dict = field(default_factory=dict)


@dataclass
class GenImage:
    """One generated image: its reference, config digest (image ID), layers in order."""

    name: str
    ref: str                    # docker.io/bench/<name>:latest
    id: str                     # sha256:<config hex>
    diff_ids: list[str]
    archive: Path               # docker-archive
    oci: Path                   # the OCI layout (shared by every image), ref name = name
    files: list[str]            # regular files every container of it has (read workload)


class Generator:
    def __init__(self, spec: Spec, out: Path) -> None:
        self.spec = spec
        self.out = out
        self.layers_dir = out / "layers"
        self.layers_dir.mkdir(parents=True, exist_ok=True)
        self.layer_entries: dict[str, list[Entry]] = {}      # diffID -> entries
        rng = random.Random(spec.seed)
        self._words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz_/.=") for _ in range(
            rng.randint(3, 12))) for _ in range(2000)]
        self.base = [self._tree(random.Random(f"{spec.seed}-base-{i}"), f"usr/lib/b{i}",
                                spec.base_files // spec.shared_layers, with_etc=(i == 0))
                     for i in range(spec.shared_layers)]
        self._pool = self._tree(random.Random(f"{spec.seed}-pool"), "opt/shared",
                                max(1, int(spec.app_files * spec.shared_files)), with_etc=False)

    # ---- content -----------------------------------------------------------------------------
    def _data(self, rng: random.Random) -> bytes:
        s = self.spec
        size = min(s.max_size, int(math.exp(rng.gauss(7.97, 1.96))))
        if rng.random() < 0.004:
            return b""
        # Random bytes for the incompressible share, words for the rest: zlib's ratio lands
        # near compressibility.
        rand = int(size * max(0.0, s.compressibility - 0.08))
        out = bytearray(rng.randbytes(rand))
        while len(out) < size:
            out += rng.choice(self._words) + b" "
        return bytes(out[:size])

    def _tree(self, rng: random.Random, top: str, n: int, with_etc: bool) -> list[Entry]:
        s = self.spec
        entries = [Entry(top.split("/")[0], "dir", mode=0o755)]
        parts = top.split("/")
        for i in range(1, len(parts)):
            entries.append(Entry("/".join(parts[:i + 1]), "dir", mode=0o755))
        if with_etc:
            entries.append(Entry("etc", "dir", mode=0o755))
            entries.append(Entry("etc/os-release", "file", b"NAME=bench\nID=bench\n"))
        dirs = [top]
        files: list[Entry] = []
        for i in range(n):
            if rng.random() < 0.1 or len(dirs) == 1:       # about 10 files per directory
                parent = rng.choice(dirs)
                if parent.count("/") < 6:
                    d = f"{parent}/d{len(dirs)}"
                    dirs.append(d)
                    entries.append(Entry(d, "dir", mode=0o755))
            parent = dirs[-1] if rng.random() < 0.7 else rng.choice(dirs)
            path = f"{parent}/f{i}"
            r = rng.random()
            if files and r < s.symlink_rate:
                entries.append(Entry(path, "symlink", target=rng.choice(files).path.rsplit("/", 1)[-1]))
                continue
            if files and r < s.symlink_rate + s.hardlink_rate:
                # with the target's mode, as tar writers do: tools differ in whether a hardlink
                # header's mode is applied to the shared inode
                t = rng.choice(files)
                entries.append(Entry(path, "hardlink", mode=t.mode, target=t.path))
                continue
            e = Entry(path, "file", self._data(rng), mode=rng.choice((0o644, 0o644, 0o644, 0o755)))
            if rng.random() < s.xattr_rate:
                e.xattrs = {"user.bench": f"x{i % 3}"}
            files.append(e)
            entries.append(e)
        return entries

    # ---- layers --------------------------------------------------------------------------------
    def _write_layer(self, entries: list[Entry]) -> str:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for e in entries:
                ti = tarfile.TarInfo(e.path)
                ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = MTIME, 0, 0, "", ""
                ti.mode = e.mode
                data = None
                if e.kind == "dir":
                    ti.type = tarfile.DIRTYPE
                elif e.kind == "symlink":
                    ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, e.target, 0o777
                elif e.kind == "hardlink":
                    ti.type, ti.linkname = tarfile.LNKTYPE, e.target
                elif e.kind in ("whiteout", "opaque"):
                    ti.size = 0
                    data = io.BytesIO(b"")
                else:
                    ti.size = len(e.data)
                    data = io.BytesIO(e.data)
                if e.xattrs:
                    ti.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in e.xattrs.items()}
                tf.addfile(ti, data)
        raw = buf.getvalue()
        diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
        path = self.layers_dir / f"{diff_id[7:]}.tar"
        if not path.exists():
            path.write_bytes(raw)
        self.layer_entries[diff_id] = entries
        return diff_id

    def _app(self, rng: random.Random, name: str, prev: list[Entry] | None) -> list[Entry]:
        """An image's own layer: files of its own, files from the shared pool (equal bytes in
        another image's layer), whiteouts of base entries and one opaque directory."""
        s = self.spec
        if prev is None:
            own = self._tree(rng, f"app/{name}", s.app_files - len(self._pool), with_etc=False)
            entries = own + [Entry(f"app/{name}/shared", "dir", mode=0o755)] + [
                Entry(f"app/{name}/shared/{e.path.rsplit('/', 1)[-1]}", e.kind, e.data, e.mode,
                      e.target, e.xattrs)
                for e in self._pool if e.kind == "file"]
        else:           # the next version: the same paths, a share of the files edited
            entries = [Entry(e.path, e.kind, self._data(rng), e.mode, e.target, e.xattrs)
                       if e.kind == "file" and rng.random() < s.edit_rate else e for e in prev
                       if e.kind not in ("whiteout", "opaque")]
        base_files = [e for e in self.base[0] if e.kind == "file" and e.path != "etc/os-release"]
        victims = random.Random(f"{s.seed}-wh").sample(base_files, min(s.whiteouts, len(base_files)))
        for v in victims:
            d, b = v.path.rsplit("/", 1)
            entries.append(Entry(f"{d}/.wh.{b}", "whiteout"))
        # Not a directory holding a whiteout of the same layer: docker never writes both, and
        # overlayfs lists such a whiteout in the merged dir (readdir of an opaque upper dir is
        # not filtered) while lookups of it fail.
        base_dirs = [e.path for e in self.base[0] if e.kind == "dir" and e.path.count("/") >= 3
                     and not any(v.path.startswith(e.path + "/") for v in victims)]
        if base_dirs:
            opaque = random.Random(f"{s.seed}-opq").choice(base_dirs)
            entries.append(Entry(opaque, "dir", mode=0o755))
            entries.append(Entry(f"{opaque}/.wh..wh..opq", "opaque"))
        seen: set[str] = set()      # the opaque dir is in prev already
        return [e for e in entries if not (e.path in seen or seen.add(e.path))]

    def _image(self, name: str, layers: list[list[Entry]]) -> tuple[str, list[str], bytes]:
        diff_ids = [self._write_layer(l) for l in layers]
        config = json.dumps({
            "architecture": "amd64", "os": "linux", "created": "2023-11-14T22:13:20Z",
            "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/bin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": "2023-11-14T22:13:20Z", "created_by": f"bench layer {i}"}
                        for i in range(len(diff_ids))],
        }, sort_keys=True, separators=(",", ":")).encode()
        return "sha256:" + hashlib.sha256(config).hexdigest(), diff_ids, config

    def images(self, count: int, chain: int = 0) -> list[GenImage]:
        """count images sharing the base layers, then (chain > 0) chain versions of one
        image, each editing a share of the previous one's files.  Written under out/."""
        made = []
        for k in range(count):
            rng = random.Random(f"{self.spec.seed}-app-{k}")
            made.append((f"img{k}", self.base + [self._app(rng, f"img{k}", None)]))
        prev = None
        for v in range(chain):
            rng = random.Random(f"{self.spec.seed}-chain-{v}")
            prev = self._app(rng, "chain", prev)
            made.append((f"chain{v}", self.base + [prev]))
        return self._write(made)

    def _write(self, made) -> list[GenImage]:
        oci = self.out / "oci"
        blobs = oci / "blobs" / "sha256"
        blobs.mkdir(parents=True, exist_ok=True)
        (oci / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        index = {"schemaVersion": 2, "manifests": []}
        out = []
        for name, layers in made:
            image_id, diff_ids, config = self._image(name, layers)
            ref = f"docker.io/bench/{name}:latest"
            archive = self.out / f"{name}.docker.tar"
            self._docker_archive(archive, ref, image_id, diff_ids, config)
            manifest = self._oci_manifest(blobs, diff_ids, config)
            digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
            (blobs / digest[7:]).write_bytes(manifest)
            index["manifests"].append({
                "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
                "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": name}})
            files = sorted(self._visible_files(layers))
            out.append(GenImage(name, ref, image_id, diff_ids, archive, oci, files))
        (oci / "index.json").write_text(json.dumps(index, indent=1))
        return out

    def _docker_archive(self, path: Path, ref: str, image_id: str, diff_ids, config) -> None:
        manifest = json.dumps([{"Config": f"{image_id[7:]}.json", "RepoTags": [ref],
                                "Layers": [f"{d[7:]}.tar" for d in diff_ids]}]).encode()
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
            def add(name, data):
                ti = tarfile.TarInfo(name)
                ti.size, ti.mtime, ti.mode = len(data), MTIME, 0o644
                tf.addfile(ti, io.BytesIO(data))
            add(f"{image_id[7:]}.json", config)
            for d in dict.fromkeys(diff_ids):
                ti = tf.gettarinfo(str(self.layers_dir / f"{d[7:]}.tar"), f"{d[7:]}.tar")
                ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = MTIME, 0, 0, "", ""
                with open(self.layers_dir / f"{d[7:]}.tar", "rb") as f:
                    tf.addfile(ti, f)
            add("manifest.json", manifest)

    def _oci_manifest(self, blobs: Path, diff_ids, config: bytes) -> bytes:
        cdigest = "sha256:" + hashlib.sha256(config).hexdigest()
        (blobs / cdigest[7:]).write_bytes(config)
        layers = []
        for d in diff_ids:
            blob = blobs / d[7:]
            src = self.layers_dir / f"{d[7:]}.tar"
            if not blob.exists():
                blob.hardlink_to(src)
            layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar",
                           "digest": d, "size": src.stat().st_size})
        return json.dumps({"schemaVersion": 2,
                           "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": cdigest, "size": len(config)},
                           "layers": layers}, separators=(",", ":")).encode()

    @staticmethod
    def _visible_files(layers: list[list[Entry]]) -> set[str]:
        """Regular files of the merged tree (whiteouts and opaque dirs applied)."""
        tree: dict[str, str] = {}
        for entries in layers:
            for e in entries:
                d, _, b = e.path.rpartition("/")
                if e.kind == "opaque":
                    for p in [p for p in tree if p.startswith(d + "/")]:
                        del tree[p]
                elif e.kind == "whiteout":
                    gone = f"{d}/{b[4:]}" if d else b[4:]
                    for p in [p for p in tree if p == gone or p.startswith(gone + "/")]:
                        del tree[p]
            for e in entries:
                if e.kind not in ("whiteout", "opaque"):
                    tree[e.path] = e.kind
        return {p for p, k in tree.items() if k == "file"}

    def expected_totals(self, images: list[GenImage]) -> dict:
        """What these images hold: regular-file bytes of their distinct layers (what a
        per-layer store keeps), and the distinct files by content and metadata (what a store
        keeping each distinct file once keeps: layerstore's objects)."""
        layers = dict.fromkeys(d for i in images for d in i.diff_ids)
        layer_bytes = 0
        objects: dict[tuple, int] = {}
        for d in layers:
            for e in self.layer_entries[d]:
                if e.kind == "file":
                    layer_bytes += len(e.data)
                    if not e.data:      # empty files are not objects: nothing to share
                        continue
                    key = (hashlib.sha256(e.data).digest(), e.mode,
                           tuple(sorted(e.xattrs.items())))
                    objects[key] = len(e.data)
        return {"images": len(images), "layers": len(layers), "layer_bytes": layer_bytes,
                "objects": len(objects), "object_bytes": sum(objects.values())}


def generate(spec: Spec, out: Path, count: int, chain: int = 0) -> tuple[Generator, list[GenImage]]:
    g = Generator(spec, out)
    return g, g.images(count, chain)
