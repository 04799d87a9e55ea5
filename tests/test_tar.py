"""The streaming tar reader against Python's tarfile, on archives tarfile writes in every format,
fed in pieces of random sizes; and GNU tar's sparse formats."""

import io
import os
import subprocess
import tarfile

import blake3
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from helpers import entry_dict, feed, file_contents, need_tool, oracle, rebuild, sha256_id


# Name components: ASCII and some UTF-8, never "." or ".." alone (cleaning is tested apart).
component = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="/\x00", min_codepoint=0x20),
    min_size=1, max_size=60,
).filter(lambda s: s not in (".", "..") and len(s.encode()) <= 100)


@st.composite
def paths(draw):
    parts = draw(st.lists(component, min_size=1, max_size=8))
    path = "/".join(parts)
    assume(len(path.encode()) <= 300)
    return path


@st.composite
def members(draw):
    """A list of (TarInfo, content) in archive order; hardlinks point at earlier files."""
    n = draw(st.integers(1, 12))
    out, files = [], []
    for _ in range(n):
        kind = draw(st.sampled_from(["file", "file", "file", "dir", "symlink", "hardlink",
                                     "fifo", "char", "block"]))
        if kind == "hardlink" and not files:
            kind = "file"
        ti = tarfile.TarInfo(draw(paths()))
        ti.mode = draw(st.integers(0, 0o7777))
        ti.uid = draw(st.integers(0, 2**31 - 1))
        ti.gid = draw(st.integers(0, 2**31 - 1))
        ti.mtime = draw(st.integers(0, 2**34))
        ti.uname = draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", max_size=31))
        ti.gname = draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", max_size=31))
        if draw(st.booleans()):
            ti.pax_headers = {
                "SCHILY.xattr." + k: v for k, v in draw(st.dictionaries(
                    st.sampled_from(["user.a", "user.mime_type", "security.capability",
                                     "trusted.x", "user.\u00e9t\u00e9"]),
                    st.text(max_size=40), max_size=3)).items()}
        content = b""
        if kind == "file":
            size = draw(st.one_of(st.integers(0, 2000), st.integers(0, 70000)))
            content = draw(st.binary(min_size=min(size, 64), max_size=min(size, 64))) * (
                size // 64 + 1)
            content = content[:size]
            ti.size = len(content)
            files.append(ti.name)
        elif kind == "dir":
            ti.type = tarfile.DIRTYPE
        elif kind == "symlink":
            ti.type = tarfile.SYMTYPE
            ti.linkname = draw(st.one_of(paths(), st.just("/etc/../x"), st.just("../..")))
        elif kind == "hardlink":
            ti.type = tarfile.LNKTYPE
            ti.linkname = draw(st.sampled_from(files))
        elif kind == "fifo":
            ti.type = tarfile.FIFOTYPE
        else:
            ti.type = tarfile.CHRTYPE if kind == "char" else tarfile.BLKTYPE
            ti.devmajor = draw(st.integers(0, 4095))
            ti.devminor = draw(st.integers(0, 2**20 - 1))
        out.append((ti, content))
    return out


def build(items, fmt) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for ti, content in items:
            tf.addfile(ti, io.BytesIO(content) if ti.isfile() else None)
    return buf.getvalue()


def check(data: bytes, sizes=None):
    result = feed(data, sizes)
    got = [entry_dict(e) for e in result.entries()]
    assert got == oracle(data)
    assert result.stats.diff_id == sha256_id(data)
    assert result.stats.stream_bytes == len(data)
    assert result.stats.entries == len(got)
    assert rebuild(result, file_contents(data)) == data
    return result


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(items=members(), fmt=st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT,
                                             tarfile.PAX_FORMAT]),
       sizes=st.one_of(st.none(), st.lists(st.integers(1, 1500), min_size=1, max_size=20)))
def test_matches_tarfile(items, fmt, sizes):
    if fmt != tarfile.PAX_FORMAT:
        for ti, _ in items:
            ti.pax_headers = {}
    try:
        data = build(items, fmt)
    except ValueError:
        assume(False)   # ustar cannot hold this name or number
    check(data, sizes)


def test_one_byte_pieces():
    items = [(tarfile.TarInfo("a" * 250), b""), (tarfile.TarInfo("d/" + "b" * 120), b"x" * 700)]
    items[1][0].size = 700
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        check(build(items, fmt), [1])


def test_global_pax_header_applies_to_later_entries():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={"uname": "globaluser", "SCHILY.xattr.user.g": "1"}) as tf:
        ti = tarfile.TarInfo("f")
        ti.pax_headers = {"SCHILY.xattr.user.l": "2"}
        tf.addfile(ti, io.BytesIO(b""))
    (e,) = feed(buf.getvalue()).entries()
    assert e.uname == "globaluser"
    assert e.xattrs == (("user.g", b"1"), ("user.l", b"2"))


def test_pax_fractional_and_negative_mtime():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("a")
        ti.pax_headers = {"mtime": "1700000000.123456789"}
        tf.addfile(ti, io.BytesIO(b""))
        ti = tarfile.TarInfo("b")
        ti.pax_headers = {"mtime": "-1.25"}
        tf.addfile(ti, io.BytesIO(b""))
    a, b = feed(buf.getvalue()).entries()
    assert a.mtime_ns == 1700000000_123456789
    assert b.mtime_ns == -1_250_000_000


def test_large_uid_and_size_fields_in_base256():
    ti = tarfile.TarInfo("big")
    ti.uid = 2**30 + 5
    ti.gid = 2**31 - 1
    ti.mtime = 2**40
    check(build([(ti, b"")], tarfile.GNU_FORMAT))


def test_paths_are_cleaned():
    items = []
    for name in ["./a", "/b", "c//d/./e", "f/../g", "./", "h/"]:
        ti = tarfile.TarInfo(name)
        items.append((ti, b""))
    got = [e.path for e in feed(build(items, tarfile.GNU_FORMAT)).entries()]
    assert got == ["a", "b", "c/d/e", "g", ".", "h"]


def test_v7_directory_by_trailing_slash():
    ti = tarfile.TarInfo("olddir/")
    ti.type = tarfile.AREGTYPE
    data = bytearray(ti.tobuf(tarfile.USTAR_FORMAT))
    data[156] = 0      # AREGTYPE: NUL type flag
    data[148:156] = b"        "
    data[148:156] = b"%06o\x00 " % sum(data)
    data += bytes(1024)
    (e,) = feed(bytes(data)).entries()
    assert (e.path, e.type.value) == ("olddir", "dir")


def test_end_blocks_and_padding_may_be_missing():
    ti = tarfile.TarInfo("f")
    ti.size = 10
    data = build([(ti, b"0123456789")], tarfile.USTAR_FORMAT)
    for cut in (512 + 10, 512 + 100, 1024, 1024 + 512):
        result = feed(data[:cut])
        assert [e.path for e in result.entries()] == ["f"]
        assert result.stats.diff_id == sha256_id(data[:cut])


def test_empty_stream_is_an_empty_layer():
    assert feed(b"").entries() == []
    assert feed(bytes(1024)).entries() == []


# ---- GNU sparse files, written by GNU tar -------------------------------------------------


def _sparse_file(path, layout):
    with open(path, "wb") as f:
        for offset, data in layout:
            f.seek(offset)
            f.write(data)
        f.truncate(max(o + len(d) for o, d in layout) + 70000)


SPARSE_FORMATS = [
    ("gnu", []), ("posix", ["--sparse-version=0.0"]), ("posix", ["--sparse-version=0.1"]),
    ("posix", ["--sparse-version=1.0"]),
]


@need_tool("tar")
@pytest.mark.parametrize("fmt,extra", SPARSE_FORMATS, ids=lambda v: str(v))
@pytest.mark.parametrize("segments", [1, 6, 40])
def test_gnu_sparse(tmp_path, fmt, extra, segments):
    src = tmp_path / "src"
    src.mkdir()
    layout = [(i * 300000 + 4096 * (i % 3), os.urandom(1000 + 517 * i)) for i in range(segments)]
    _sparse_file(src / "sparse.img", layout)
    (src / "after").write_bytes(b"plain file after the sparse one")
    out = tmp_path / "s.tar"
    subprocess.run(["tar", "-c", "-S", f"--format={fmt}", *extra, "-f", str(out), "-C",
                    str(src), "sparse.img", "after"], check=True)
    data = out.read_bytes()
    for sizes in (None, [1, 511, 4096, 77], [100000]):
        result = feed(data, sizes)
        entries = result.entries()
        assert [entry_dict(e) for e in entries] == oracle(data)
        assert entries[0].sparse and entries[0].size == (src / "sparse.img").stat().st_size
        assert entries[0].content_hash == blake3.blake3(
            (src / "sparse.img").read_bytes()).hexdigest()
        assert result.stats.diff_id == sha256_id(data)
