"""Platforms as images and users name them: os/arch[/variant], checked against the values the
OCI image index allows, and matched as Docker matches them."""

from __future__ import annotations

import platform as _platform
import re

from .. import errors


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
    ("arm64" is linux/arm64, "linux" is linux/<this machine's arch>); normalized (see
    normalize_platform)."""
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
    os_, arch = parts[0], _ARCH_ALIASES.get(parts[1], parts[1]).partition("/")[0]
    if os_ not in OSES:
        raise errors.InvalidPlatform(f"invalid platform {value!r}: unknown operating system "
                                     f"{os_!r} (one of {', '.join(sorted(OSES))})")
    if arch not in ARCHES:
        raise errors.InvalidPlatform(f"invalid platform {value!r}: unknown architecture "
                                     f"{arch!r} (one of {', '.join(sorted(ARCHES))})")
    return normalize_platform("/".join(parts))


def normalize_platform(value: str) -> str:
    """os/arch[/variant] as containerd's platforms.Normalize spells it, so that two names of
    one platform compare equal: x86_64 is amd64 and amd64/v1 plain amd64, aarch64 is arm64
    and arm64/v8 plain arm64, armhf is arm/v7 and armel arm/v6, and arm without a variant is
    arm/v7."""
    os_, _, rest = value.lower().partition("/")
    arch, _, variant = rest.partition("/")
    arch, _, implied = _ARCH_ALIASES.get(arch, arch).partition("/")
    variant = variant or implied
    if arch in ("amd64", "arm64", "arm") and variant.isdigit():
        variant = f"v{variant}"
    if (arch, variant) in (("amd64", "v1"), ("arm64", "v8"), ("arm64", "v8.0")):
        variant = ""
    if arch == "arm" and not variant:
        variant = "v7"
    return "/".join([os_, arch] + ([variant] if variant else []))


def runnable_platforms(want: str) -> list[str]:
    """The platforms whose images run where want is asked for, best first, as containerd's
    platforms.Only orders them: an amd64 level also runs the levels below it and 386, arm/vN
    runs vN-1 down to v5, and arm64 runs arm/v8 down to v5."""
    os_, arch, *variant = normalize_platform(want).split("/")
    level = variant[0][1:] if variant and variant[0][1:].isdigit() else None
    out = [normalize_platform(want)]
    if arch == "amd64":
        out += [normalize_platform(f"{os_}/amd64/v{n}") for n in range(int(level or 1) - 1, 0, -1)]
        out.append(f"{os_}/386")
    elif arch == "arm" and level is not None:
        out += [f"{os_}/arm/v{n}" for n in range(int(level) - 1, 4, -1)]
    elif arch == "arm64":
        out += [f"{os_}/arm/v{n}" for n in range(8, 4, -1)]
    return out


def platform_rank(have: str, want: str) -> int | None:
    """How well an image for have suits want: 0 is an exact match, higher is a fallback (see
    runnable_platforms), None does not run there."""
    options = runnable_platforms(want)
    have = normalize_platform(have)
    return options.index(have) if have in options else None


def platform_matches(have: str, want: str) -> bool:
    return platform_rank(have, want) is not None


def platform_of(p: dict | None) -> str | None:
    """The platform an index descriptor or an image config names, normalized; None when it
    names none."""
    if not isinstance(p, dict) or not p.get("os") or not p.get("architecture"):
        return None
    s = f"{p['os']}/{p['architecture']}"
    return normalize_platform(f"{s}/{p['variant']}" if p.get("variant") else s)


def is_attestation(desc: dict) -> bool:
    """An index entry that is no image to run: BuildKit's attestation manifests (in-toto
    statements, marked by an annotation and by the platform unknown/unknown)."""
    ann = desc.get("annotations") or {}
    plat = desc.get("platform") or {}
    return (ann.get("vnd.docker.reference.type") == "attestation-manifest"
            or (plat.get("os"), plat.get("architecture")) == ("unknown", "unknown"))
