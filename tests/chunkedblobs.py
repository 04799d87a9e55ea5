"""zstd:chunked and eStargz blobs built in the tests, in the formats' layouts (see
layerstore/formats/chunked.py): per-file frames, the TOC, the tar-split (current format),
skippable frames and footers."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import struct
import tarfile

import zstandard

from layerstore.formats import chunked as c


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _z(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(data)


def _skippable(data: bytes) -> bytes:
    return c.SKIPPABLE_MAGIC + struct.pack("<I", len(data)) + data


def build_zstd_chunked(files: dict[str, bytes], tarsplit: bool = True, dup: bool = False,
                       lies: dict | None = None, chunk_size: int = 0
                       ) -> tuple[bytes, dict, bytes]:
    """A zstd:chunked blob of files (current format with tar-split, or the old one), its
    layer annotations and the tar stream it decompresses to.  lies: name -> the digest the
    TOC gives that file instead of its own (the annotations vouch for that TOC).
    chunk_size: content cut into frames of that size, each after the first a chunk entry."""
    out, entries, splits = bytearray(), [], []
    tar = bytearray()
    pending = b""                       # tar bytes not yet written: headers and padding
    for name, data in files.items():
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, 1
        header = info.tobuf(tarfile.GNU_FORMAT)
        pending += header
        splits.append({"type": 2, "payload": base64.b64encode(pending).decode()})
        out += _z(pending)
        tar += pending
        pending = b""
        entry = {"type": "reg", "name": name, "mode": 0o644, "size": len(data),
                 "modtime": "1970-01-01T00:00:01Z"}
        chunks = []
        if data:
            entry.update(digest=(lies or {}).get(name, _sha(data)), offset=len(out))
            step = chunk_size or len(data)
            for start in range(0, len(data), step):
                piece = data[start:start + step]
                if start:
                    chunks.append({"type": "chunk", "name": name, "offset": len(out),
                                   "chunkOffset": start, "chunkSize": len(piece),
                                   "chunkDigest": _sha(piece)})
                out += _z(piece)
                (chunks[-1] if start else entry)["endOffset"] = len(out)
            entry["endOffset"] = len(out)
            tar += data
        entries.append(entry)
        entries.extend(chunks)
        splits.append({"type": 1, "name": name, "size": len(data)})
        pending = b"\0" * (-len(data) % 512)
    pending += b"\0" * 1024
    splits.append({"type": 2, "payload": base64.b64encode(pending).decode()})
    out += _z(pending)
    tar += pending
    if dup:
        entries.append(dict(entries[0]))
    tarsplit_z = _z(b"".join(json.dumps(s).encode() + b"\n" for s in splits))
    toc = {"version": 1, "entries": entries}
    if tarsplit:
        toc["tarSplitDigest"] = _sha(tarsplit_z)
    raw = json.dumps(toc).encode()
    toc_z = _z(raw)
    toc_at = len(out) + 8
    out += _skippable(toc_z)
    prefix = "io.github.containers.zstd-chunked." if tarsplit else "io.containers.zstd-chunked."
    ann = {prefix + "manifest-checksum": _sha(toc_z),
           prefix + "manifest-position": f"{toc_at}:{len(toc_z)}:{len(raw)}:1"}
    fields = [toc_at, len(toc_z), len(raw), 1]
    if tarsplit:
        ts_at = len(out) + 8
        out += _skippable(tarsplit_z)
        ann[prefix + "tarsplit-position"] = f"{ts_at}:{len(tarsplit_z)}:" \
            f"{len(zstandard.ZstdDecompressor().decompress(tarsplit_z))}"
        fields += [ts_at, len(tarsplit_z),
                   len(zstandard.ZstdDecompressor().decompress(tarsplit_z))]
    out += _skippable(struct.pack(f"<{len(fields)}Q", *fields) + c.ZSTD_MAGIC)
    return bytes(out), ann, bytes(tar)


def _header(name: str, value) -> bytes:
    """The tar header of one entry: bytes are a regular file, None (name ending in "/") a
    directory, a str a symlink to it."""
    info = tarfile.TarInfo(name.rstrip("/"))
    info.mode, info.mtime = 0o644, 1
    if value is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    elif isinstance(value, str):
        info.type, info.linkname = tarfile.SYMTYPE, value
    else:
        info.size = len(value)
    return info.tobuf(tarfile.GNU_FORMAT)


def build_estargz(files: dict, chunk_size: int = 4 << 20, edit=None) -> tuple[bytes, dict]:
    """An eStargz blob as stargz-snapshotter's Writer lays it out: a gzip member is closed
    before each chunk of a regular file's content and a new one started there, so the
    padding after the content and the headers up to the next content (dirs, symlinks, the
    next file's header) share the last chunk's member; the TOC is the last tar entry
    (stargz.index.json, then the end-of-archive blocks) in a member of its own; the 51-byte
    footer is an empty gzip member whose Extra field holds the TOC's offset.  The blob
    decompresses (gzip.decompress: every member) to the layer's tar.  files: name -> bytes
    (regular file), None (directory), str (symlink target).  edit(entries): changes the TOC
    entries before they are written (the annotation vouches for the changed TOC)."""
    out, entries = bytearray(), []
    member = b""                        # uncompressed bytes of the open member

    def close() -> None:
        nonlocal member
        if member:
            out.extend(gzip.compress(member, mtime=0))
        member = b""

    for name, value in files.items():
        member += _header(name, value)
        entry = {"name": name.rstrip("/"), "mode": 0o644}
        if value is None:
            entry.update(type="dir", mode=0o755)
        elif isinstance(value, str):
            entry.update(type="symlink", linkName=value)
        else:
            entry.update(type="reg", size=len(value))
        if isinstance(value, bytes) and value:
            entry["digest"] = _sha(value)
            for start in range(0, len(value), chunk_size):
                chunk = value[start:start + chunk_size]
                close()
                if start:
                    entry = {"name": name, "type": "chunk"}
                entry.update(offset=len(out), chunkOffset=start, chunkDigest=_sha(chunk))
                if len(value) - start >= chunk_size:
                    entry["chunkSize"] = chunk_size
                member = chunk
                entries.append(entry)
            member += b"\0" * (-len(value) % 512)
        else:
            entries.append(entry)
    close()
    if edit is not None:
        edit(entries)
    raw = json.dumps({"version": 1, "entries": entries}, indent="\t").encode()
    toc_at = len(out)
    info = tarfile.TarInfo("stargz.index.json")
    info.size = len(raw)
    out += gzip.compress(info.tobuf(tarfile.GNU_FORMAT) + raw + b"\0" * (-len(raw) % 512)
                         + b"\0" * 1024, mtime=0)
    extra = b"SG" + struct.pack("<H", 22) + b"%016xSTARGZ" % toc_at
    footer = (b"\x1f\x8b\x08\x04\0\0\0\0\0\xff" + struct.pack("<H", len(extra)) + extra
              + b"\x01\x00\x00\xff\xff" + b"\0" * 8)
    assert len(footer) == c.ESTARGZ_FOOTER_SIZE
    out += footer
    return bytes(out), {c.ESTARGZ_TOC_DIGEST: _sha(raw)}
