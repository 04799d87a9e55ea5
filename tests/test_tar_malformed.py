"""Malformed and hostile layer streams: each class gives its own error and message, whether the
stream arrives whole or one byte at a time, and never a crash, hang or unbounded allocation.

Each case is a named fixture built here, as libarchive names its test_read_format_tar_* cases.
"""

import tarfile

import pytest

from helpers import feed
from layerstore import errors


def checksum(block: bytearray) -> bytearray:
    block[148:156] = b"        "
    block[148:156] = b"%06o\x00 " % sum(block)
    return block


def header(name="f", size=0, type_=tarfile.REGTYPE, fmt=tarfile.USTAR_FORMAT, **fields):
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.type = type_
    for k, v in fields.items():
        setattr(ti, k, v)
    return bytearray(ti.tobuf(fmt))


def patched(block: bytearray, offset: int, value: bytes) -> bytes:
    block[offset:offset + len(value)] = value
    return bytes(checksum(block))


def rec(key: bytes, value: bytes) -> bytes:
    """A well-formed PAX record: its length counts itself."""
    body = b" %s=%s\n" % (key, value)
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n += 1
    return b"%d%s" % (n, body)


def pax(records: bytes, name="f", content=b"") -> bytes:
    """An 'x' header carrying records verbatim, then a regular file."""
    ext = header("PaxHeader/f", len(records), tarfile.XHDTYPE)
    body = records + bytes(-len(records) % 512)
    f = header(name, len(content))
    return bytes(ext) + body + bytes(f) + content + bytes(-len(content) % 512) + bytes(1024)


def longname(data: bytes) -> bytes:
    h = header("././@LongLink", len(data), tarfile.GNUTYPE_LONGNAME, tarfile.GNU_FORMAT)
    return bytes(h) + data + bytes(-len(data) % 512) + bytes(header("f")) + bytes(1024)


def oldgnu_sparse(realsize: int, segments, stored: int) -> bytes:
    h = header("s", stored, tarfile.GNUTYPE_SPARSE, tarfile.GNU_FORMAT)
    for i, (off, n) in enumerate(segments):
        h[386 + 24 * i:386 + 24 * i + 24] = b"%011o\x00%011o\x00" % (off, n)
    h[483:495] = b"%011o\x00" % realsize
    return bytes(checksum(h)) + bytes(stored + (-stored % 512)) + bytes(1024)


def valid_file(content=b"hello") -> bytes:
    return bytes(header("f", len(content))) + content + bytes(-len(content) % 512)


CASES = {
    # name: (stream, exception, words the message must contain)
    "bad_checksum": (
        bytes(header()[:100]) + b"X" + bytes(header()[101:]) + bytes(1024),
        errors.CorruptArchive, "bad header checksum at offset 0"),
    "checksum_not_octal": (
        bytes(header()[:148]) + b"12x4567\x00" + bytes(header()[156:]) + bytes(1024),
        errors.CorruptArchive, "bad checksum field"),
    "size_not_octal": (
        patched(header(), 124, b"0000000009z\x00") + bytes(1024),
        errors.CorruptArchive, "bad size field in the header at offset 0"),
    "mode_not_octal": (
        patched(header(), 100, b"07 8\x00") + bytes(1024),
        errors.CorruptArchive, "bad mode field"),
    "negative_size_base256": (
        patched(header(), 124, b"\xff" * 11 + b"\xfe") + bytes(1024),
        errors.CorruptArchive, "negative size"),
    "negative_uid_base256": (
        patched(header(), 108, b"\xff" * 8) + bytes(1024),
        errors.CorruptArchive, "negative uid"),
    "size_beyond_stream": (
        bytes(header("f", 1 << 20)) + b"only a little data",
        errors.TruncatedArchive, "inside the content"),
    "truncated_in_header": (
        valid_file() + bytes(header("g"))[:300],
        errors.TruncatedArchive, "inside a header at offset 1024"),
    "truncated_in_pax_header": (
        pax(rec(b"path", b"a-long-name-for-this"))[:530],
        errors.TruncatedArchive, "extended header"),
    "truncated_in_pax_padding": (
        pax(rec(b"path", b"a-long-name-for-this"))[:700],
        errors.TruncatedArchive, "after an extended header"),
    "pax_length_too_long": (
        pax(b"99 path=foo\n"), errors.CorruptArchive, "bad PAX record length"),
    "pax_length_too_short": (
        pax(b"5 path=foo\n"), errors.CorruptArchive, "bad PAX record length"),
    "pax_length_not_a_number": (
        pax(b"1x path=foo\n"), errors.CorruptArchive, "bad PAX record length"),
    "pax_record_without_newline": (
        pax(b"12 path=fooo"), errors.CorruptArchive, "bad PAX record length"),
    "pax_record_without_key": (
        pax(b"9 =value\n"), errors.CorruptArchive, "without a key"),
    "pax_bad_size_value": (
        pax(rec(b"size", b"-100")), errors.CorruptArchive, "bad value for PAX key 'size'"),
    "pax_bad_mtime_value": (
        pax(rec(b"mtime", b"12.3.4")), errors.CorruptArchive, "bad value for PAX key 'mtime'"),
    "pax_uid_too_large": (
        pax(rec(b"uid", b"99999999999")), errors.CorruptArchive, "bad value for PAX key 'uid'"),
    "nul_inside_pax_path": (
        pax(rec(b"path", b"a\x00b")), errors.CorruptArchive, "NUL inside the path"),
    # A GNU long name with bytes after its NUL is no longer here: GNU tar and Go both read the
    # name up to the first NUL (test_tar_compat.py: test_long_name_ends_at_first_nul).
    "nul_inside_pax_key": (
        pax(rec(b"com\x00ment", b"x")), errors.CorruptArchive, "NUL inside a PAX key"),
    "absurd_global_header": (
        bytes(header("GlobalHead", 8192, tarfile.XGLTYPE)),
        errors.LimitExceeded, "global extended header of 8192 bytes at offset 0 (limit 4096"),
    "truncated_in_dump_directory_listing": (
        bytes(header("d", 600, b"D", tarfile.GNU_FORMAT)) + b"Ya\x00" * 10,
        errors.TruncatedArchive, "inside the data of an entry"),
    "absurd_pax_header": (
        bytes(header("PaxHeader/f", 64 << 20, tarfile.XHDTYPE)),
        errors.LimitExceeded, "extended header of 67108864 bytes"),
    "absurd_gnu_longname": (
        longname(b"n" * 100000 + b"\x00"), errors.LimitExceeded, "GNU long name of 100000"),
    "absurd_pax_path": (
        pax(rec(b"path", b"p" * 40000)),
        errors.LimitExceeded, "path of 40000 bytes"),
    "lone_zero_block_then_data": (
        valid_file() + bytes(512) + valid_file(),
        errors.CorruptArchive, "lone zero block at offset 1024"),
    # An unknown type flag is no longer here: POSIX says to read it as a regular file, and GNU
    # tar and Go both read it (test_tar_compat.py: test_unknown_type_is_a_regular_file).
    "multivolume": (
        bytes(header("f", 0, b"M", tarfile.GNU_FORMAT)) + bytes(1024),
        errors.UnsupportedFormat, "multi-volume"),
    "empty_name": (
        bytes(header("")) + bytes(1024), errors.CorruptArchive, "empty name"),
    "hardlink_without_target": (
        bytes(header("h", 0, tarfile.LNKTYPE)) + bytes(1024),
        errors.CorruptArchive, "hardlink without a target"),
    "path_leaves_root": (
        bytes(header("a/../../etc/passwd", 0)) + bytes(1024),
        errors.UnsafePath, "path 'a/../../etc/passwd' leaves the root"),
    "hardlink_target_leaves_root": (
        bytes(header("h", 0, tarfile.LNKTYPE, linkname="../../etc/shadow")) + bytes(1024),
        errors.UnsafePath, "hardlink target '../../etc/shadow' leaves the root"),
    "symlink_without_target": (
        bytes(header("s", 0, tarfile.SYMTYPE)) + bytes(1024),
        errors.CorruptArchive, "empty target"),
    "extended_header_then_end": (
        pax(rec(b"path", b"abc"))[:1024] + bytes(1024),
        errors.CorruptArchive, "end-of-archive marker at offset 1024 right after an extended"),
    "sparse_segment_beyond_size": (
        oldgnu_sparse(1000, [(900, 512)], 512),
        errors.CorruptArchive, "segments out of order or beyond its size"),
    "sparse_segments_overlap": (
        oldgnu_sparse(5000, [(0, 512), (100, 512)], 1024),
        errors.CorruptArchive, "segments out of order"),
    "sparse_map_does_not_cover_stored": (
        oldgnu_sparse(5000, [(0, 100)], 512),
        errors.CorruptArchive, "covers 100 bytes but 512 are stored"),
    "pax_sparse_without_realsize": (
        pax(rec(b"GNU.sparse.map", b"0,5"), content=b"12345"),
        errors.CorruptArchive, "without a real size"),
    "sparse_holes_beyond_limit": (
        pax(rec(b"GNU.sparse.map", b"0,5") + rec(b"GNU.sparse.size", b"80000000000005"),
            content=b"12345"),
        errors.LimitExceeded, "more than 68719476736 bytes of holes"),
    "sparse_holes_of_a_layer_add_up": (     # 256 MiB of holes, then 64 GiB less 128 MiB
        pax(rec(b"GNU.sparse.map", b"0,5") + rec(b"GNU.sparse.size", b"%d" % (5 + (256 << 20))),
            content=b"12345")[:-1024]
        + pax(rec(b"GNU.sparse.map", b"0,5") + rec(b"GNU.sparse.size",
                                                    b"%d" % (5 + (64 << 30) - (128 << 20))),
              content=b"12345"),
        errors.LimitExceeded, "sparse file of 68585259013 bytes at offset 2048"),
    "pax_sparse_bad_map": (
        pax(rec(b"GNU.sparse.map", b"0,5,") + rec(b"GNU.sparse.size", b"10"),
            content=b"12345"),
        errors.CorruptArchive, "GNU.sparse.map"),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("pieces", [None, [1], [7, 500, 3]], ids=["whole", "bytes", "mixed"])
def test_malformed(name, pieces):
    data, exc, words = CASES[name]
    with pytest.raises(exc) as info:
        feed(data, pieces)
    assert words in str(info.value)


def test_error_sticks():
    """After an error the ingest keeps reporting it instead of parsing on."""
    from layerstore import _native
    ingest = _native.LayerIngest()
    with pytest.raises(errors.CorruptArchive):
        ingest.feed(CASES["bad_checksum"][0])
    with pytest.raises(errors.CorruptArchive, match="bad header checksum"):
        ingest.feed(valid_file())
    with pytest.raises(errors.CorruptArchive, match="bad header checksum"):
        ingest.finish()


def test_trailer_is_bounded():
    data = valid_file() + bytes(1024) + b"\x01" * (2 << 20)
    with pytest.raises(errors.LimitExceeded, match="follow the end-of-archive marker"):
        feed(data)


def test_trailing_zeros_after_end_are_kept():
    data = valid_file() + bytes(1024 + 9 * 1024)
    result = feed(data)
    assert len(result.raw) == len(data) - 5


def test_garbage_instead_of_tar():
    with pytest.raises(errors.CorruptArchive, match="bad header checksum at offset 0"):
        feed(b"\x1f\x8b\x08" + bytes(2000))
