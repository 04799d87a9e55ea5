"""The content SHA-256 map: which stored object holds a file that a zstd:chunked or eStargz
TOC names by the SHA-256 of its content (the store names objects by BLAKE3).

The map lives in the index (sha256, object_sha256; schema 3) and is made the first time a
store meets a chunked layer: every object is read once and SHA-256'd in C on every core, by
the path fsck reads with (fsck.c, SHA-NI where the CPU has it).  After that each fill hashes
only the objects imported since and drops the ids gc removed, so the map cannot drift from
the objects table, and stores that never pull a chunked layer (and every import) pay nothing.
"""

from __future__ import annotations

from .. import _native


def fill(ctx, report=None) -> int:
    """Brings ctx's map up to date with its objects; the number of objects hashed.  report:
    see _native.observed (bytes and objects hashed)."""
    index = ctx.index
    with index.read() as txn:
        missing, dead = index.sha256_todo(txn)
        made = index.has_sha256_map(txn)
    if made and not missing and not dead:
        return 0
    missing.sort(key=lambda item: -item[1])
    ids = [oid for oid, _ in missing]
    shas = _native.objects_sha256(ctx.objects_dir, ids, report=report)
    # An object that vanished or changed meanwhile is not mapped: fsck reports it, and the
    # partial pull checks each file's content against its TOC digest before it uses it.
    found = [(oid, sha) for oid, sha in zip(ids, shas) if sha is not None]
    with index.write() as txn:
        index.put_sha256(txn, found, dead)
    return len(found)


def lookup(ctx, txn, digest: str, size: int) -> bytes | None:
    """A live object of size bytes whose content has this "sha256:<hex>" digest, or None.
    (Content with the digest and another size means a TOC that lies: the file is then
    fetched, and its check against the TOC fails.)"""
    if not digest.startswith("sha256:") or len(digest) != 71:
        return None
    try:
        sha = bytes.fromhex(digest[7:])
    except ValueError:
        return None
    return ctx.index.sha256_object(txn, sha, size)
