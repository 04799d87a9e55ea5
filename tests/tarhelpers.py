"""Helpers shared by the tar and corpus tests: an oracle listing made with Python's tarfile, and
feeding a stream to the core in chosen pieces."""

from __future__ import annotations

import hashlib
import io
import posixpath
import tarfile

import blake3

from layerstore import _native
from layerstore._model import EntryType

TYPES = {
    tarfile.REGTYPE: EntryType.FILE, tarfile.AREGTYPE: EntryType.FILE,
    tarfile.CONTTYPE: EntryType.FILE, tarfile.GNUTYPE_SPARSE: EntryType.FILE,
    tarfile.LNKTYPE: EntryType.HARDLINK, tarfile.SYMTYPE: EntryType.SYMLINK,
    tarfile.CHRTYPE: EntryType.CHAR, tarfile.BLKTYPE: EntryType.BLOCK,
    tarfile.DIRTYPE: EntryType.DIR, tarfile.FIFOTYPE: EntryType.FIFO,
}


def clean(name: str) -> str:
    """What the core makes of an archive path: relative to the root, "." for the root."""
    cleaned = posixpath.normpath("/" + name).lstrip("/")
    return cleaned or "."


def oracle(data: bytes) -> list[dict]:
    """Lists a tar with tarfile, in the shape of entry_dict()."""
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        for m in tf:
            etype = TYPES[m.type]
            d = {
                "path": clean(m.name), "type": etype, "mode": m.mode & 0o7777,
                "uid": m.uid, "gid": m.gid, "mtime_ns": int(m.mtime) * 10**9,
                "uname": m.uname, "gname": m.gname,
                "xattrs": tuple(sorted(
                    (k[len("SCHILY.xattr."):], v.encode("utf-8", "surrogateescape"))
                    for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr."))),
                "size": 0, "link": None, "content_hash": None, "dev": (0, 0),
            }
            if etype is EntryType.FILE:
                content = tf.extractfile(m).read()
                d["size"] = len(content)
                d["content_hash"] = blake3.blake3(content).hexdigest()
            elif etype is EntryType.SYMLINK:
                d["link"] = m.linkname
            elif etype is EntryType.HARDLINK:
                d["link"] = clean(m.linkname)
            if etype in (EntryType.CHAR, EntryType.BLOCK):
                d["dev"] = (m.devmajor, m.devminor)
            out.append(d)
    return out


def entry_dict(e) -> dict:
    return {
        "path": e.path, "type": e.type, "mode": e.mode, "uid": e.uid, "gid": e.gid,
        "mtime_ns": e.mtime_ns - e.mtime_ns % 10**9, "uname": e.uname, "gname": e.gname,
        "xattrs": e.xattrs, "size": e.size, "link": e.link, "content_hash": e.content_hash,
        "dev": (e.devmajor, e.devminor),
    }


def feed(data: bytes, sizes=None, store=None) -> _native.IngestResult:
    """Ingests data cut into pieces of the given sizes (cycled), or in one piece."""
    ingest = _native.LayerIngest(store)
    try:
        if not sizes:
            ingest.feed(data)
        else:
            pos, i = 0, 0
            while pos < len(data):
                n = sizes[i % len(sizes)]
                ingest.feed(data[pos:pos + n])
                pos += n
                i += 1
        return ingest.finish()
    finally:
        ingest.close()


def rebuild(result: _native.IngestResult, contents: list[bytes]) -> bytes:
    """Re-creates the tar from raw metadata and the content of each regular file in order."""
    out = bytearray()
    pos = 0
    files = iter(contents)
    for rec in _native.decode_records(result.records):
        out += result.raw[pos:pos + rec.raw_len]
        pos += rec.raw_len
        if rec.entry.type is EntryType.FILE:
            out += next(files)
    out += result.raw[pos:]
    return bytes(out)


def file_contents(data: bytes) -> list[bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        return [tf.extractfile(m).read() for m in tf if TYPES[m.type] is EntryType.FILE]


def sha256_id(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
