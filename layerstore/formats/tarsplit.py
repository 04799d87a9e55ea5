"""A layer's tar-split (vbatts/tar-split tar/storage), the record containers/storage keeps to
rebuild a layer's exact tar from its files: JSON lines, {"type":2,"payload":<base64 raw
bytes>} segments (headers, padding, the end of the archive) and one
{"type":1,"name","size","payload":<CRC-64/ISO of the content, 8 bytes big-endian>} per tar
entry, in tar order.  Rebuilt from it and the files, the tar has the layer's diffID.

layerstore keeps each layer's raw tar metadata and the records say where each file's content
goes, so the tar-split is those raw bytes between one file entry per record, with the CRCs of
the objects computed in C (_native.objects_crc64).  runtimes/cstore.py gives it to podman
(gzip'd, beside each layer dir); formats/chunked_write.py puts it into zstd:chunked blobs.
"""

from __future__ import annotations

import base64
import json
import os

from .. import _native
from .._model import EntryType
from ..store.context import Context

FILE, SEGMENT = 1, 2        # tar-split entry types


def build(ctx: Context, txn, diff_id: str) -> bytes | None:
    """The layer's tar-split, as JSON lines (not compressed); None when the layer has sparse
    files or two regular files at one path, which tar-split cannot describe."""
    index = ctx.index
    records = list(_native.decode_records(index.layer_data(txn, diff_id, "records")))
    if any(r.flags & _native.SPARSE for r in records):
        return None
    files = {r.entry.object_id for r in records
             if r.entry.type is EntryType.FILE and r.entry.size}
    order = sorted(files)
    crcs = dict(zip(order, _native.objects_crc64(ctx.objects_dir,
                                                 [bytes.fromhex(o) for o in order])))
    raw = index.layer_data(txn, diff_id, "raw")
    lines: list[bytes] = []

    def add(entry: dict) -> None:
        entry["position"] = len(lines)
        lines.append(json.dumps(entry, separators=(",", ":")).encode() + b"\n")

    def segment(data: bytes) -> None:
        add({"type": SEGMENT, "payload": base64.b64encode(data).decode()})

    off = 0
    seen: set[str] = set()
    for r in records:
        e = r.entry
        if r.raw_len:
            segment(raw[off:off + r.raw_len])
            off += r.raw_len
        size = e.size if e.type is EntryType.FILE else 0
        if e.path in seen:
            # tar-split's reader refuses a name twice: a repeat with no content is left to
            # the segments; one with content cannot be read back from the layer dir.
            if size:
                return None
            continue
        seen.add(e.path)
        entry: dict = {"type": FILE}
        name = os.fsencode(e.path)
        try:
            entry["name"] = name.decode("utf-8")
        except UnicodeDecodeError:
            entry["name_raw"] = base64.b64encode(name).decode()
        if size:
            entry["size"] = size
            entry["payload"] = base64.b64encode(crcs[e.object_id].to_bytes(8, "big")).decode()
        else:
            entry["payload"] = None
        add(entry)
    if off < len(raw):
        segment(raw[off:])
    return b"".join(lines)
