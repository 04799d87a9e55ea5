"""Image references as Docker spells them: name:tag, sha256:<id>, or an id prefix.

Tags are stored normalized the way Docker normalizes them ("ubuntu" is
"docker.io/library/ubuntu:latest"), so "corpus/python" and "docker.io/corpus/python:latest"
name the same image.
"""

from __future__ import annotations

import re

from . import errors

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?))*(?::[0-9]+)?"
# \Z, not $: "$" also matches before a final newline, and "sha256:<hex>\n" must never pass
# as a digest (it would become a blob path or index key).
_NAME_RE = re.compile(rf"^(?:({_DOMAIN})/)?({_COMPONENT}(?:/{_COMPONENT})*)\Z")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}\Z")
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}\Z")
HEX_PREFIX_RE = re.compile(r"^(?:sha256:)?([0-9a-f]{12,64})\Z")


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
