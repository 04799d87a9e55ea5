"""What GNU tar and Go's archive/tar read, read the same way; what both refuse, refused (issue 10,
item 1).  Each behaviour is a named case built byte by byte (tarcases.py) and checked three ways:

- GNU tar extracts it (as root: owners too) into a directory, and that tree must be the one our
  records describe: paths, types, modes, owners, content, link targets, xattrs and mtimes;
- Go's reader (tests/tools/gotar, when `go` is on PATH: the reader in Docker, containerd and
  most layer tools) lists it; where it reads the same entries the lists must agree, and where it
  does not the case names what Go lists instead and `why` says what we chose;
- the layer imports into a Store, fed whole or a byte at a time to the same records, and `save`
  writes it back byte for byte (so its diffID holds).

Where GNU tar and Go disagree the rule is csrc/tar.c's (its opening comment): follow Go, except
where Go only hands a header over for its caller to judge (Solaris 'X', 'g', 'D', 'V' and
unknown types, which GNU tar gives a meaning), and PAX records beat GNU long names as GNU tar
has it and this reader always did.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import archives as A
from helpers import clean, feed, oracle_env, sha256_id
from layerstore import Store, _native, errors
from tarcases import (GNU, V7, archive, ext, file, header, longname, member, pad, record,
                      records)

ROOT = os.geteuid() == 0


@dataclass
class Case:
    data: bytes
    why: str = ""                   # why this case is here; where GNU or Go differ, our choice
    go: list | None = None          # None: Go reads the same entries; else the (name, typeflag)
    #                                 headers it lists instead
    gnu: dict | None = None         # None: GNU tar makes our tree; else {path: {field: value}}
    #                                 of the tree it makes instead
    gnu_status: int = 0             # 2: GNU tar makes that tree but complains
    needs_root: bool = False        # GNU tar can make it only as root (device nodes)
    sparse: bool = False            # save refuses sparse layers (export.c): not byte-checked


def zeros(n: int, width: int = 25) -> bytes:
    return b"%0*d" % (width, n)


def x(*pairs, type=b"x") -> bytes:
    return ext(type, records(*pairs))


def symlink(name: bytes, target: bytes, **fields) -> bytes:
    return member(header(name, b"2", link=target, **fields))


def b256(n: int, width: int) -> bytes:
    return bytes([0x80]) + n.to_bytes(width - 1, "big")


SPARSE_DATA = b"A" * 512 + b"B" * 100
# GNU tar stores every segment but the last in whole blocks, and ends the map with the size.
SPARSE_MAP = [1024, 512, 5120, 100, 6000, 0]

ACCEPTED: dict[str, Case] = {
    # ---- the forms issue 10 names --------------------------------------------------------
    "solaris_extended_header": Case(
        archive(x((b"path", b"longer/name"), (b"uid", b"77"), type=b"X"), file(b"short", b"data")),
        "'X' is Solaris' name for a PAX header; GNU tar reads it so.",
        go=[("././@PaxHeader", "X"), ("short", "0")]),
    "long_name_ends_at_first_nul": Case(
        archive(longname(b"dir/longname", tail=b"\x00junk\x00"), file(b"f", b"x")),
        "bytes after the name's NUL are not part of it (both read a C string)"),
    "long_link_ends_at_first_nul": Case(
        archive(longname(b"target", type=b"K", tail=b"\x00junk"), symlink(b"s", b"short"))),
    "long_name_padded_to_a_block": Case(
        archive(longname(b"dir/longname", size=512), file(b"f", b"x"))),
    "long_name_without_nul": Case(
        archive(longname(b"dir/longname", tail=b""), file(b"f", b"x"))),
    "pax_numbers_with_leading_zeros": Case(
        archive(x((b"size", zeros(5)), (b"uid", zeros(1000)), (b"gid", zeros(70000)),
                  (b"mtime", zeros(1700000000) + b".5")), file(b"f", b"hello")),
        "both parse decimals with any number of leading zeros"),
    "pax_record_lengths_with_leading_zeros": Case(
        archive(ext(b"x", record(b"path", b"zeros", width=25) + record(b"uid", b"7", width=30)),
                file(b"f", b"hello"))),
    "pax_device_numbers_with_leading_zeros": Case(
        archive(x((b"SCHILY.devmajor", zeros(1)), (b"SCHILY.devminor", zeros(3))),
                member(header(b"null", b"3", devmajor=1, devminor=3))),
        "Go reads the ustar fields, which say the same", needs_root=True),
    "pax_sparse_0_1_with_leading_zeros": Case(
        archive(x((b"GNU.sparse.size", zeros(6000)), (b"GNU.sparse.numblocks", zeros(3)),
                  (b"GNU.sparse.map", b",".join(zeros(n) for n in SPARSE_MAP)),
                  (b"GNU.sparse.name", b"sparse")),
                file(b"GNUSparseFile.0/sparse", SPARSE_DATA)), sparse=True),
    "pax_sparse_1_0_map_with_leading_zeros": Case(
        archive(x((b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"),
                  (b"GNU.sparse.realsize", zeros(6000)), (b"GNU.sparse.name", b"sparse")),
                file(b"GNUSparseFile.0/sparse",
                     pad(b"".join(zeros(n, 12) + b"\n" for n in [3] + SPARSE_MAP)) + SPARSE_DATA)),
        "GNU tar takes map numbers of at most 20 characters (with 25 it reports an overflow, "
        "Go reads them): within that both agree", sparse=True),
    "dump_directory": Case(
        archive(member(header(b"dd/", b"D", 12, mode=0o750, magic=GNU), b"Yfile\x00Nold\x00\x00"),
                file(b"dd/file", b"x")),
        "'D' is a directory whose data lists the names it held, for incremental restores; GNU "
        "tar -x skips the list.  Go hands the header and the list over as if a file.",
        go=[("dd/", "D"), ("dd/file", "0")]),
    "dump_directory_listing_over_a_block": Case(
        archive(member(header(b"dd", b"D", 600, mode=0o750, magic=GNU), b"Yfile\x00" + bytes(594)),
                file(b"after", b"x")),
        go=[("dd", "D"), ("after", "0")]),
    "global_header_applies_to_later_entries": Case(
        archive(x((b"uid", b"42"), (b"gname", b"staff"), (b"mtime", b"1234567890"), type=b"g"),
                file(b"a", b"1"), file(b"b", b"2")),
        "GNU tar applies 'g' records to every later entry; Go lists 'g' as a header and applies "
        "nothing (Docker ignores it)",
        go=[("././@PaxHeader", "g"), ("a", "0"), ("b", "0")]),
    "later_global_header_replaces_earlier": Case(
        archive(x((b"uid", b"42"), (b"gid", b"7"), type=b"g"), file(b"a", b"1"),
                x((b"uid", b"43"), type=b"g"), file(b"b", b"2")),
        "a 'g' replaces the one before whole: b's gid is its header's (GNU tar)",
        go=[("././@PaxHeader", "g"), ("a", "0"), ("././@PaxHeader", "g"), ("b", "0")]),
    "local_record_overrides_global": Case(
        archive(x((b"uid", b"42"), type=b"g"), x((b"uid", b"5"),), file(b"a", b"1"),
                file(b"b", b"2")),
        go=[("././@PaxHeader", "g"), ("a", "0"), ("b", "0")]),
    "global_header_xattrs": Case(
        archive(x((b"SCHILY.xattr.user.g", b"1"), type=b"g"), file(b"a", b"1")),
        "every 'g' record applies, xattrs too (POSIX).  GNU tar 1.34 means to, but fails: "
        "\"Cannot set '' extended attribute\" (it exits 0); Go applies no 'g'",
        go=[("././@PaxHeader", "g"), ("a", "0")], gnu={"a": {"type": "file", "xattrs": {}}}),
    "global_header_alone": Case(
        archive(x((b"comment", b"git archive writes one of these"), type=b"g")),
        "Go lists the 'g' header; it makes nothing", go=[("././@PaxHeader", "g")]),
    "pending_pax_header_survives_global": Case(
        archive(x((b"path", b"p1"),), x((b"uid", b"3"), type=b"g"), file(b"f", b"1")),
        "an 'x' then a 'g' then the entry: GNU tar applies both; Go returns the 'g' and loses "
        "the 'x' (its entry is 'f')",
        go=[("././@PaxHeader", "g"), ("f", "0")]),
    "several_pax_headers_last_wins": Case(
        archive(x((b"path", b"first"), (b"uid", b"11")), x((b"path", b"second"), (b"gid", b"22")),
                file(b"f", b"1")),
        "the later 'x' replaces the earlier whole: uid 11 is gone too (GNU tar and Go)"),
    "several_long_names_last_wins": Case(
        archive(longname(b"first"), longname(b"second"), file(b"f", b"1"))),
    "several_long_links_last_wins": Case(
        archive(longname(b"t1", b"K"), longname(b"t2", b"K"), symlink(b"s", b"short"))),
    "pax_path_beats_earlier_long_name": Case(
        archive(longname(b"fromL"), x((b"path", b"frompax"),), file(b"f", b"1")),
        "GNU tar applies PAX records after the long name, whatever the order; Go lets 'L' win. "
        "We keep GNU tar's reading, which this reader always had, so stored layers read the "
        "same.", go=[("fromL", "0")]),
    "pax_path_beats_later_long_name": Case(
        archive(x((b"path", b"frompax"),), longname(b"fromL"), file(b"f", b"1")),
        go=[("fromL", "0")]),
    "pax_linkpath_beats_long_link": Case(
        archive(longname(b"fromK", b"K"), x((b"linkpath", b"frompax"),), symlink(b"s", b"short")),
        go=[("s", "2")]),
    "pax_uid_and_long_name_together": Case(
        archive(x((b"uid", b"9"),), longname(b"fromL"), file(b"f", b"1"))),

    # ---- numbers ---------------------------------------------------------------------------
    "base256_numbers": Case(
        archive(file(b"f", b"hello", uid=b256(3000000000, 8), gid=b256(70000, 8),
                     size=b256(5, 12), mtime=b256(1700000000, 12)))),
    "base256_negative_mtime": Case(
        archive(file(b"f", b"hi", mtime=b"\xff" * 11 + b"\xfe"))),
    "octal_fields_with_spaces": Case(
        archive(file(b"f", b"hi", mode=b"000644 \x00", uid=b"  1750 \x00", size=b"00000000002 ",
                     mtime=b"14524770000 "))),
    "octal_field_ends_at_nul": Case(
        archive(file(b"f", b"hi", mode=b"644\x00junk", uid=b"12\x00zz"))),
    "octal_field_with_leading_nuls": Case(
        archive(file(b"f", b"hi", uid=b"\x00\x00\x0017\x00")),
        "GNU tar skips one leading NUL and then reads 0; Go skips them all and reads 017: we "
        "follow Go", gnu={"f": {"type": "file", "uid": 0}}),
    "octal_field_without_terminator": Case(
        archive(file(b"f", b"hi", uid=b"00001750"))),
    "pax_mtime_with_empty_fraction": Case(
        archive(x((b"mtime", b"1700000001."),), file(b"f", b"1"))),

    # ---- header forms -----------------------------------------------------------------------
    "volume_label": Case(
        archive(member(header(b"MyVolume", b"V", 5, magic=GNU), b"abcde"), file(b"f", b"1")),
        "a 'V' label names the archive; GNU tar makes nothing of it, Go lists it",
        go=[("MyVolume", "V"), ("f", "0")]),
    "ustar_prefix": Case(
        archive(file(b"name", b"1", prefix=b"some/prefix/dir"))),
    "go_1_7_prefix_in_gnu_header": Case(
        archive(file(b"name", b"1", prefix=b"some/prefix/dir", magic=GNU)),
        "Go before 1.8 wrote the ustar prefix into GNU headers (golang.org/issue/12594) and "
        "Docker wrote layers with it: Go reads it back when atime/ctime are not numbers, GNU "
        "tar ignores it.  We follow Go, so those layers keep their names.",
        gnu={"name": {"type": "file"}}),
    "v7_header": Case(
        archive(file(b"v7file", b"abc", magic=V7), member(header(b"v7dir/", b"5", magic=V7)),
                symlink(b"v7link", b"v7file", magic=V7))),
    "v7_directory_by_trailing_slash": Case(
        archive(file(b"v7file", b"abc", type=b"\x00", magic=V7),
                file(b"v7d/", b"", type=b"\x00", magic=V7))),
    "old_type_with_pax_path_slash_is_directory": Case(
        archive(x((b"path", b"dx/"),), file(b"dx", b"", type=b"\x00"))),
    "regular_file_with_trailing_slash": Case(
        archive(file(b"d0/", b"")),
        "type '0' named 'd0/': GNU tar makes a directory, Go (and Python's tarfile) a file; we "
        "follow Go", gnu={"d0": {"type": "dir"}}),
    "contiguous_file_is_regular": Case(
        archive(file(b"c", b"contig", type=b"7"))),
    "unknown_types_are_regular_files": Case(
        archive(*(file(b"t%d" % i, b"data %d" % i, type=t)
                  for i, t in enumerate([b"A", b"z", b"N", b"I", b"\x01", b"\xff"]))),
        "POSIX: an unknown type flag is read as a regular file; GNU tar extracts them so, Go "
        "hands them over with their content"),
    "header_only_types_ignore_size": Case(
        archive(member(header(b"d", b"5", 512)), file(b"next", b"N"))),
    "pax_size_on_directory_is_ignored": Case(
        archive(x((b"size", b"512"),), member(header(b"d", b"5")), file(b"next", b"N"))),

    # ---- PAX records --------------------------------------------------------------------------
    "pax_empty_path_keeps_header_name": Case(
        archive(x((b"path", b""),), file(b"hdrname", b"1")),
        "an empty value leaves the header's field (Go); GNU tar extracts '.' and fails",
        gnu={}, gnu_status=2),
    "pax_empty_linkpath_keeps_header_link": Case(
        archive(x((b"linkpath", b""),), symlink(b"s", b"hdrlink")),
        gnu={}, gnu_status=2),
    "pax_empty_numbers_keep_header_fields": Case(
        archive(x((b"uid", b""), (b"size", b""), (b"mtime", b"")), file(b"f", b"1", uid=5)),
        "GNU tar complains of 'uid=' and keeps the header's uid too", gnu_status=2),
    "empty_long_name_keeps_header_name": Case(
        archive(longname(b""), file(b"hdrname", b"1")),
        "as an empty PAX path (Go); GNU tar extracts '.' and fails", gnu={}, gnu_status=2),
    "hdrcharset_and_comment_records": Case(
        archive(x((b"hdrcharset", b"BINARY"), (b"comment", b"anything \xff"),
                  (b"charset", b"ISO-IR 10646 2000 UTF-8"), (b"path", b"caf\xe9")),
                file(b"f", b"1")),
        "names are bytes: BINARY changes nothing, comments are ignored"),
    "empty_xattr_value": Case(
        archive(x((b"SCHILY.xattr.user.empty", b""),), file(b"f", b"1")),
        "an empty value is a value for an xattr: GNU tar sets it, Go keeps the record"),
    "xattr_value_with_nul": Case(
        archive(x((b"SCHILY.xattr.user.bin", b"a\x00b"),), file(b"f", b"1"))),
}


@dataclass
class Refused:
    data: bytes
    error: type[Exception]
    words: str                      # in our message
    gnu_refuses: bool               # GNU tar exits non-zero
    go_refuses: bool                # Go's Next or Read fails
    why: str = ""


REJECTED = {
    "nul_inside_pax_key": Refused(
        archive(ext(b"x", record(b"co\x00mment", b"v")), file(b"f", b"1")),
        errors.CorruptArchive, "NUL inside a PAX key", True, True),
    "symlink_with_data": Refused(
        archive(member(header(b"s", b"2", 3, link=b"t"), b"abc"), file(b"next", b"N")),
        errors.CorruptArchive, "bad header checksum", True, True,
        "a link has no data, so its data block is read as a header"),
    "pax_record_length_with_leading_space": Refused(
        archive(ext(b"x", b" " + record(b"path", b"sp")), file(b"f", b"1")),
        errors.CorruptArchive, "bad PAX record length", True, True),
    "multi_volume_continuation": Refused(
        archive(member(header(b"f", b"M", 3, magic=GNU), b"abc"), file(b"g", b"1")),
        errors.UnsupportedFormat, "multi-volume", True, False,
        "the rest of a file begun on another volume: GNU tar will not extract it, Go hands "
        "the header over"),
    "octal_digits_then_junk": Refused(
        archive(file(b"f", b"hi", uid=b"17 zz\x00")),
        errors.CorruptArchive, "bad uid field", False, True,
        "GNU tar reads 017 and ignores the rest, Go refuses the header: we refuse"),
    "pax_numbers_with_plus_sign": Refused(
        archive(x((b"size", b"+1"),), file(b"f", b"1")),
        errors.CorruptArchive, "bad value for PAX key 'size'", True, False,
        "Go reads +1, GNU tar calls it malformed: we refuse"),
}


# ---- the three readers ------------------------------------------------------------------------


def _ours(data: bytes, root: Path) -> list[tuple]:
    """Our entries, each with its content read back from the object store."""
    root.mkdir()
    store = _native.ObjectStore(root)
    out = []
    for e in feed(data, store=store).entries():
        content = None
        if e.type.value == "file":
            content = b""
            if e.size:
                with open(root / "objects" / _native.object_path(e.object_id), "rb") as f:
                    content = f.read()
        out.append((e, content))
    return out


def _describe(e, content) -> dict:
    d = {"type": e.type.value, "mode": e.mode, "uid": e.uid, "gid": e.gid,
         "mtime_ns": e.mtime_ns, "xattrs": dict(e.xattrs)}
    if content is not None:
        d["sha256"] = hashlib.sha256(content).hexdigest()
    if e.type.value in ("symlink", "hardlink"):
        d["link"] = e.link
    if e.type.value in ("char", "block"):
        d["dev"] = (e.devmajor, e.devminor)
    return d


def our_tree(entries) -> tuple[dict, list]:
    """The tree our records describe: {path: description}, a later entry replacing an earlier
    one, and the groups of paths that share an inode (hardlinks)."""
    tree, groups = {}, {}
    for e, content in entries:
        if e.type.value == "hardlink":
            tree[e.path] = tree[e.link]
            groups.setdefault(e.link, {e.link}).add(e.path)
        else:
            tree[e.path] = _describe(e, content)
            if e.type.value == "symlink":
                del tree[e.path]["mode"]
    return tree, sorted(sorted(g) for g in groups.values())


def gnu_tree(data: bytes, dest: Path) -> tuple[int, str, dict, list]:
    dest.mkdir()
    args = ["tar", "-x", "-p", "-f", "-", "-C", str(dest), "--xattrs", "--xattrs-include=*",
            "--numeric-owner"] + ([] if ROOT else ["--no-same-owner"])
    proc = subprocess.run(args, input=data, capture_output=True, env=oracle_env())
    tree, inodes = {}, {}
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, dest)
            st = os.lstat(full)
            d = {"type": {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
                          stat.S_IFCHR: "char", stat.S_IFBLK: "block",
                          stat.S_IFIFO: "fifo"}[stat.S_IFMT(st.st_mode)],
                 "mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
                 "mtime_ns": st.st_mtime_ns,
                 "xattrs": {k: os.getxattr(full, k, follow_symlinks=False)
                            for k in os.listxattr(full, follow_symlinks=False)}}
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    d["sha256"] = hashlib.sha256(f.read()).hexdigest()
                if st.st_nlink > 1:
                    inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                d["link"] = os.readlink(full)
                del d["mode"]       # Linux symlinks have no mode of their own
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                d["dev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
            tree[rel] = d
    groups = sorted(sorted(g) for g in inodes.values())
    return proc.returncode, proc.stderr.decode(errors="replace"), tree, groups


GO_TYPES = {"1": "hardlink", "2": "symlink", "3": "char", "4": "block", "5": "dir", "6": "fifo"}


def go_entries(headers: list[dict]) -> list[dict]:
    """Go's headers as our entries: 'g' skipped (Docker and containerd ignore it), every type
    Go does not interpret a regular file, as GNU tar and POSIX read them."""
    out = []
    for h in headers:
        if h["typeflag"] == "g":
            continue
        kind = GO_TYPES.get(h["typeflag"], "file")
        xattrs = {os.fsdecode(k[len(b"SCHILY.xattr."):]): v
                  for k, v in h["pax"].items() if k.startswith(b"SCHILY.xattr.")}
        d = {"path": clean(h["name"]), "type": kind, "mode": h["mode"] & 0o7777,
             "uid": h["uid"], "gid": h["gid"], "mtime_ns": h["mtime_ns"], "xattrs": xattrs}
        if kind == "file":
            d["sha256"] = h["sha256"]
        if kind in ("symlink", "hardlink"):
            d["link"] = h["linkname"] if kind == "symlink" else clean(h["linkname"])
        if kind in ("char", "block"):
            d["dev"] = (h["devmajor"], h["devminor"])
        out.append(d)
    return out


@pytest.fixture(scope="session")
def gnu_tar():
    tar = shutil.which("tar")
    if tar is None or b"GNU tar" not in subprocess.run([tar, "--version"],
                                                       capture_output=True).stdout:
        pytest.skip("needs GNU tar on PATH")
    return tar


# ---- accepted ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_gnu_tar_makes_our_tree(name, gnu_tar, tmp_path):
    c = ACCEPTED[name]
    if c.needs_root and not ROOT:
        pytest.skip("GNU tar makes device nodes only as root")
    ours, our_groups = our_tree(_ours(c.data, tmp_path / "store"))
    status, stderr, gnu, gnu_groups = gnu_tree(c.data, tmp_path / "gnu")
    assert status == c.gnu_status, stderr
    if not ROOT:
        for d in list(ours.values()) + list(gnu.values()):
            d.pop("uid"), d.pop("gid")
    if c.gnu is not None:
        # GNU tar reads this one otherwise (c.why): check what it makes instead.
        assert {p: {k: d[k] for k in c.gnu.get(p, {}) if k in d} for p, d in gnu.items()} == {
            p: {k: v for k, v in want.items() if ROOT or k not in ("uid", "gid")}
            for p, want in c.gnu.items()}, c.why
        assert ours != gnu
        return
    parents = {str(Path(p).parents[i]) for p in ours for i in range(len(Path(p).parts) - 1)}
    assert set(gnu) == set(ours) | parents
    for p in parents - set(ours):
        assert gnu[p]["type"] == "dir"
    assert {p: gnu[p] for p in ours} == ours
    assert gnu_groups == our_groups


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_go_reads_it_so(name, gotar, tmp_path):
    c = ACCEPTED[name]
    listed = gotar(c.data)
    assert listed["error"] is None
    if c.go is not None:
        # Go reads this one otherwise (c.why): check what it lists.
        assert [(h["name"], h["typeflag"]) for h in listed["headers"]] == c.go, c.why
        return
    ours = []
    for e, content in _ours(c.data, tmp_path / "store"):
        d = _describe(e, content)
        if e.type.value == "hardlink":
            d.pop("sha256", None)
        ours.append({"path": e.path, **d})
    assert go_entries(listed["headers"]) == ours


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_read_whole_or_bytewise_and_saved_byte_for_byte(name, tmp_path):
    c = ACCEPTED[name]
    whole = feed(c.data)
    bytewise = feed(c.data, [1])
    assert (bytewise.records, bytewise.raw) == (whole.records, whole.raw)
    assert whole.stats.diff_id == sha256_id(c.data)
    if c.sparse:
        return
    source = tmp_path / "image.tar"
    source.write_bytes(A.docker_archive([([c.data], ["compat:1"])]))
    with Store(tmp_path / "store") as store:
        (image,) = store.import_archive(source)
        assert image.diff_ids == (sha256_id(c.data),)
        out = io.BytesIO()
        store.save(["compat:1"], out)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tf:
        (manifest,) = json.load(tf.extractfile("manifest.json"))
        (layer,) = manifest["Layers"]
        assert tf.extractfile(layer).read() == c.data


# ---- rejected ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REJECTED))
@pytest.mark.parametrize("pieces", [None, [1]], ids=["whole", "bytes"])
def test_rejected(name, pieces):
    r = REJECTED[name]
    with pytest.raises(r.error, match=r.words):
        feed(r.data, pieces)


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_rejected_as_gnu_tar_and_go_say(name, gnu_tar, gotar, tmp_path):
    r = REJECTED[name]
    status, stderr = gnu_tree(r.data, tmp_path / "gnu")[:2]
    assert (status != 0) == r.gnu_refuses, stderr
    assert (gotar(r.data)["error"] is not None) == r.go_refuses, r.why
