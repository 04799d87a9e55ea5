"""Builds image archives inside the tests: layers from (name, kind, ...) specs, then a legacy
docker-archive, Docker >= 25's OCI-based docker-archive, or an OCI layout (directory or tar),
optionally compressed."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile

import zstandard
from isal import igzip


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer(*items) -> bytes:
    """A layer tar.  Items: ("f", path, content[, mode]), ("d", path[, mode]), ("l", path,
    target) symlink, ("h", path, target) hardlink, ("wh", path) whiteout, ("opq", dir)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for item in items:
            kind, path = item[0], item[1]
            if kind == "wh":
                head, _, name = path.rpartition("/")
                path = f"{head}/.wh.{name}" if head else f".wh.{name}"
            elif kind == "opq":
                path = f"{path}/.wh..wh..opq"
            ti = tarfile.TarInfo(path)
            ti.mtime = 1700000000
            content = b""
            if kind == "f":
                content = item[2]
                ti.size = len(content)
                ti.mode = item[3] if len(item) > 3 else 0o644
            elif kind == "d":
                ti.type = tarfile.DIRTYPE
                ti.mode = item[2] if len(item) > 2 else 0o755
            elif kind == "l":
                ti.type, ti.linkname = tarfile.SYMTYPE, item[2]
            elif kind == "h":
                ti.type, ti.linkname = tarfile.LNKTYPE, item[2]
            elif kind in ("wh", "opq"):
                ti.mode = 0
            tf.addfile(ti, io.BytesIO(content) if content else None)
    return buf.getvalue()


def config(layers: list[bytes], arch: str = "amd64", created: str = "2026-11-01T00:00:00Z",
           **extra) -> bytes:
    cfg = {"architecture": arch, "os": "linux", "created": created,
           "config": {"Env": ["PATH=/usr/bin"]},
           "rootfs": {"type": "layers", "diff_ids": [digest(l) for l in layers]}, **extra}
    return json.dumps(cfg).encode()


def _tar(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        for name, target in (links or {}).items():
            ti = tarfile.TarInfo(name)
            ti.type, ti.linkname = tarfile.SYMTYPE, target
            tf.addfile(ti)
    return buf.getvalue()


def docker_archive(images: list[tuple[list[bytes], list[str]]], symlinked: bool = False,
                   layer_names=None, manifest_last: bool = True) -> bytes:
    """A legacy `docker save` archive.  images: [(layers, tags)].  symlinked: each layer also
    appears as <id>/layer.tar -> ../<hex>.tar, which the manifest names (as newer Docker)."""
    files, links, manifest = {}, {}, []
    for layers, tags in images:
        cfg = config(layers)
        cfg_name = digest(cfg)[7:] + ".json"
        names = []
        for i, data in enumerate(layers):
            hexd = digest(data)[7:]
            files[f"{hexd}.tar"] = data
            if symlinked:
                links[f"{hexd[:20]}/layer.tar"] = f"../{hexd}.tar"
                names.append(f"{hexd[:20]}/layer.tar")
            else:
                names.append(f"{hexd}.tar")
        if layer_names is not None:
            names = layer_names
        files[cfg_name] = cfg
        manifest.append({"Config": cfg_name, "RepoTags": tags, "Layers": names})
    meta = {"manifest.json": json.dumps(manifest).encode()}
    ordered = {**files, **meta} if manifest_last else {**meta, **files}
    return _tar(ordered, links)


def oci_blobs(layers: list[bytes], tags: list[str] | None = None, compress: str | None = None,
              arch: str = "amd64", config_bytes: bytes | None = None):
    """Blobs of one OCI image: ({digest: data}, manifest descriptor)."""
    blobs = {}
    ldescs = []
    for data in layers:
        blob = data
        mt = "application/vnd.oci.image.layer.v1.tar"
        if compress == "gzip":
            blob, mt = igzip.compress(data, 1), mt + "+gzip"
        elif compress == "zstd":
            blob, mt = zstandard.ZstdCompressor().compress(data), mt + "+zstd"
        blobs[digest(blob)] = blob
        ldescs.append({"mediaType": mt, "digest": digest(blob), "size": len(blob)})
    cfg = config_bytes or config(layers, arch)
    blobs[digest(cfg)] = cfg
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest(cfg), "size": len(cfg)},
        "layers": ldescs}).encode()
    blobs[digest(manifest)] = manifest
    desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(manifest), "size": len(manifest),
            "platform": {"architecture": arch, "os": "linux"}}
    if tags:
        desc["annotations"] = {"io.containerd.image.name": tags[0],
                               "org.opencontainers.image.ref.name": tags[0].rsplit(":", 1)[1]}
    return blobs, desc


def oci_layout_files(descs: list[dict], blobs: dict[str, bytes]) -> dict[str, bytes]:
    files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
             "index.json": json.dumps({"schemaVersion": 2, "manifests": descs}).encode()}
    for d, data in blobs.items():
        files[f"blobs/sha256/{d[7:]}"] = data
    return files


def oci_layout(layers: list[bytes], tags=None, compress=None) -> dict[str, bytes]:
    blobs, desc = oci_blobs(layers, tags, compress)
    return oci_layout_files([desc], blobs)


def write_dir(files: dict[str, bytes], root) -> None:
    for name, data in files.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


def tar_of(files: dict[str, bytes]) -> bytes:
    return _tar(files)


def docker_oci_archive(layers: list[bytes], tags: list[str]) -> bytes:
    """The OCI-layout-based archive Docker >= 25 writes: an OCI layout plus manifest.json whose
    Config and Layers point into blobs/."""
    blobs, desc = oci_blobs(layers, tags)
    files = oci_layout_files([desc], blobs)
    manifest = json.loads(blobs[desc["digest"]])
    files["manifest.json"] = json.dumps([{
        "Config": f"blobs/sha256/{manifest['config']['digest'][7:]}", "RepoTags": tags,
        "Layers": [f"blobs/sha256/{l['digest'][7:]}" for l in manifest["layers"]]}]).encode()
    return _tar(files)


def compress(data: bytes, how: str) -> bytes:
    if how == "gzip":
        return igzip.compress(data, 1)      # isal: the corpus images take seconds, not tens
    if how == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data
