"""Image references as Docker spells them: name:tag, sha256:<id>, or an id prefix.

Tags are stored normalized the way Docker normalizes them ("ubuntu" is
"docker.io/library/ubuntu:latest"), so "corpus/python" and "docker.io/corpus/python:latest"
name the same image.
"""

from __future__ import annotations

import re

from .. import errors

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?))*(?::[0-9]+)?"
# \Z, not $: "$" also matches before a final newline, and "sha256:<hex>\n" must never pass
# as a digest (it would become a blob path or index key).
_NAME_RE = re.compile(rf"^(?:({_DOMAIN})/)?({_COMPONENT}(?:/{_COMPONENT})*)\Z")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}\Z")
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}\Z")
HEX_PREFIX_RE = re.compile(r"^(?:sha256:)?([0-9a-f]{12,64})\Z")
SHORT_PREFIX_RE = re.compile(r"^(?:sha256:)?[0-9a-f]{1,11}\Z")
MIN_PREFIX = 12


def check_digest(digest: str, what: str = "digest") -> str:
    """Returns digest if it is sha256:<64 hex>; anything else never reaches a path or a key."""
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise errors.CorruptArchive(f"invalid {what} {str(digest)[:100]!r}: expected "
                                    "sha256:<64 lowercase hex digits>")
    return digest


def normalize_tag(ref: str) -> str:
    """name[:tag] -> domain/path:tag, as Docker normalizes it."""
    name, tag = ref, "latest"
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        name, tag = ref[:colon], ref[colon + 1:]
    m = _NAME_RE.match(name)
    if not m or not _TAG_RE.match(tag):
        raise errors.InvalidReference(f"invalid reference format: {ref!r}")
    domain, path = m.group(1), m.group(2)
    # A first component without '.' or ':' and other than localhost is a Docker Hub path.
    if domain is not None and not ("." in domain or ":" in domain or domain == "localhost"):
        path = f"{domain}/{path}"
        domain = None
    if domain is None:
        domain = "docker.io"
        if "/" not in path:
            path = f"library/{path}"
    return f"{domain}/{path}:{tag}"


def new_tag(ref: str) -> str:
    """A tag to create (tag, import --tag), normalized; refused, as Docker refuses them, when
    it could be read as an image id: 64 hex digits, or a name "sha256"."""
    tag = normalize_tag(ref)
    if re.fullmatch(r"[0-9a-f]{64}", ref):
        raise errors.InvalidReference(f"invalid repository name {ref!r}: a name cannot be 64 "
                                      "hexadecimal digits (an image id)")
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
