"""The entry-record codec (layerstore/_native.py over the layout in csrc/layerstore.h): what the
C ingest writes, the Python decoder, scanner and encoder read and write alike, and a damaged
batch is an error, never a hang or a wrong answer."""

from __future__ import annotations

import io
import tarfile

import pytest

from helpers import entry_dict, feed, oracle
from layerstore import EntryType, _native, errors


def _every_type() -> bytes:
    """A layer with an entry of each type, xattrs, owners' names, sub-second mtimes, a name
    that is not UTF-8 and a sparse-free file big enough to be an object."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        def add(name, kind, content=b"", **kw):
            ti = tarfile.TarInfo(name)
            ti.type, ti.mtime, ti.size = kind, 1700000000, len(content)
            for k, v in kw.items():
                setattr(ti, k, v)
            tf.addfile(ti, io.BytesIO(content) if content else None)
        add("etc", tarfile.DIRTYPE, mode=0o755, uname="root", gname="root")
        add("etc/os-release", tarfile.REGTYPE, b"NAME=test\n" * 50, mode=0o644, uid=7, gid=8,
            uname="seven", gname="eight",
            pax_headers={"SCHILY.xattr.user.note": "x", "mtime": "1700000000.25"})
        add("etc/empty", tarfile.REGTYPE, b"", mode=0o600)
        add("bin/tool", tarfile.REGTYPE, b"\x7fELF" * 300, mode=0o4755)
        add("bin/link", tarfile.LNKTYPE, linkname="bin/tool")
        add("bin/sym", tarfile.SYMTYPE, linkname="tool")
        add("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666)
        add("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0, mode=0o660)
        add("run/fifo", tarfile.FIFOTYPE, mode=0o600)
        add("caf\udce9", tarfile.REGTYPE, b"latin-1 name\n", mode=0o644)
    return buf.getvalue()


@pytest.fixture
def store(tmp_path):
    s = _native.ObjectStore(tmp_path, owners=False)
    yield s
    s.close()


def test_decoded_records_are_the_archive(store):
    data = _every_type()
    result = feed(data, store=store)
    assert [entry_dict(r.entry) for r in _native.decode_records(result.records)] == \
        oracle(data)


@pytest.mark.parametrize("pieces", [None, [1], [7, 500]], ids=["whole", "bytes", "odd"])
def test_scan_reads_what_decode_reads(store, pieces):
    result = feed(_every_type(), pieces, store=store)
    records = list(_native.decode_records(result.records))
    scanned = list(_native.scan_records(result.records))
    assert len(scanned) == len(records) == 10
    for rec, (typ, flags, mode, uid, gid, size, raw_len, oid, chash, xattrs) in \
            zip(records, scanned):
        e = rec.entry
        assert (typ == _native.FILE) == (e.type is EntryType.FILE), e.path
        assert (flags, raw_len) == (rec.flags, rec.raw_len), e.path
        assert (mode, uid, gid, size) == (e.mode, e.uid, e.gid, e.size), e.path
        assert oid.hex() == (e.object_id or "0" * 64), e.path
        assert chash.hex() == (e.content_hash or "0" * 64), e.path
        assert _native.decode_xattrs(xattrs) == e.xattrs, e.path
    assert any(xattrs for *_, xattrs in scanned)


def test_encode_is_the_inverse_of_decode(store):
    records = list(_native.decode_records(feed(_every_type(), store=store).records))
    batch = b"".join(_native.encode_record(r.entry) for r in records)
    again = list(_native.decode_records(batch))
    assert [r.entry for r in again] == [r.entry for r in records]
    assert [(r.flags, r.raw_len) for r in again] == [(0, 0)] * len(records)
    # A checkout plan names a hardlink's target by the path it was made at.
    tool = next(r.entry for r in records if r.entry.path == "bin/tool")
    (linked,) = _native.decode_records(_native.encode_record(tool, link="elsewhere/tool"))
    assert (linked.entry.type, linked.entry.link) == (EntryType.HARDLINK, "elsewhere/tool")


def test_objects_of_a_batch(store):
    data = _every_type()
    first = feed(data, store=store)
    entries = first.entries()
    objects = {bytes.fromhex(e.object_id): e.size for e in entries
               if e.type is EntryType.FILE and e.size}
    assert len(objects) == 3            # the empty file is no object
    assert _native.record_objects(first.records) == objects
    assert sorted(_native.new_objects(first.records)) == sorted(objects)
    second = feed(data, store=store)
    assert _native.record_objects(second.records) == objects
    assert _native.new_objects(second.records) == []
    plan = b"".join(_native.encode_record(e) for e in entries)
    assert _native.plan_totals(plan) == (sum(objects.values()), len(entries))


@pytest.mark.parametrize("damage", ["cut-in-the-fixed-part", "zero-length", "short-length",
                                    "unknown-type"])
def test_a_damaged_batch_is_a_corrupt_archive(damage):
    records = feed(_every_type()).records
    one = bytearray(_native.encode_record(next(_native.decode_records(records)).entry))
    lib = _native.lib
    if damage == "cut-in-the-fixed-part":
        bad = records + one[:lib.LS_RECORD_FIXED // 2]
    elif damage == "zero-length":       # would loop for ever without the length check
        bad = bytes(len(one))
    elif damage == "short-length":
        one[lib.LS_RECORD_OFF_LEN:lib.LS_RECORD_OFF_LEN + 4] = (10).to_bytes(4, "little")
        bad = records + one
    else:
        one[lib.LS_RECORD_OFF_TYPE] = 0xff
        bad = records + one
    with pytest.raises(errors.CorruptArchive, match="damaged entry records"):
        list(_native.decode_records(bad))
    if damage != "unknown-type":        # the scan does not judge types
        with pytest.raises(errors.CorruptArchive, match="damaged entry records"):
            list(_native.scan_records(bad))
        with pytest.raises(errors.CorruptArchive, match="damaged entry records"):
            _native.record_objects(bad)
