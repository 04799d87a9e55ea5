"""SHA-256 in the C core (the diffID of a layer stream) against hashlib, on every backend this
CPU runs: portable always, shani where the CPU has the SHA extensions."""

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layerstore import _native

BACKENDS = _native.sha256_backends()
SANITIZED = _native.built_with_sanitizers()
MIB = 1 << 20


@pytest.fixture(params=BACKENDS)
def backend(request):
    with _native.sha256_backend(request.param):
        yield request.param


def ours(*pieces) -> bytes:
    h = _native.Sha256()
    for p in pieces:
        h.update(p)
    return h.digest()


def test_portable_is_always_available():
    assert BACKENDS[0] == "portable"
    assert set(BACKENDS) <= {"portable", "shani"}


def test_backend_switch_is_restored():
    lib = _native.lib
    before = lib.ls_sha256_get_backend()
    with _native.sha256_backend("portable"):
        assert lib.ls_sha256_get_backend() == lib.LS_SHA256_PORTABLE
    assert lib.ls_sha256_get_backend() == before
    # The best one is the default.
    expected = lib.LS_SHA256_SHANI if "shani" in BACKENDS else lib.LS_SHA256_PORTABLE
    assert before == expected


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError):
        with _native.sha256_backend("sha512"):
            pass
    assert _native.lib.ls_sha256_set_backend(7) == _native.lib.LS_E_STATE


def test_known_answers(backend):
    """FIPS 180-4 examples (one block, two blocks) and the empty string."""
    assert ours(b"").hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert ours(b"abc").hex() == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    assert ours(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq").hex() == (
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")


def test_every_length_up_to_300(backend):
    """Covers each padding case: the length fitting in the last block or spilling over."""
    data = random.Random(300).randbytes(300)
    for n in range(301):
        expected = hashlib.sha256(data[:n]).digest()
        assert ours(data[:n]) == expected, n
        assert ours(data[: n // 2], data[n // 2: n]) == expected, n


@pytest.mark.parametrize("n", sorted({1000, 4096, 65535, 65536, 65537, MIB + 13,
                                      *(random.Random(256).randrange(4 * MIB) for _ in range(4))}))
def test_long_inputs(backend, n):
    if SANITIZED:
        n = min(n, MIB)
    data = random.Random(n).randbytes(n)
    assert ours(data) == hashlib.sha256(data).digest()
    assert ours(memoryview(data)) == hashlib.sha256(data).digest()


@settings(max_examples=60)
@given(length=st.integers(0, 200_000), cuts=st.lists(st.integers(0, 200_000), max_size=12),
       seed=st.integers(0, 2**32 - 1))
def test_random_splits(length, cuts, seed):
    data = random.Random(seed).randbytes(length)
    bounds = sorted({0, length, *(c for c in cuts if c <= length)})
    expected = hashlib.sha256(data).digest()
    for name in BACKENDS:
        with _native.sha256_backend(name):
            pieces = [data[a:b] for a, b in zip(bounds, bounds[1:])]
            assert ours(*pieces) == expected, name


def test_digest_resets_the_context(backend):
    """Sha256.digest() finalizes and resets, so one object hashes one stream after another."""
    h = _native.Sha256()
    h.update(b"first stream")
    assert h.digest() == hashlib.sha256(b"first stream").digest()
    h.update(b"second")
    assert h.digest() == hashlib.sha256(b"second").digest()


def test_backends_agree_on_a_stream_fed_in_odd_pieces():
    """Switching backends between streams (never during one) gives identical digests."""
    rng = random.Random(11)
    data = rng.randbytes(3 * MIB // 2)
    digests = set()
    for name in BACKENDS:
        with _native.sha256_backend(name):
            h = _native.Sha256()
            pos = 0
            while pos < len(data):
                step = rng.choice((1, 7, 63, 64, 65, 4096, 100_003))
                h.update(data[pos:pos + step])
                pos += step
            digests.add(h.digest())
    assert digests == {hashlib.sha256(data).digest()}
