"""Image archive formats: from an archive's metadata files to a plan of images to import.

Read: docker-archive (legacy `docker save`: manifest.json, <id>.json, <id>/layer.tar or
<hex>.tar; and Docker >= 25's OCI-based one, whose manifest.json points into blobs/), and the
OCI image layout (oci-layout, index.json, blobs/sha256/...) with nested image indexes and
platform selection.  Every digest is checked before it is used; every path named by metadata
must stay inside the archive.
"""

from __future__ import annotations

import hashlib
import json
import platform as _platform
import posixpath
import re
from dataclasses import dataclass, field
from typing import Protocol

from .. import errors
from .reference import check_digest, normalize_tag
from ..errors import DigestMismatch, InvalidReference, MissingBlob

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


def host_platform() -> str:
    machine = _platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
            "armv7l": "arm/v7", "armv6l": "arm/v6", "i686": "386", "i386": "386",
            "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}.get(machine, machine)
    return f"linux/{arch}"


# The values the OCI image index's platform.os and platform.architecture take: Go's GOOS and
# GOARCH (https://go.dev/doc/install/source#environment), as the spec says.
OSES = frozenset("aix android darwin dragonfly freebsd illumos ios js linux netbsd openbsd "
                 "plan9 solaris wasip1 windows".split())
ARCHES = frozenset("386 amd64 arm arm64 loong64 mips mipsle mips64 mips64le ppc64 ppc64le "
                   "riscv64 s390x wasm".split())
# What uname and Debian call them, which Docker (containerd's platforms) accepts too.
_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "i386": "386",
                 "i486": "386", "i586": "386", "i686": "386", "armhf": "arm/v7",
                 "armel": "arm/v6"}
_PART = re.compile(r"[a-z0-9][a-z0-9._-]*\Z")


def parse_platform(value: str) -> str:
    """A --platform value as os/arch[/variant] (InvalidPlatform if it is none), as Docker
    reads it: "linux/arm64/v8", "linux/amd64", or one part with the rest this machine's
    ("arm64" is linux/arm64, "linux" is linux/<this machine's arch>)."""
    parts = value.lower().split("/")
    if len(parts) > 3 or not all(_PART.match(p) for p in parts):
        raise errors.InvalidPlatform(f"invalid platform {value!r}: expected "
                                     "os[/arch[/variant]], e.g. linux/amd64 or linux/arm64/v8")
    if len(parts) == 1:
        host_os, _, host_arch = host_platform().partition("/")
        if parts[0] in OSES:
            parts = [parts[0], *host_arch.split("/")]
        else:
            parts = [host_os, parts[0]]
    os_, arch, *variant = parts
    arch, _, implied = _ARCH_ALIASES.get(arch, arch).partition("/")
    variant = variant or ([implied] if implied else [])
    if os_ not in OSES:
        raise errors.InvalidPlatform(f"invalid platform {value!r}: unknown operating system "
                                     f"{os_!r} (one of {', '.join(sorted(OSES))})")
    if arch not in ARCHES:
        raise errors.InvalidPlatform(f"invalid platform {value!r}: unknown architecture "
                                     f"{arch!r} (one of {', '.join(sorted(ARCHES))})")
    return "/".join([os_, arch, *variant])


def _platform_of(p: dict | None) -> str | None:
    if not isinstance(p, dict) or "os" not in p or "architecture" not in p:
        return None
    s = f"{p['os']}/{p['architecture']}"
    return f"{s}/{p['variant']}" if p.get("variant") else s


def _platform_matches(have: str, want: str) -> bool:
    # "linux/arm64" matches "linux/arm64/v8"; a wanted variant must match exactly.
    h, w = have.split("/"), want.split("/")
    return h[:2] == w[:2] and (len(w) < 3 or h[2:3] == w[2:3])


def _parse_config(data: bytes, name: str, digest: str | None) -> tuple[str, dict]:
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
        digest, config = _parse_config(data, config_name, named)
        diff_ids = config["rootfs"]["diff_ids"]
        _expect(len(diff_ids) == len(entry["Layers"]),
                f"manifest.json lists {len(entry['Layers'])} layers for {config_name}, but its "
                f"config has {len(diff_ids)} diffIDs")
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
                               platform=_platform_of({"os": config.get("os"),
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


def _is_attestation(desc: dict) -> bool:
    ann = desc.get("annotations") or {}
    return ann.get("vnd.docker.reference.type") == "attestation-manifest"


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
            if not isinstance(desc, dict) or _is_attestation(desc):
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
            plat = _platform_of(desc.get("platform"))
            if plat is not None:
                seen_platforms.append(plat)
                if not all_platforms and not _platform_matches(plat, want):
                    continue
            found.append((top or desc, desc, data, plat))

    walk(index, None, 0)
    if not found:
        if seen_platforms:
            raise errors.PlatformMismatch(
                f"the archive has no image for platform {want} (it has: "
                f"{', '.join(sorted(set(seen_platforms)))}); choose one with --platform")
        raise errors.CorruptArchive("index.json names no image manifest")

    plans = []
    for top, desc, data, plat in found:
        manifest = _json(data, f"manifest {desc['digest']}")
        cdesc = manifest.get("config")
        _expect(isinstance(cdesc, dict) and isinstance(manifest.get("layers"), list),
                f"manifest {desc['digest']} lacks config or layers")
        config_data = _read_blob(files, cdesc, "config")
        config_digest, config = _parse_config(config_data, f"blob {cdesc['digest']}",
                                              cdesc["digest"])
        diff_ids = config["rootfs"]["diff_ids"]
        _expect(len(diff_ids) == len(manifest["layers"]),
                f"manifest {desc['digest']} lists {len(manifest['layers'])} layers but its "
                f"config has {len(diff_ids)} diffIDs")
        layers = []
        for ldesc, diff_id in zip(manifest["layers"], diff_ids):
            _expect(isinstance(ldesc, dict), "layer descriptor is not an object")
            digest = check_digest(ldesc.get("digest"), "layer digest")
            size = ldesc.get("size")
            _expect(size is None or (isinstance(size, int) and size >= 0),
                    f"layer {digest} has an invalid size")
            layers.append(LayerRef(blob_name(digest), diff_id, digest, size,
                                   ldesc.get("mediaType")))
        ann = top.get("annotations") or {}
        names = [ann.get("io.containerd.image.name")]
        ref = ann.get("org.opencontainers.image.ref.name")
        if ref and (":" in ref or "/" in ref):      # a bare "latest" names no repository
            names.append(ref)
        tags = _tags([n for n in names if n], ignore_invalid=True)
        if plat is None:
            plat = _platform_of({"os": config.get("os"), "architecture":
                                 config.get("architecture"), "variant": config.get("variant")})
        plans.append(ImagePlan(config_data, config_digest, layers, tags, data, desc["digest"],
                               desc.get("mediaType") or manifest.get("mediaType"),
                               "oci", plat))
    if all_platforms:
        # A tag names one image: give it to the one for the wanted platform.
        keep = next((p for p in plans if p.platform and _platform_matches(p.platform, want)),
                    plans[0])
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
    kept = [p for p in plans if p.platform is None or _platform_matches(p.platform, platform)]
    if not kept:
        have = ", ".join(sorted({p.platform for p in plans}))
        raise errors.PlatformMismatch(f"the archive's image is for {have}, not for the platform "
                                      f"asked for, {platform}")
    return kept
