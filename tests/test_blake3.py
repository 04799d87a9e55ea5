"""BLAKE3 in the C core, checked on every backend this CPU runs.

The oracles are the official test vectors (tests/data/blake3_test_vectors.json: the "hash"
cases of BLAKE3-team/BLAKE3's test_vectors.json) and the blake3 package.  Every check runs
once per backend in _native.blake3_backends(): portable always, plus sse41, avx2 and avx512
where the CPU has them, so a SIMD path and the tree logic around it are each compared with a
reference.
"""

import json
import random
from pathlib import Path

import blake3 as blake3_pkg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layerstore import _native

VECTORS = json.loads((Path(__file__).parent / "data" / "blake3_test_vectors.json").read_text())
BACKENDS = _native.blake3_backends()
SANITIZED = _native.built_with_sanitizers()

KIB = 1 << 10
MIB = 1 << 20
CHUNK = 1024


def pattern(n: int) -> bytes:
    """The official vectors' input: byte i is i % 251."""
    return bytes(range(251)) * (n // 251) + bytes(range(n % 251))


def reference(data, length: int = 32) -> bytes:
    return blake3_pkg.blake3(data).digest(length=length)


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Runs the test with one backend selected for the whole process."""
    with _native.blake3_backend(request.param):
        yield request.param


# ---- Backends ----------------------------------------------------------------------------


def test_portable_is_always_available():
    assert BACKENDS[0] == "portable"
    assert set(BACKENDS) <= {"portable", "sse41", "avx2", "avx512"}


def test_default_backend_is_the_best_available():
    assert _native.current_blake3_backend() == BACKENDS[-1]


def test_backend_switch_is_restored():
    before = _native.current_blake3_backend()
    with _native.blake3_backend("portable"):
        assert _native.current_blake3_backend() == "portable"
    assert _native.current_blake3_backend() == before


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError):
        with _native.blake3_backend("neon-on-x86"):
            pass


def test_unsupported_backend_code_is_refused_by_the_core():
    # Out-of-range codes are a caller bug (LS_E_STATE); a known backend the CPU lacks would be
    # LS_E_UNSUPPORTED, which this machine may not be able to show.
    assert _native.lib.ls_blake3_set_backend(99) == _native.lib.LS_E_STATE
    assert _native.lib.ls_blake3_set_backend(-1) == _native.lib.LS_E_STATE


# ---- Official vectors --------------------------------------------------------------------


def test_vector_file_matches_the_blake3_package():
    """Guards the transcription of the vectors themselves."""
    assert len(VECTORS["cases"]) >= 20
    for case in VECTORS["cases"]:
        assert reference(pattern(case["input_len"]), 131).hex() == case["hash"]


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: str(c["input_len"]))
def test_official_vectors(backend, case):
    data = pattern(case["input_len"])
    expected = bytes.fromhex(case["hash"])
    assert _native.blake3(data) == expected[:32]
    h = _native.Blake3()
    h.update(data)
    assert h.digest(131) == expected
    assert h.digest() == expected[:32]


# ---- Against the blake3 package -----------------------------------------------------------


def test_every_length_up_to_2100(backend):
    """Every tail of a block and of a chunk, one to three chunks: one-shot and in two pieces
    split at an arbitrary point, so both the single-chunk path and the hasher are covered."""
    data = random.Random(2100).randbytes(2100)
    for n in range(2101):
        piece = data[:n]
        expected = reference(piece)
        assert _native.blake3(piece) == expected, n
        h = _native.Blake3()
        h.update(piece[: n // 3])
        h.update(piece[n // 3:])
        assert h.digest() == expected, n


def _lengths():
    """Chunk-count boundaries where the tree changes shape, plus random lengths up to 8 MiB."""
    rng = random.Random(8)
    top = 1 * MIB if SANITIZED else 8 * MIB
    # Every chunk count to 17 (the batched tail of an input, in every remainder of the widest
    # pass: blake3.c pads some of them), then the edges of bigger subtrees.
    edges = [CHUNK * k + d for k in (*range(2, 18), 31, 32, 33, 63, 64, 65, 127, 128, 129,
                                     255, 256, 257, 1024) for d in (-1, 0, 1, 700)]
    edges += [top - 1, top, top + 1]
    return sorted(set(edges) | {rng.randrange(top) for _ in range(8)})


LENGTHS = _lengths()
BIG = random.Random(88).randbytes(max(LENGTHS))


@pytest.mark.parametrize("n", LENGTHS)
def test_long_inputs(backend, n):
    data = memoryview(BIG)[:n]
    expected = reference(data)
    assert _native.blake3(data) == expected
    h = _native.Blake3()
    h.update(data)
    assert h.digest() == expected


@settings(max_examples=60)
@given(length=st.integers(0, 300 * KIB), cuts=st.lists(st.integers(0, 300 * KIB), max_size=12),
       seed=st.integers(0, 2**32 - 1))
def test_incremental_random_splits(length, cuts, seed):
    """Any split of the input into update() calls gives the one-shot hash, on every backend."""
    data = random.Random(seed).randbytes(length)
    bounds = sorted({0, length, *(c for c in cuts if c <= length)})
    expected = reference(data)
    for name in BACKENDS:
        with _native.blake3_backend(name):
            h = _native.Blake3()
            for start, end in zip(bounds, bounds[1:]):
                h.update(data[start:end])
            assert h.digest() == expected, name
            assert _native.blake3(data) == expected, name


@settings(max_examples=40)
@given(data=st.binary(max_size=5000), sizes=st.lists(st.integers(0, 200), min_size=1))
def test_small_updates(data, sizes):
    """Updates of a few bytes at a time cross block and chunk edges inside the hasher."""
    expected = reference(data)
    for name in BACKENDS:
        with _native.blake3_backend(name):
            h = _native.Blake3()
            pos, i = 0, 0
            while pos < len(data):
                step = sizes[i % len(sizes)] or 1
                h.update(data[pos:pos + step])
                pos += step
                i += 1
            assert h.digest() == expected, name


@pytest.mark.parametrize("n", [0, 1, 64, 1023, 1024, 1025, 2048, 5000, 64 * KIB + 1])
def test_extended_output(backend, n):
    data = pattern(n)
    h = _native.Blake3(data)
    for length in (0, 1, 31, 32, 33, 63, 64, 65, 127, 128, 129, 1000, 4096 + 7):
        assert h.digest(length) == reference(data, length), length


def test_digest_does_not_end_the_hasher(backend):
    """Finalizing reads the state without changing it: hashing can go on afterwards."""
    data = random.Random(5).randbytes(10 * KIB + 3)
    h = _native.Blake3()
    h.update(b"")
    assert h.digest() == reference(b"")
    h.update(data[:0])
    h.update(data[:4096])
    assert h.digest() == h.digest() == reference(data[:4096])
    h.update(data[4096:])
    assert h.digest() == reference(data)


def test_reset_starts_over(backend):
    """Ingest keeps one hasher per handle and resets it between files."""
    ffi, lib = _native.ffi, _native.lib
    h = ffi.gc(lib.ls_blake3_new(), lib.ls_blake3_free)
    out = ffi.new("uint8_t[32]")
    rng = random.Random(3)
    for n in (0, 5000, 1, 2048, 70000, 1024):
        data = rng.randbytes(n)
        lib.ls_blake3_update(h, data, n)
        lib.ls_blake3_finalize(h, out, 32)
        assert bytes(out) == reference(data), n
        lib.ls_blake3_reset(h)


def test_accepts_any_buffer(backend):
    data = random.Random(9).randbytes(3000)
    expected = reference(data)
    assert _native.blake3(bytearray(data)) == expected
    assert _native.blake3(memoryview(data)) == expected
    assert _native.blake3(memoryview(bytearray(b"x" + data))[1:]) == expected  # unaligned
