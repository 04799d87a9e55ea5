"""Image references as Docker spells them: name:tag, name@digest, sha256:<id>, or an id prefix.

Tags are stored normalized the way Docker normalizes them ("ubuntu" is
"docker.io/library/ubuntu:latest"), so "corpus/python" and "docker.io/corpus/python:latest"
name the same image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .. import errors

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[a-fA-F0-9:]+\])"
# \Z, not $: "$" also matches before a final newline, and "sha256:<hex>\n" must never pass
# as a digest (it would become a blob path or index key).
_DOMAIN_RE = re.compile(rf"{_HOST}(?::[0-9]+)?\Z")
_PATH_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*\Z")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}\Z")
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}\Z")
HEX_PREFIX_RE = re.compile(r"^(?:sha256:)?([0-9a-f]{12,64})\Z")
SHORT_PREFIX_RE = re.compile(r"^(?:sha256:)?[0-9a-f]{1,11}\Z")
MIN_PREFIX = 12
NAME_MAX = 255          # a repository name, domain included (distribution/reference)
DOCKER_HUB = "docker.io"


def check_digest(digest: str, what: str = "digest") -> str:
    """Returns digest if it is sha256:<64 hex>; anything else never reaches a path or a key."""
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise errors.CorruptArchive(f"invalid {what} {str(digest)[:100]!r}: expected "
                                    "sha256:<64 lowercase hex digits>")
    return digest


@dataclass(frozen=True)
class Reference:
    """An image reference as Docker normalizes it: the registry's domain (docker.io for
    Docker Hub), the repository path (library/ for Docker Hub's official images), and a tag,
    a digest, or both (docker.io/library/python:3.12, localhost:5000/app@sha256:...)."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """domain/path: the repository, as tags in the store spell it."""
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        return (self.name + (f":{self.tag}" if self.tag else "")
                + (f"@{self.digest}" if self.digest else ""))


def parse_reference(ref: str, default_tag: str | None = "latest") -> Reference:
    """A reference as Docker's ParseNormalizedNamed reads it (distribution/reference):
    a first component with a '.' or a ':', or localhost, or an upper-case letter, is the
    registry's domain (a host with an optional port; an IPv6 host in brackets), else the
    image is Docker Hub's: "python" is docker.io/library/python, "docker.io/ubuntu" and
    "index.docker.io/ubuntu" are docker.io/library/ubuntu.  A reference with neither tag nor
    digest gets default_tag.  InvalidReference, with Docker's reason, for anything else."""
    if not isinstance(ref, str) or not ref:
        raise errors.InvalidReference(f"invalid reference format: {ref!r}")
    if re.fullmatch(r"[0-9a-f]{64}", ref):
        raise errors.InvalidReference(f"invalid repository name {ref!r}: a name cannot be 64 "
                                      "hexadecimal digits (an image id)")
    rest, at, digest = ref.partition("@")
    if at and not DIGEST_RE.match(digest):
        raise errors.InvalidReference(f"invalid reference format: {ref!r}: the digest must be "
                                      "sha256:<64 lowercase hex digits>")
    name, tag = rest, None
    colon, slash = rest.rfind(":"), rest.rfind("/")
    if colon > slash:
        name, tag = rest[:colon], rest[colon + 1:]
        if not _TAG_RE.match(tag):
            raise errors.InvalidReference(f"invalid reference format: {ref!r}: bad tag {tag!r}")
    first, sep, remainder = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        domain, path = first, remainder
    else:
        domain, path = DOCKER_HUB, name
    if domain == "index.docker.io":
        domain = DOCKER_HUB
    if domain == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if not _DOMAIN_RE.match(domain):
        raise errors.InvalidReference(f"invalid reference format: {ref!r}: bad registry "
                                      f"{domain!r}")
    if not _PATH_RE.match(path):
        reason = ("repository name must be lowercase" if path.lower() != path and
                  _PATH_RE.match(path.lower()) else "bad repository name")
        raise errors.InvalidReference(f"invalid reference format: {ref!r}: {reason}")
    if len(f"{domain}/{path}") > NAME_MAX:
        raise errors.InvalidReference(f"invalid reference format: {ref!r}: the repository "
                                      f"name is longer than {NAME_MAX} characters")
    if tag is None and digest == "":
        tag = default_tag
    return Reference(domain, path, tag, digest or None)


def normalize_tag(ref: str) -> str:
    """name[:tag] -> domain/path:tag, as Docker normalizes it: the form tags take in the
    store.  A reference by digest names no tag (InvalidReference)."""
    r = parse_reference(ref)
    if r.digest is not None:
        raise errors.InvalidReference(f"{ref!r} names an image by digest, not a tag")
    return f"{r.name}:{r.tag}"


def new_tag(ref: str) -> str:
    """A tag to create (tag, import --tag), normalized; refused, as Docker refuses them, when
    it could be read as an image id: 64 hex digits, or a name "sha256"."""
    tag = normalize_tag(ref)
    if familiar(tag).rpartition(":")[0] == "sha256":
        raise errors.InvalidReference(f"refusing to create an ambiguous tag {ref!r}: its name is "
                                      "the digest algorithm of image ids")
    return tag


def familiar(tag: str) -> str:
    """A normalized tag as Docker shows it: docker.io/library/ubuntu:22.04 -> ubuntu:22.04,
    docker.io/corpus/python:latest -> corpus/python:latest; other registries unchanged."""
    if tag.startswith("docker.io/"):
        tag = tag[len("docker.io/"):]
        if tag.startswith("library/") and "/" not in tag[len("library/"):]:
            tag = tag[len("library/"):]
    return tag


def _glob(pattern: str) -> re.Pattern:
    """Go's path.Match pattern as a regex: * and ? never match "/", [...] with ^ negating."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        i += 1
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\" and i < len(pattern):
            out.append(re.escape(pattern[i]))
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                raise errors.InvalidReference(f"invalid reference pattern {pattern!r}: "
                                              "unclosed [")
            body = pattern[i:end]
            negate = body.startswith("^")
            body = body[1:] if negate else body
            out.append(("[^/" if negate else "[") + body.replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(c))
    return re.compile("".join(out) + r"\Z")


def tag_matches(pattern: str, tag: str) -> bool:
    """Whether a normalized tag matches a `docker images REPOSITORY[:TAG]` argument: the
    pattern (Go's path.Match: * and ? within one path component) against name:tag, or when it
    names no tag against the name alone; both as Docker shows them (ubuntu) and in full
    (docker.io/library/ubuntu)."""
    rx = _glob(pattern)
    short = familiar(tag)
    return any(rx.match(form) for form in (short, short.rpartition(":")[0],
                                           tag, tag.rpartition(":")[0]))
