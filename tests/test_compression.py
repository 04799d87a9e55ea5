"""Pinned compression recipes (layerstore/formats/compression.py): the output depends on the
input bytes only, not on how the caller splits its writes, and reads back with any gzip or
zstd reader."""

import gzip
import hashlib
import random

import pytest
import zstandard

from layerstore import errors
from layerstore.formats.compression import BLOCK, Compressor, recipe

DATA = (hashlib.shake_256(b"incompressible").digest(3 * BLOCK // 2) + bytes(2 * BLOCK)
        + b"compressible text " * 100_000)


def _compress(compression: str, seed: int | None) -> bytes:
    out = []
    c = Compressor(compression, out.append)
    rnd = random.Random(seed)
    pos = 0
    while pos < len(DATA):
        n = len(DATA) if seed is None else rnd.choice([1, 511, 4096, 65536, BLOCK + 3])
        c.write(memoryview(DATA)[pos:pos + n])
        pos += n
    c.close()
    c.close()       # idempotent
    return b"".join(out)


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_output_does_not_depend_on_how_writes_are_split(compression):
    outs = {_compress(compression, seed) for seed in (None, 1, 2)}
    assert len(outs) == 1
    (out,) = outs
    if compression == "gzip":
        assert gzip.decompress(out) == DATA
        assert out[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"    # no time, no name
    elif compression == "zstd":
        assert zstandard.ZstdDecompressor().stream_reader(out).read() == DATA
    else:
        assert out == DATA


def test_recipe_names_parameters_and_library_versions():
    assert recipe("gzip").name.startswith("isal-deflate-1/")
    assert "libzstd" in recipe("zstd").library
    assert recipe("gzip").record() == {"recipe": recipe("gzip").name,
                                       "library": recipe("gzip").library}
    with pytest.raises(errors.UnsupportedFormat):
        recipe("brotli")


def test_zstd_output_does_not_depend_on_the_number_of_cores(monkeypatch):
    """The recipe runs zstd with a worker per core; its promise (the same digest on another
    machine with the same libraries) holds only if the workers' count changes nothing.
    Input of several of zstd's jobs, so the workers do split it."""
    import os
    data = DATA * 4
    outs = set()
    for cores in (1, 2, 8):
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        out = []
        c = Compressor("zstd", out.append)
        c.write(data)
        c.close()
        outs.add(b"".join(out))
    assert len(outs) == 1
