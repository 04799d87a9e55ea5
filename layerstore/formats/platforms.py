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


def platform_of(p: dict | None) -> str | None:
    if not isinstance(p, dict) or "os" not in p or "architecture" not in p:
        return None
    s = f"{p['os']}/{p['architecture']}"
    return f"{s}/{p['variant']}" if p.get("variant") else s


def platform_matches(have: str, want: str) -> bool:
    # "linux/arm64" matches "linux/arm64/v8"; a wanted variant must match exactly.
    h, w = have.split("/"), want.split("/")
    return h[:2] == w[:2] and (len(w) < 3 or h[2:3] == w[2:3])
