"""Tar archives built byte by byte, for the forms tarfile cannot write: each header field is
given as a number (written in octal as GNU tar writes it) or as the exact bytes to put there.
Only the standard library: csrc/fuzz/seeds.py imports this module too."""

from __future__ import annotations

# Field offsets and widths of the 512-byte header.
FIELDS = {
    "name": (0, 100), "mode": (100, 8), "uid": (108, 8), "gid": (116, 8), "size": (124, 12),
    "mtime": (136, 12), "chksum": (148, 8), "type": (156, 1), "link": (157, 100),
    "magic": (257, 8), "uname": (265, 32), "gname": (297, 32), "devmajor": (329, 8),
    "devminor": (337, 8), "prefix": (345, 155),
}
POSIX = b"ustar\x0000"
GNU = b"ustar  \x00"
V7 = bytes(8)
MTIME = 1700000000
END = bytes(1024)


def octal(n: int, width: int) -> bytes:
    return b"%0*o\x00" % (width - 1, n)


def header(name: bytes = b"f", type: bytes = b"0", size: int | bytes = 0, *,
           mode: int | bytes = 0o644, uid: int | bytes = 0, gid: int | bytes = 0,
           mtime: int | bytes = MTIME, link: bytes = b"", magic: bytes = POSIX,
           uname: bytes = b"root", gname: bytes = b"root", devmajor: int | bytes = 0,
           devminor: int | bytes = 0, prefix: bytes = b"", raw: dict | None = None) -> bytes:
    """One header block.  Numbers are octal unless given as bytes; raw maps an offset to
    bytes written last, before the checksum (which is always right)."""
    block = bytearray(512)
    values = {"name": name, "mode": mode, "uid": uid, "gid": gid, "size": size,
              "mtime": mtime, "type": type, "link": link, "magic": magic, "uname": uname,
              "gname": gname, "devmajor": devmajor, "devminor": devminor, "prefix": prefix}
    if magic == V7:
        for field in ("uname", "gname", "devmajor", "devminor", "prefix"):
            values[field] = b""
    for field, value in values.items():
        offset, width = FIELDS[field]
        if isinstance(value, int):
            value = octal(value, width)
        assert len(value) <= width, field
        block[offset:offset + len(value)] = value
    for offset, value in (raw or {}).items():
        block[offset:offset + len(value)] = value
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def member(hdr: bytes, data: bytes = b"") -> bytes:
    return hdr + pad(data)


def record(key: bytes, value: bytes, width: int = 0) -> bytes:
    """A PAX record "LEN KEY=VALUE\\n"; width > 0 writes LEN with leading zeros to that width."""
    body = b" %s=%s\n" % (key, value)
    n = len(body) + max(width, 1)
    while len(b"%0*d" % (width, n)) + len(body) != n:
        n += 1
    return b"%0*d" % (width, n) + body


def records(*pairs) -> bytes:
    return b"".join(record(k, v) for k, v in pairs)


def ext(type: bytes, body: bytes, name: bytes = b"././@PaxHeader", magic: bytes = POSIX) -> bytes:
    """An extended header ('x', 'g', 'X', 'L', 'K') and its body."""
    return member(header(name, type, len(body), magic=magic), body)


def longname(name: bytes, type: bytes = b"L", size: int | None = None,
             tail: bytes = b"\x00") -> bytes:
    """A GNU long name ('L') or link name ('K') header: name, then tail, in a body of size."""
    body = name + tail
    if size is not None:
        body = body[:size] + bytes(max(0, size - len(body)))
    return member(header(b"././@LongLink", type, len(body), magic=GNU, mode=0), body)


def archive(*parts: bytes) -> bytes:
    return b"".join(parts) + END


def file(name: bytes = b"f", content: bytes = b"", type: bytes = b"0", **fields) -> bytes:
    """A regular file (or another type whose size counts its content)."""
    fields.setdefault("size", len(content))
    return member(header(name, type, **fields), content)
