"""Image archive formats: from an archive's metadata files to a plan of images to import.

Read: docker-archive (legacy `docker save`: manifest.json, <id>.json, <id>/layer.tar or
<hex>.tar; and Docker >= 25's OCI-based one, whose manifest.json points into blobs/), and the
OCI image layout (oci-layout, index.json, blobs/sha256/...) with nested image indexes and
platform selection (formats/platforms.py).  Every digest is checked before it is used;
every path named by metadata must stay inside the archive.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass, field
from typing import Protocol

from .. import errors
from ..errors import DigestMismatch, InvalidReference, MissingBlob
from .platforms import (host_platform, is_attestation, parse_platform, platform_matches,
                        platform_of, platform_rank)
from .reference import check_digest, normalize_tag

META_LIMIT = 16 << 20   # a config, manifest or index larger than this is not metadata

INDEX_TYPES = {"application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json"}
MANIFEST_TYPES = {"application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json"}


class ArchiveFiles(Protocol):
    """What format detection needs from an archive: its metadata files by path."""

    def has(self, name: str) -> bool: ...

    def read(self, name: str, limit: int = META_LIMIT) -> bytes: ...

    def resolve(self, name: str) -> str: ...


@dataclass
class LayerRef:
    member: str                 # archive path of the layer blob, symlinks resolved
    diff_id: str                # what the config says its uncompressed tar hashes to
    digest: str | None = None   # the blob digest, where the archive states one
    size: int | None = None
    media_type: str | None = None


@dataclass
class ImagePlan:
    config: bytes
    config_digest: str
    layers: list[LayerRef]
    tags: list[str] = field(default_factory=list)
    manifest: bytes | None = None
    manifest_digest: str | None = None
    manifest_media_type: str | None = None
    source_format: str = "docker-archive"
    platform: str | None = None

    @property
    def id(self) -> str:
        return self.config_digest


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def clean_member(name: str, what: str = "path") -> str:
    """An archive path named by metadata, cleaned; it may not leave the archive."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise errors.CorruptArchive(f"invalid {what} {str(name)[:200]!r} in the archive's "
                                    "metadata")
    if name.startswith("/"):
        raise errors.UnsafePath(f"{what} {name[:200]!r} in the archive's metadata is absolute")
    cleaned = posixpath.normpath(name)
    if cleaned == ".." or cleaned.startswith("../"):
        raise errors.UnsafePath(f"{what} {name[:200]!r} in the archive's metadata leaves the "
                                "archive")
    return cleaned


def blob_name(digest: str) -> str:
    algo, hexd = check_digest(digest, "blob digest").split(":")
    return f"blobs/{algo}/{hexd}"


def _json(data: bytes, what: str):
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise errors.CorruptArchive(f"{what} is not valid JSON: {exc}") from None


def _expect(cond: bool, msg: str) -> None:
    if not cond:
        raise errors.CorruptArchive(msg)


def parse_config(data: bytes, name: str, digest: str | None) -> tuple[str, dict]:
    """Checks a config against the digest that names it; returns its digest and content."""
    actual = sha256_digest(data)
    if digest is not None and actual != digest:
        raise DigestMismatch(f"config {name} hashes to {actual}, not {digest}")
    config = _json(data, f"config {name}")
    _expect(isinstance(config, dict), f"config {name} is not a JSON object")
    rootfs = config.get("rootfs")
    _expect(isinstance(rootfs, dict) and isinstance(rootfs.get("diff_ids"), list),
            f"config {name} has no rootfs.diff_ids")
    for d in rootfs["diff_ids"]:
        check_digest(d, "diffID")
    return actual, config


def _diff_ids(config: dict, name: str, layers: list, manifest: str) -> list[str]:
    """The config's diffIDs, one for each layer the manifest lists."""
    diff_ids = config["rootfs"]["diff_ids"]
    _expect(len(diff_ids) == len(layers), f"{manifest} lists {len(layers)} layers, but config "
            f"{name} has {len(diff_ids)} diffIDs")
    return diff_ids


def _tags(names, ignore_invalid: bool = False) -> list[str]:
    out = []
    for n in names or ():
        try:
            out.append(normalize_tag(n))
        except InvalidReference:
            if not ignore_invalid:
                raise
    return out


def plan_docker_archive(files: ArchiveFiles) -> list[ImagePlan]:
    manifest = _json(files.read("manifest.json"), "manifest.json")
    _expect(isinstance(manifest, list), "manifest.json is not a list of images")
    plans = []
    for entry in manifest:
        _expect(isinstance(entry, dict) and isinstance(entry.get("Config"), str) and
                isinstance(entry.get("Layers"), list), "manifest.json entry lacks Config or "
                "Layers")
        config_name = files.resolve(clean_member(entry["Config"], "config path"))
        # Docker names the config after its digest: blobs/sha256/<hex> or <hex>.json.
        stem = config_name.rsplit("/", 1)[-1].removesuffix(".json")
        named = f"sha256:{stem}" if len(stem) == 64 else None
        if named is not None:
            check_digest(named, "config digest")
        data = files.read(config_name)
        digest, config = parse_config(data, config_name, named)
        diff_ids = _diff_ids(config, config_name, entry["Layers"], "manifest.json")
        layers = []
        for name, diff_id in zip(entry["Layers"], diff_ids):
            member = files.resolve(clean_member(name, "layer path"))
            digest_from_name = None
            if member.startswith("blobs/sha256/"):
                digest_from_name = check_digest("sha256:" + member.rsplit("/", 1)[1],
                                                "layer blob digest")
            layers.append(LayerRef(member, diff_id, digest_from_name))
        fmt = "docker-archive-oci" if files.has("oci-layout") else "docker-archive"
        plans.append(ImagePlan(data, digest, layers, _tags(entry.get("RepoTags")),
                               source_format=fmt,
                               platform=platform_of({"os": config.get("os"),
                                                      "architecture": config.get("architecture"),
                                                      "variant": config.get("variant")})))
    return plans


def _read_blob(files: ArchiveFiles, desc: dict, what: str) -> bytes:
    _expect(isinstance(desc, dict), f"{what} descriptor is not an object")
    digest = check_digest(desc.get("digest"), f"{what} digest")
    name = blob_name(digest)
    if not files.has(name):
        raise MissingBlob(f"{what} blob {digest} is not in the archive")
    data = files.read(name)
    actual = sha256_digest(data)
    if actual != digest:
        raise DigestMismatch(f"{what} blob {name} hashes to {actual}, not {digest}")
    size = desc.get("size")
    if size is not None and size != len(data):
        raise DigestMismatch(f"{what} blob {digest} has {len(data)} bytes, its descriptor says "
                             f"{size}")
    return data


def _best_for_platform(found: list, want: str) -> list:
    """Of each image's platform variants, the one that suits want best, as containerd picks
    it: an exact match before a fallback (arm/v6 where arm/v7 is asked for).  An image is a
    nested index, or the manifests of index.json that carry the same names (none, often).
    Manifests that name no platform are kept."""
    def image(top: dict, desc: dict):
        if top is not desc:
            return id(top)
        ann = desc.get("annotations") or {}
        return (ann.get("io.containerd.image.name"), ann.get("org.opencontainers.image.ref.name"))

    best: dict = {}
    for top, desc, _, plat in found:
        if plat is not None:
            key, rank = image(top, desc), platform_rank(plat, want)
            best[key] = min(best.get(key, rank), rank)
    return [(top, desc, data, plat) for top, desc, data, plat in found
            if plat is None or platform_rank(plat, want) == best[image(top, desc)]]


def plan_manifest(data: bytes, digest: str, media_type: str | None, read_config, *,
                  member=blob_name, tags=(), platform: str | None = None,
                  source_format: str = "oci") -> ImagePlan:
    """An image manifest (OCI or Docker schema 2; data its raw bytes, digest what they were
    verified against) as an ImagePlan: the config read by read_config(descriptor) and checked
    against the descriptor's digest, one LayerRef per layer with the config's diffID,
    member(blob digest) naming the layer blob.  platform: as the index entry names it, else
    the config's."""
    manifest = _json(data, f"manifest {digest}")
    _expect(isinstance(manifest, dict), f"manifest {digest} is not a JSON object")
    cdesc = manifest.get("config")
    _expect(isinstance(cdesc, dict) and isinstance(manifest.get("layers"), list),
            f"manifest {digest} lacks config or layers")
    config_data = read_config(cdesc)
    config_name = f"blob {cdesc.get('digest')}"
    config_digest, config = parse_config(config_data, config_name,
                                         check_digest(cdesc.get("digest"), "config digest"))
    diff_ids = _diff_ids(config, config_name, manifest["layers"], f"manifest {digest}")
    layers = []
    for ldesc, diff_id in zip(manifest["layers"], diff_ids):
        _expect(isinstance(ldesc, dict), "layer descriptor is not an object")
        ldigest = check_digest(ldesc.get("digest"), "layer digest")
        size = ldesc.get("size")
        _expect(size is None or (isinstance(size, int) and size >= 0),
                f"layer {ldigest} has an invalid size")
        layers.append(LayerRef(member(ldigest), diff_id, ldigest, size, ldesc.get("mediaType")))
    if platform is None:
        platform = platform_of({"os": config.get("os"), "architecture":
                                config.get("architecture"), "variant": config.get("variant")})
    return ImagePlan(config_data, config_digest, layers, list(tags), data, digest,
                     media_type or manifest.get("mediaType"), source_format, platform)


def choose_manifests(index: dict, platform: str | None, all_platforms: bool,
                     where: str) -> list[tuple[dict, str | None]]:
    """The entries of an image index (a registry's; nested indexes are not followed) to
    pull: (descriptor, platform) for the platform asked for (default this machine's), the
    best match as containerd picks it, or every image with all_platforms.  Attestations and
    entries that are no image manifest are skipped; PlatformMismatch names what there is."""
    _expect(isinstance(index.get("manifests"), list), f"index {where} has no manifests list")
    want = platform or host_platform()
    found, seen = [], []
    for desc in index["manifests"]:
        if not isinstance(desc, dict) or is_attestation(desc):
            continue
        if desc.get("mediaType") not in MANIFEST_TYPES and desc.get("mediaType") is not None:
            continue        # a nested index, an artifact; none: the manifest's own says
        check_digest(desc.get("digest"), "manifest digest")
        plat = platform_of(desc.get("platform"))
        if plat is not None:
            seen.append(plat)
            if not all_platforms and not platform_matches(plat, want):
                continue
        found.append((index, desc, None, plat))
    if not found:
        if seen:
            raise errors.PlatformMismatch(
                f"{where} has no image for platform {want} (it has: "
                f"{', '.join(sorted(set(seen)))}); choose one with --platform")
        raise errors.UnsupportedManifest(f"index {where} names no image manifest")
    if not all_platforms:       # one image: a platform's best match before an entry with none
        found = sorted(_best_for_platform(found, want), key=lambda f: f[3] is None)[:1]
    return [(desc, plat) for _, desc, _, plat in found]


def plan_oci_layout(files: ArchiveFiles, platform: str | None,
                    all_platforms: bool) -> list[ImagePlan]:
    if files.has("oci-layout"):
        layout = _json(files.read("oci-layout"), "oci-layout")
        _expect(isinstance(layout, dict) and isinstance(layout.get("imageLayoutVersion"), str),
                "oci-layout lacks imageLayoutVersion")
    index = _json(files.read("index.json"), "index.json")
    _expect(isinstance(index, dict) and isinstance(index.get("manifests"), list),
            "index.json has no manifests list")
    want = platform or host_platform()
    found: list[tuple[dict, dict, bytes, str | None]] = []   # (top desc, desc, manifest, plat)
    seen_platforms: list[str] = []

    def walk(idx: dict, top: dict | None, depth: int) -> None:
        _expect(depth < 8, "image indexes nest more than 8 deep")
        for desc in idx.get("manifests") or []:
            if not isinstance(desc, dict) or is_attestation(desc):
                continue
            data = _read_blob(files, desc, "manifest")
            doc = _json(data, f"blob {desc.get('digest')}")
            _expect(isinstance(doc, dict), f"blob {desc.get('digest')} is not a JSON object")
            mt = desc.get("mediaType") or doc.get("mediaType")
            if mt in INDEX_TYPES or (mt is None and "manifests" in doc):
                walk(doc, top or desc, depth + 1)
                continue
            _expect(mt in MANIFEST_TYPES or (mt is None and "layers" in doc),
                    f"unsupported manifest media type {mt!r}")
            plat = platform_of(desc.get("platform"))
            if plat is not None:
                seen_platforms.append(plat)
                if not all_platforms and not platform_matches(plat, want):
                    continue
            found.append((top or desc, desc, data, plat))

    walk(index, None, 0)
    if not found:
        if seen_platforms:
            raise errors.PlatformMismatch(
                f"the archive has no image for platform {want} (it has: "
                f"{', '.join(sorted(set(seen_platforms)))}); choose one with --platform")
        raise errors.CorruptArchive("index.json names no image manifest")
    if not all_platforms:
        found = _best_for_platform(found, want)

    plans = []
    for top, desc, data, plat in found:
        ann = top.get("annotations") or {}
        names = [ann.get("io.containerd.image.name")]
        ref = ann.get("org.opencontainers.image.ref.name")
        if ref and (":" in ref or "/" in ref):      # a bare "latest" names no repository
            names.append(ref)
        tags = _tags([n for n in names if n], ignore_invalid=True)
        plans.append(plan_manifest(data, desc["digest"], desc.get("mediaType"),
                                   lambda cdesc: _read_blob(files, cdesc, "config"),
                                   tags=tags, platform=plat))
    if all_platforms:
        # A tag names one image: give it to the one for the wanted platform.
        fits = [p for p in plans if p.platform and platform_matches(p.platform, want)]
        keep = min(fits, key=lambda p: platform_rank(p.platform, want)) if fits else plans[0]
        for p in plans:
            if p is not keep:
                p.tags = []
    return plans


def plan_images(files: ArchiveFiles, platform: str | None = None,
                all_platforms: bool = False) -> list[ImagePlan]:
    """The images an archive holds (or those for the wanted platform).  A platform asked for
    also applies to images that no index describes (a docker-archive, an index entry without
    a platform): one whose config names another platform is not imported, and an archive
    left with none is refused (PlatformMismatch), naming both."""
    if platform is not None:
        platform = parse_platform(platform)
    if files.has("manifest.json"):
        plans = plan_docker_archive(files)
    elif files.has("index.json"):
        plans = plan_oci_layout(files, platform, all_platforms)
    else:
        raise errors.UnsupportedFormat("not an image archive: neither manifest.json "
                                       "(docker-archive) nor index.json (OCI image layout) "
                                       "found")
    if platform is None or all_platforms:
        return plans
    kept = [p for p in plans if p.platform is None or platform_matches(p.platform, platform)]
    if not kept:
        have = ", ".join(sorted({p.platform for p in plans}))
        raise errors.PlatformMismatch(f"the archive's image is for {have}, not for the platform "
                                      f"asked for, {platform}")
    return kept
