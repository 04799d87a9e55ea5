"""Writes seed inputs for the tar fuzzer: small archives in every format tarfile writes, and
every form of tests/test_tar_compat.py (Solaris and global PAX headers, dump directories,
labels, long names with trailing bytes, numbers with leading zeros, ...), imported from there so
that each new form the reader learns is fuzzed from its first seed.  That needs the package
importable, as it is where CI runs this (after its install).  The regression fixtures in
tests/data/fuzz are a corpus directory of their own (Makefile).  Each seed starts with the byte
that picks the feed size."""

import io
import os
import sys
import tarfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2] / "tests"


def archive(fmt) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        # Long enough for GNU long names and PAX paths, with slashes so ustar can split it.
        d = tarfile.TarInfo("dir/" + "/".join(["long" * 5] * 8))
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
        f = tarfile.TarInfo("dir/file")
        f.size = 700
        if fmt == tarfile.PAX_FORMAT:
            f.pax_headers = {"SCHILY.xattr.user.x": "1", "mtime": "1.5"}
        tf.addfile(f, io.BytesIO(b"x" * 700))
        for kind, name in ((tarfile.SYMTYPE, "sym"), (tarfile.LNKTYPE, "hard")):
            t = tarfile.TarInfo(name)
            t.type = kind
            t.linkname = "dir/file"
            tf.addfile(t)
        c = tarfile.TarInfo("dev")
        c.type = tarfile.CHRTYPE
        c.devmajor, c.devminor = 1, 3
        tf.addfile(c)
    return buf.getvalue()


def compat_forms() -> dict[str, bytes]:
    sys.path[:0] = [str(TESTS), str(TESTS.parent)]
    from test_tar_compat import ACCEPTED, REJECTED
    return {**{name: c.data for name, c in ACCEPTED.items()},
            **{name: r.data for name, r in REJECTED.items()}}


def main(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    seeds = {f"seed-{i}": archive(fmt) for i, fmt in
             enumerate((tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT))}
    seeds.update({f"compat-{name}": data for name, data in compat_forms().items()})
    for name, data in seeds.items():
        for lead in (0, 10, 63, 255):
            with open(os.path.join(out, f"{name}-{lead}"), "wb") as f:
                f.write(bytes([lead]) + data)


if __name__ == "__main__":
    main(sys.argv[1])
