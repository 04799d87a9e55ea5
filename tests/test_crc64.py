"""CRC-64/ISO in the C core (csrc/crc64.c), as Go's hash/crc64 with crc64.ISO computes it:
the checksum containers-storage's tar-split records per file."""

import io
import os
import random

import pytest

import archives as A
from layerstore import Store, _native, errors

_POLY = 0xD800000000000000


def _bitwise(data: bytes, crc: int = 0) -> int:
    """The textbook reflected CRC, a bit at a time: the reference slicing-by-8 must match."""
    crc ^= 0xFFFFFFFFFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ _POLY if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFFFFFFFFFF


def test_check_value_of_the_crc_catalogue():
    """CRC-64/GO-ISO's check value (the CRC of "123456789"), and of nothing."""
    assert _native.crc64(b"123456789") == 0xB90956C775A41001
    assert _native.crc64(b"") == 0


def test_every_length_and_alignment_matches_the_bitwise_reference():
    """The byte-wise head (unaligned), the 8-byte words and the tail all agree with the
    bitwise CRC, for lengths around the word size and at every offset in a buffer."""
    rng = random.Random(13)
    data = bytes(rng.getrandbits(8) for _ in range(300))
    for start in range(9):
        for length in (0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 200):
            chunk = memoryview(data)[start:start + length]
            assert _native.crc64(chunk) == _bitwise(bytes(chunk)), (start, length)


def test_continued_crc_equals_the_whole():
    data = os.urandom(100_003)
    whole = _native.crc64(data)
    for cut in (0, 1, 4096, 50_001, 100_003):
        assert _native.crc64(data[cut:], _native.crc64(data[:cut])) == whole
    assert _bitwise(data[:777]) == _native.crc64(data[:777])


def test_objects_crc64_reads_the_stored_objects(tmp_path):
    """objects_crc64 gives each object's CRC in the order asked, a repeat too; a missing
    object is an error naming it."""
    big = os.urandom(3 << 20)        # more than one read
    layer = A.layer(("f", "a", b"alpha\n"), ("f", "b", big), ("f", "c", b"x" * 8))
    with Store(tmp_path / "s") as s:
        (img,) = s.import_archive(io.BytesIO(A.docker_archive([([layer], ["t:1"])])))
        files = {e.path: e for e in s.layer_entries(img.diff_ids[0]) if e.size}
        ids = [bytes.fromhex(files[p].object_id) for p in ("b", "a", "c", "a")]
        crcs = _native.objects_crc64(os.path.join(s.root, "objects"), ids)
        assert crcs == [_native.crc64(big), _bitwise(b"alpha\n"), _bitwise(b"x" * 8),
                        _bitwise(b"alpha\n")]
        with pytest.raises(errors.LayerstoreError, match="cannot open object"):
            _native.objects_crc64(os.path.join(s.root, "objects"), [bytes(32)])
