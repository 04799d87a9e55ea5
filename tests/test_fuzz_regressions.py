"""Inputs the fuzzer (csrc/fuzz) once crashed on or found interesting, kept as fixtures: each
must end in a clean result or a layerstore error, and in the same one whether it is fed whole
or in pieces - the tar reader is a push parser, and where a stream is split must never change
what it reads: the same records and raw bytes, or the same error with the same message."""

from pathlib import Path

import pytest

from layerstore import _native, errors

FIXTURES = sorted((Path(__file__).parent / "data" / "fuzz").glob("*"))


def outcome(data: bytes, sizes=None) -> tuple:
    """What ingesting data in pieces of the given sizes (cycled; None: whole) comes to:
    ("ok", records, raw, stats), or ("error", class, message, the records made before it)."""
    ingest = _native.LayerIngest()
    try:
        pos, i = 0, 0
        try:
            while pos < len(data):
                n = sizes[i % len(sizes)] if sizes else len(data)
                ingest.feed(data[pos:pos + n])
                pos += n
                i += 1
            result = ingest.finish()
        except errors.LayerstoreError as exc:
            return "error", type(exc), str(exc), ingest.records_so_far()
        return "ok", result.records, result.raw, result.stats
    finally:
        ingest.close()


@pytest.mark.parametrize("path", FIXTURES, ids=[p.name for p in FIXTURES])
@pytest.mark.parametrize("sizes", [[1], [63], [1, 511, 2, 1023, 5]], ids=["bytes", "63", "odd"])
def test_fuzz_fixture_reads_the_same_in_pieces(path, sizes):
    data = path.read_bytes()[1:]        # the first byte only steers the fuzzer's feed size
    whole = outcome(data)
    assert whole[0] in ("ok", "error")
    assert outcome(data, sizes) == whole
