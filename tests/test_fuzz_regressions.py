"""Inputs the fuzzer (csrc/fuzz) once crashed on or found interesting, kept as fixtures: each
must end in a clean result or a layerstore error, fed whole and in small pieces."""

from pathlib import Path

import pytest

from helpers import feed
from layerstore import errors

FIXTURES = sorted((Path(__file__).parent / "data" / "fuzz").glob("*"))


@pytest.mark.parametrize("path", FIXTURES, ids=[p.name for p in FIXTURES])
@pytest.mark.parametrize("pieces", [None, [1], [63]], ids=["whole", "bytes", "63"])
def test_fuzz_fixture(path, pieces):
    data = path.read_bytes()
    try:
        feed(data[1:], pieces)      # the first byte only steers the fuzzer's feed size
    except errors.LayerstoreError:
        pass
