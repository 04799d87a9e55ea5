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
                       lies: dict | None = None) -> tuple[bytes, dict, bytes]:
    """A zstd:chunked blob of files (current format with tar-split, or the old one), its
    layer annotations and the tar stream it decompresses to.  lies: name -> the digest the
    TOC gives that file instead of its own (the annotations vouch for that TOC)."""
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
        if data:
            entry.update(digest=(lies or {}).get(name, _sha(data)), offset=len(out))
            out += _z(data)
            entry["endOffset"] = len(out)
            tar += data
        entries.append(entry)
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


def build_estargz(files: dict[str, bytes]) -> tuple[bytes, dict]:
    """An eStargz blob: a gzip member per payload, the TOC member, the 51-byte footer."""
    out, entries = bytearray(), []
    for name, data in files.items():
        info = tarfile.TarInfo(name)
        info.size = len(data)
        out += gzip.compress(info.tobuf(tarfile.GNU_FORMAT), mtime=0)
        entry = {"name": name, "type": "reg", "size": len(data), "mode": 0o644}
        if data:
            entry.update(digest=_sha(data), offset=len(out))
            out += gzip.compress(data + b"\0" * (-len(data) % 512), mtime=0)
        entries.append(entry)
    raw = json.dumps({"version": 1, "entries": entries}).encode()
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


