"""Typed wrappers over the C core; the only module that touches layerstore._core.

Every handle is guarded by a lock, so a wrapper object may be shared between threads even
though the C handle may not.  cffi releases the GIL during each C call.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import threading
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from . import errors
from ._model import Entry, EntryType, IngestStats
from ._version import __version__

try:
    from ._core import ffi, lib
except ImportError as exc:  # pragma: no cover - a broken install
    raise ImportError(f"layerstore's C core is not built: {exc}") from exc

if ffi.string(lib.ls_build_get_version()).decode() != __version__:  # pragma: no cover
    raise ImportError(
        "layerstore's C core was built for version "
        f"{ffi.string(lib.ls_build_get_version()).decode()}, but the package is {__version__}: "
        "rebuild it (pip install .)"
    )

_BUILD_FLAGS = lib.ls_build_get_flags()


def built_with_sanitizers() -> bool:
    """Whether the C core was built with AddressSanitizer + UBSan (for the test suite)."""
    return bool(_BUILD_FLAGS & lib.LS_BUILD_SANITIZED)


def built_with_test_hooks() -> bool:
    """Whether the C core is a test build, with the crash-test hook (LAYERSTORE_TEST_HOOKS=1
    when it was built)."""
    return bool(_BUILD_FLAGS & lib.LS_BUILD_TEST_HOOKS)


def test_step() -> None:
    """The crash tests' kill point (see ls_test_step): does something only in a test build
    whose process has LAYERSTORE_TEST_KILL_AFTER set."""
    if _BUILD_FLAGS & lib.LS_BUILD_TEST_HOOKS:
        lib.ls_test_step()


_ERRORS = {
    lib.LS_E_CORRUPT: errors.CorruptArchive,
    lib.LS_E_TRUNCATED: errors.TruncatedArchive,
    lib.LS_E_LIMIT: errors.LimitExceeded,
    lib.LS_E_UNSAFE_PATH: errors.UnsafePath,
    lib.LS_E_UNSUPPORTED: errors.UnsupportedFormat,
    lib.LS_E_STATE: errors.LayerstoreError,
    lib.LS_E_CANCELLED: errors.LayerstoreError,     # seen only when observed() cancelled it
}


def _check(code: int, message: str) -> None:
    """Turns a C return code into the matching exception."""
    if code >= 0:
        return
    if code == lib.LS_E_NOMEM:
        raise MemoryError(message)
    if code > -4096:
        raise errors.StoreIOError(-code, message)
    raise _ERRORS.get(code, errors.LayerstoreError)(message)


# ---- BLAKE3 ---------------------------------------------------------------------------------

_BLAKE3_BACKENDS = {"portable": lib.LS_BLAKE3_PORTABLE, "sse41": lib.LS_BLAKE3_SSE41,
                    "avx2": lib.LS_BLAKE3_AVX2, "avx512": lib.LS_BLAKE3_AVX512}
_SHA256_BACKENDS = {"portable": lib.LS_SHA256_PORTABLE, "shani": lib.LS_SHA256_SHANI}
_backend_lock = threading.Lock()


_tls = threading.local()


def blake3(data) -> bytes:
    """The 32-byte BLAKE3 hash of a bytes-like object."""
    # Small inputs are dominated by call overhead: bytes go to C without a from_buffer wrapper,
    # and the output buffer is allocated once per thread.
    try:
        out = _tls.out
    except AttributeError:
        out = _tls.out = ffi.new("uint8_t[32]")
    if type(data) is bytes:
        lib.ls_blake3_hash(data, len(data), out)
    else:
        data = ffi.from_buffer(data)
        lib.ls_blake3_hash(data, len(data), out)
    return ffi.unpack(ffi.cast("char *", out), 32)


class Blake3:
    """Incremental BLAKE3 with extendable output."""

    __slots__ = ("_h", "_lock")

    def __init__(self, data=b"") -> None:
        h = lib.ls_blake3_new()
        if h == ffi.NULL:
            raise MemoryError("cannot allocate a BLAKE3 hasher")
        self._h = ffi.gc(h, lib.ls_blake3_free)
        self._lock = threading.Lock()
        if data:
            self.update(data)

    def update(self, data) -> None:
        with self._lock:
            lib.ls_blake3_update(self._h, ffi.from_buffer(data), len(data))

    def digest(self, length: int = 32) -> bytes:
        out = ffi.new("uint8_t[]", length)
        with self._lock:
            lib.ls_blake3_finalize(self._h, out, length)
        return ffi.buffer(out)[:]

    def hexdigest(self, length: int = 32) -> str:
        return self.digest(length).hex()


class Sha256:
    """Incremental SHA-256 (the C core's, which computes diffIDs during ingest)."""

    __slots__ = ("_h", "_lock")

    def __init__(self, data=b"") -> None:
        h = lib.ls_sha256_new()
        if h == ffi.NULL:
            raise MemoryError("cannot allocate a SHA-256 context")
        self._h = ffi.gc(h, lib.ls_sha256_free)
        self._lock = threading.Lock()
        if data:
            self.update(data)

    def update(self, data) -> None:
        with self._lock:
            lib.ls_sha256_update(self._h, ffi.from_buffer(data), len(data))

    def digest(self) -> bytes:
        out = ffi.new("uint8_t[32]")
        with self._lock:
            lib.ls_sha256_finalize(self._h, out)
            lib.ls_sha256_reset(self._h)
        return ffi.buffer(out)[:]


def _available(names: dict, use, current) -> list[str]:
    with _backend_lock:
        was = current()
        found = [name for name, code in names.items() if use(code) == 0]
        use(was)
    return found


def blake3_backends() -> list[str]:
    """The BLAKE3 implementations this CPU can run, portable first."""
    return _available(_BLAKE3_BACKENDS, lib.ls_blake3_set_backend, lib.ls_blake3_get_backend)


def sha256_backends() -> list[str]:
    """The SHA-256 implementations this CPU can run, portable first."""
    return _available(_SHA256_BACKENDS, lib.ls_sha256_set_backend, lib.ls_sha256_get_backend)


@contextlib.contextmanager
def _switch(names: dict, use, current, name: str):
    if name not in names:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(names)}")
    with _backend_lock:
        was = current()
        if use(names[name]) != 0:
            raise errors.UnsupportedFormat(f"this CPU cannot run the {name} backend")
    try:
        yield
    finally:
        with _backend_lock:
            use(was)


def blake3_backend(name: str):
    """Context manager: hash with one BLAKE3 backend process-wide (tests and benchmarks)."""
    return _switch(_BLAKE3_BACKENDS, lib.ls_blake3_set_backend, lib.ls_blake3_get_backend, name)


def sha256_backend(name: str):
    """Context manager: use one SHA-256 backend process-wide (tests and benchmarks)."""
    return _switch(_SHA256_BACKENDS, lib.ls_sha256_set_backend, lib.ls_sha256_get_backend, name)


def current_blake3_backend() -> str:
    code = lib.ls_blake3_get_backend()
    return next(n for n, c in _BLAKE3_BACKENDS.items() if c == code)


# ---- Object store ---------------------------------------------------------------------------


def object_id(content_hash: bytes, mode: int, uid: int, gid: int,
              xattrs: tuple[tuple[str, bytes], ...] = ()) -> str:
    """The identity of an object: its content hash and the metadata a hardlink shares."""
    blob = encode_xattrs(xattrs)
    out = ffi.new("uint8_t[32]")
    lib.ls_object_make_id(content_hash, mode & 0o7777, uid, gid, blob, len(blob), out)
    return ffi.buffer(out)[:].hex()


def object_path(object_id_hex: str) -> str:
    """An object's path relative to objects/."""
    return f"{object_id_hex[:2]}/{object_id_hex[2:]}"


def xattr_applies(name: str, owners: bool) -> bool:
    """Whether an xattr is applied to objects and checkouts (root: owners) or kept in the
    records only; the rule is ls_xattr_applies."""
    raw = os.fsencode(name)
    return bool(lib.ls_xattr_applies(raw, len(raw), owners))


_XATTR_HEAD = struct.Struct("<II")      # name_len, value_len (layerstore.h, "Records")


def encode_xattrs(xattrs: tuple[tuple[str, bytes], ...]) -> bytes:
    """xattrs in the core's encoding, sorted by name."""
    parts = []
    for name, value in sorted((os.fsencode(n), v) for n, v in xattrs):
        parts.append(_XATTR_HEAD.pack(len(name), len(value)) + name + value)
    return b"".join(parts)


def decode_xattrs(blob) -> tuple[tuple[str, bytes], ...]:
    """The (name, value) pairs of encoded xattrs (encode_xattrs' inverse)."""
    out = []
    pos = 0
    while pos < len(blob):
        nlen, vlen = _XATTR_HEAD.unpack_from(blob, pos)
        pos += _XATTR_HEAD.size
        name = os.fsdecode(bytes(blob[pos:pos + nlen]))
        pos += nlen
        out.append((name, bytes(blob[pos:pos + vlen])))
        pos += vlen
    return tuple(out)


class ObjectStore:
    """The C object store over an existing root directory (objects/ and tmp/ inside it)."""

    def __init__(self, root: str | os.PathLike, owners: bool | None = None) -> None:
        if owners is None:
            owners = os.geteuid() == 0
        out = ffi.new("ls_store **")
        err = ffi.new("char[]", 512)
        rc = lib.ls_store_open(os.fsencode(root), lib.LS_STORE_OWNERS if owners else 0,
                               out, err, 512)
        _check(rc, ffi.string(err).decode(errors="replace"))
        self.root = os.fspath(root)
        self.owners = owners
        self._h = ffi.gc(out[0], lib.ls_store_close)
        self._writeback: threading.Thread | None = None
        self._writeback_lock = threading.Lock()

    def sync(self) -> None:
        """Makes every object written so far durable (one syncfs)."""
        with self._writeback_lock:
            pending = self._writeback
        if pending is not None:
            pending.join()
        rc = lib.ls_store_sync(self._h)
        _check(rc, f"cannot sync the store at {self.root}: {os.strerror(-rc) if rc else ''}")

    def start_writeback(self) -> None:
        """Starts writing the objects so far to disk on a thread, unless that is already
        running: an import calls it after each layer, so the sync before its commit finds
        little left to write instead of waiting for all of it.  Errors surface in sync()."""
        with self._writeback_lock:
            if self._writeback is not None and self._writeback.is_alive():
                return
            self._writeback = threading.Thread(target=lib.ls_store_sync, args=(self._h,),
                                               name="layerstore-writeback", daemon=True)
            self._writeback.start()

    def restore(self, object_id_hex: str, source_hex: str, content_hash: bytes, size: int,
                mode: int, uid: int, gid: int, xattrs: tuple = ()) -> bool:
        """Re-creates an object whose name is free from another object with the same content
        (see ls_store_restore); CorruptArchive when the source no longer holds it.  Returns
        whether the filesystem refused some of its xattrs."""
        blob = encode_xattrs(xattrs)
        skipped = ffi.new("int *")
        err = ffi.new("char[]", 1024)
        rc = lib.ls_store_restore(self._h, bytes.fromhex(object_id_hex),
                                  bytes.fromhex(source_hex), content_hash, size, mode, uid, gid,
                                  blob, len(blob), skipped, err, 1024)
        _check(rc, ffi.string(err).decode(errors="replace"))
        return bool(skipped[0])

    def close(self) -> None:
        with self._writeback_lock:
            pending = self._writeback
        if pending is not None:
            pending.join()      # it uses the handle
        if self._h is not None:
            ffi.release(self._h)
            self._h = None


# ---- Entry records: the one codec (layout and offsets in csrc/layerstore.h) -----------------
#
# No other module knows how a record is laid out.  Where each field of the fixed part sits
# comes from the core (LS_RECORD_OFF_*); this side adds each field's width and sign as a struct
# code, and checks that the fields tile the fixed part exactly.

def _fixed(*fields: tuple[str, str], whole: bool = False) -> struct.Struct:
    """A Struct of the named fields of a record's fixed part, in layout order, skipping the
    bytes between them; whole: every field, none skipped."""
    fmt, at = "<", 0
    for name, code in fields:
        offset = getattr(lib, "LS_RECORD_OFF_" + name)
        if offset < at or (whole and offset != at):
            raise ImportError(f"the record field {name} is not where layerstore.h puts it")
        fmt += (f"{offset - at}x" if offset > at else "") + code
        at = offset + struct.calcsize("<" + code)
    layout = struct.Struct(fmt)
    if whole and layout.size != lib.LS_RECORD_FIXED:
        raise ImportError("the record fields do not fill LS_RECORD_FIXED bytes")
    return layout


_RECORD = _fixed(
    ("LEN", "I"), ("TYPE", "B"), ("FLAGS", "B"), ("RESERVED", "2x"), ("MODE", "I"),
    ("UID", "I"), ("GID", "I"), ("DEVMAJOR", "I"), ("DEVMINOR", "I"), ("MTIME_NSEC", "I"),
    ("MTIME", "q"), ("SIZE", "Q"), ("RAW_LEN", "Q"), ("OBJECT_ID", "32s"),
    ("CONTENT_HASH", "32s"), ("PATH_LEN", "I"), ("LINK_LEN", "I"), ("UNAME_LEN", "I"),
    ("GNAME_LEN", "I"), ("XATTRS_LEN", "I"), whole=True)
# What scan_records reads: the xattrs are the record's last bytes, the other variable parts
# and the device numbers and mtime are not read at all.
_SCAN = _fixed(
    ("LEN", "I"), ("TYPE", "B"), ("FLAGS", "B"), ("MODE", "I"), ("UID", "I"), ("GID", "I"),
    ("SIZE", "Q"), ("RAW_LEN", "Q"), ("OBJECT_ID", "32s"), ("CONTENT_HASH", "32s"),
    ("XATTRS_LEN", "I"))
_FIXED = lib.LS_RECORD_FIXED

_TYPES = {
    lib.LS_ENTRY_FILE: EntryType.FILE,
    lib.LS_ENTRY_HARDLINK: EntryType.HARDLINK,
    lib.LS_ENTRY_SYMLINK: EntryType.SYMLINK,
    lib.LS_ENTRY_CHAR: EntryType.CHAR,
    lib.LS_ENTRY_BLOCK: EntryType.BLOCK,
    lib.LS_ENTRY_DIR: EntryType.DIR,
    lib.LS_ENTRY_FIFO: EntryType.FIFO,
}
_TYPE_CODES = {v: k for k, v in _TYPES.items()}
FILE = lib.LS_ENTRY_FILE            # the type code of regular files, as scan_records gives it
NEW_OBJECT = lib.LS_RECORD_NEW_OBJECT
SPARSE = lib.LS_RECORD_SPARSE
XATTRS_SKIPPED = lib.LS_RECORD_XATTRS_SKIPPED
_NO_ID = bytes(32)


def _damaged(what: str) -> errors.CorruptArchive:
    return errors.CorruptArchive(f"damaged entry records: {what}")


@dataclass(frozen=True, slots=True)
class Record:
    """An entry together with what only ingest knows: flags and its raw tar metadata length."""

    entry: Entry
    flags: int
    raw_len: int


def decode_records(blob) -> Iterator[Record]:
    """Decodes a record batch into entries."""
    view = memoryview(blob)
    pos, end = 0, len(view)
    unpack = _RECORD.unpack_from
    fsdecode = os.fsdecode
    try:
        while pos < end:
            (total, typ, flags, mode, uid, gid, major, minor, nsec, mtime, size, raw_len,
             oid, chash, plen, llen, ulen, glen, xlen) = unpack(view, pos)
            if total < _FIXED:
                raise _damaged(f"a record of {total} bytes")
            p = pos + _FIXED
            path = fsdecode(bytes(view[p:p + plen]))
            p += plen
            link = fsdecode(bytes(view[p:p + llen])) if llen else None
            p += llen
            uname = bytes(view[p:p + ulen]).decode("utf-8", "surrogateescape")
            p += ulen
            gname = bytes(view[p:p + glen]).decode("utf-8", "surrogateescape")
            p += glen
            xattrs = decode_xattrs(view[p:p + xlen]) if xlen else ()
            etype = _TYPES[typ]
            is_file = etype is EntryType.FILE
            yield Record(
                Entry(path, etype, mode, uid, gid, mtime * 1_000_000_000 + nsec, size, link,
                      oid.hex() if is_file else None, chash.hex() if is_file else None,
                      uname, gname, xattrs, major, minor, bool(flags & SPARSE)),
                flags, raw_len)
            pos += total
    except (struct.error, KeyError) as exc:
        raise _damaged(str(exc)) from None


def scan_records(blob) -> Iterator[tuple]:
    """Reads a record batch without building entries, for the passes over every record of a
    store (fsck, gc, du, save): yields, per record, the tuple
        (type, flags, mode, uid, gid, size, raw_len, object_id, content_hash, xattrs)
    where type is the core's code (FILE for regular files), object_id and content_hash are
    32 bytes (zeros but for regular files), and xattrs is still encoded (decode_xattrs)."""
    view = memoryview(blob)
    pos, end = 0, len(view)
    unpack = _SCAN.unpack_from
    try:
        while pos < end:
            total, typ, flags, mode, uid, gid, size, raw_len, oid, chash, xlen = \
                unpack(view, pos)
            if total < _FIXED:
                raise _damaged(f"a record of {total} bytes")
            yield (typ, flags, mode, uid, gid, size, raw_len, oid, chash,
                   view[pos + total - xlen:pos + total] if xlen else b"")
            pos += total
    except struct.error as exc:
        raise _damaged(str(exc)) from None


def encode_record(e: Entry, link: str | None = None) -> bytes:
    """One record of e (the inverse of decode_records); link overrides e.link (a checkout
    plan names hardlink targets by the path it made them at)."""
    path = os.fsencode(e.path)
    target = os.fsencode(link if link is not None else (e.link or ""))
    uname = e.uname.encode("utf-8", "surrogateescape")
    gname = e.gname.encode("utf-8", "surrogateescape")
    xattrs = encode_xattrs(e.xattrs) if e.xattrs else b""
    is_file = e.type is EntryType.FILE
    total = _FIXED + len(path) + len(target) + len(uname) + len(gname) + len(xattrs)
    sec, nsec = divmod(e.mtime_ns, 1_000_000_000)
    typ = lib.LS_ENTRY_HARDLINK if link is not None else _TYPE_CODES[e.type]
    return b"".join((
        _RECORD.pack(total, typ, SPARSE if e.sparse else 0, e.mode, e.uid, e.gid,
                     e.devmajor, e.devminor, nsec, sec, e.size if is_file else 0, 0,
                     bytes.fromhex(e.object_id) if is_file and e.object_id else _NO_ID,
                     bytes.fromhex(e.content_hash) if is_file and e.content_hash else _NO_ID,
                     len(path), len(target), len(uname), len(gname), len(xattrs)),
        path, target, uname, gname, xattrs))


def plan_totals(plan) -> tuple[int, int]:
    """The bytes of regular files and the number of entries of a checkout plan: the totals
    of the progress checkout reports."""
    nbytes = items = 0
    for typ, _, _, _, _, size, _, _, _, _ in scan_records(plan):
        if typ == FILE:
            nbytes += size
        items += 1
    return nbytes, items


def new_objects(blob) -> list[bytes]:
    """The objects that the ingest which produced a record batch wrote (LS_RECORD_NEW_OBJECT)."""
    return [oid for typ, flags, _, _, _, _, _, oid, _, _ in scan_records(blob)
            if typ == FILE and flags & NEW_OBJECT]


def record_objects(blob) -> dict[bytes, int]:
    """The non-empty objects a record batch references: {object id: content size}."""
    return {oid: size for typ, _, _, _, _, size, _, oid, _, _ in scan_records(blob)
            if typ == FILE and size}


# ---- Long calls: checkout, layer writes, object checks --------------------------------------


def observed(call, report=None):
    """Runs call(progress), a C call given an ls_progress, and returns what it returns.  The
    call runs on a worker thread while this one hands report(bytes, items) the counters ten
    times a second (and once at the end); an interrupt of this thread (Ctrl-C) cancels the
    call, waits the moment it takes to stop, and is re-raised, so that the caller cleans up
    instead of waiting for the whole job."""
    progress = ffi.new("ls_progress *")
    outcome: dict = {}

    def work() -> None:
        # Ctrl-C goes to the waiting thread, which cancels at once; taken by this thread (or
        # the C core's, which inherit the mask), it would wait for the next poll, and a call
        # that ended meanwhile would be interrupted after its caller's cleanup could run.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            outcome["value"] = call(progress)
        except BaseException as exc:    # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="layerstore-call", daemon=True)
    worker.start()
    try:
        while True:
            worker.join(0.1)
            if not worker.is_alive():
                break
            if report is not None:
                report(progress.bytes, progress.items)
    except BaseException:
        progress.cancel = 1
        worker.join()
        raise
    if "error" in outcome:
        raise outcome["error"]
    if report is not None:
        report(progress.bytes, progress.items)
    return outcome["value"]


CHECKOUT_MODES = {"reflink": 0, "copy": lib.LS_CHECKOUT_COPY, "link": lib.LS_CHECKOUT_LINK}


def checkout(objects_dir: str, dest: str, plan: bytes, mode: str, owners: bool,
             report=None) -> dict:
    """Makes the existing, empty dest the tree plan describes (see ls_tree_checkout), its
    files made as mode says (a key of CHECKOUT_MODES); returns the counts of what was made
    and skipped.  report: see observed (items: entries made)."""
    stats = ffi.new("ls_checkout_stats *")
    err = ffi.new("char[]", 1024)
    flags = CHECKOUT_MODES[mode] | (lib.LS_CHECKOUT_OWNERS if owners else 0)
    rc = observed(lambda progress: lib.ls_tree_checkout(
        os.fsencode(objects_dir), os.fsencode(dest), plan, len(plan), flags, stats, progress,
        err, 1024), report)
    _check(rc, ffi.string(err).decode(errors="replace"))
    return {name: getattr(stats, name) for name in (
        "files", "dirs", "symlinks", "hardlinked", "reflinked", "copied", "specials",
        "skipped_specials", "skipped_owners", "skipped_xattrs")}


def write_layer(objects_dir: str, records: bytes, raw: bytes, out_fd: int,
                report=None) -> int:
    """Writes a stored layer's exact tar to out_fd (see ls_layer_write); returns the bytes
    written.  UnsupportedFormat, with nothing written, for a layer with sparse files.
    report: see observed (items: entries written)."""
    written = ffi.new("uint64_t *")
    err = ffi.new("char[]", 1024)
    rc = observed(lambda progress: lib.ls_layer_write(
        os.fsencode(objects_dir), records, len(records), raw, len(raw), out_fd, written,
        progress, err, 1024), report)
    _check(rc, ffi.string(err).decode(errors="replace"))
    return written[0]


@dataclass(frozen=True)
class ObjectCheck:
    """What ls_objects_check found for one object file."""
    err: int                # 0, an errno (ENOENT: missing), or NOT_REGULAR
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    content_hash: bytes
    xattrs: int             # of the namespaces xattr_applies names; counted only when asked


NOT_REGULAR = lib.LS_CHECK_NOT_REGULAR


def _objects_check(objects_dir: str, ids: list[bytes], flags: int, report):
    """ls_objects_check over ids on every core: the filled ls_object_check array."""
    objs = ffi.new("ls_object_check[]", len(ids))
    for o, oid in zip(objs, ids):
        o.id = oid
    err = ffi.new("char[]", 1024)
    rc = observed(lambda progress: lib.ls_objects_check(
        os.fsencode(objects_dir), objs, len(ids), os.cpu_count() or 1, flags, progress, err,
        1024), report)
    _check(rc, ffi.string(err).decode(errors="replace"))
    return objs


def check_objects(objects_dir: str, ids: list[bytes], owners: bool,
                  report=None) -> list[ObjectCheck]:
    """Stats and BLAKE3-hashes the objects named by ids on every core (see ls_objects_check),
    in the order given (biggest first spreads the work best), and counts their xattrs that
    xattr_applies(name, owners) names.  report: see observed (items: objects checked)."""
    if not ids:
        return []
    objs = _objects_check(objects_dir, ids, lib.LS_CHECK_XATTRS |
                          (lib.LS_CHECK_OWNERS if owners else 0), report)
    buf = ffi.buffer(objs)
    size = ffi.sizeof("ls_object_check")
    hash_at = ffi.offsetof("ls_object_check", "content_hash")
    return [ObjectCheck(o.err, o.mode, o.uid, o.gid, o.size, o.mtime_ns,
                        buf[i * size + hash_at:i * size + hash_at + 32], o.xattrs)
            for i, o in enumerate(objs)]


def objects_sha256(objects_dir: str, ids: list[bytes], report=None) -> list[bytes | None]:
    """The SHA-256 of each object's content (None for one that is missing or not a regular
    file), on every core through the fsck reading path (ls_objects_check, BLAKE3 skipped).
    ids biggest first spreads the work best.  report: see observed."""
    if not ids:
        return []
    objs = _objects_check(objects_dir, ids, lib.LS_CHECK_SHA256 | lib.LS_CHECK_NO_BLAKE3,
                          report)
    buf = ffi.buffer(objs)
    size = ffi.sizeof("ls_object_check")
    at = ffi.offsetof("ls_object_check", "content_sha256")
    return [buf[i * size + at:i * size + at + 32] if o.err == 0 else None
            for i, o in enumerate(objs)]


def crc64(data, crc: int = 0) -> int:
    """CRC-64/ISO as Go's hash/crc64 with crc64.ISO (see ls_crc64); crc continues one."""
    return lib.ls_crc64(crc, ffi.from_buffer(data), len(data))


def objects_crc64(objects_dir: str, ids: list[bytes], report=None) -> list[int]:
    """The CRC-64/ISO of each object named by ids (32-byte ids), read in order: what
    containers-storage's tar-split records per file.  report: see observed."""
    if not ids:
        return []
    crcs = ffi.new("uint64_t[]", len(ids))
    err = ffi.new("char[]", 1024)
    joined = b"".join(ids)
    rc = observed(lambda progress: lib.ls_objects_crc64(
        os.fsencode(objects_dir), joined, len(ids), crcs, progress, err, 1024), report)
    _check(rc, ffi.string(err).decode(errors="replace"))
    return list(crcs)


# ---- Overlay mounts -------------------------------------------------------------------------


def overlay_mount(target: str, options: str) -> int:
    """Mounts an overlay at target with the given options (see ls_overlay_mount): 0, or the
    errno of mount(2)."""
    return -lib.ls_overlay_mount(os.fsencode(target), os.fsencode(options))


def overlay_unmount(target: str) -> int:
    """Unmounts what is mounted at target (see ls_overlay_unmount): 0, or the errno of
    umount2(2)."""
    return -lib.ls_overlay_unmount(os.fsencode(target))


# ---- Layer ingest ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestResult:
    """The outcome of one layer ingest.

    records is the C core's record batch (decode with decode_records); raw holds every byte of
    the layer tar that is not file content, so that records + raw + objects re-create it.
    """

    stats: IngestStats
    records: bytes
    raw: bytes

    def entries(self) -> list[Entry]:
        return [r.entry for r in decode_records(self.records)]


class LayerIngest:
    """Feeds one uncompressed layer stream to the C core; store=None only parses and hashes."""

    def __init__(self, store: ObjectStore | None = None) -> None:
        h = lib.ls_ingest_new(store._h if store is not None else ffi.NULL)
        if h == ffi.NULL:
            raise MemoryError("cannot allocate a layer ingest")
        self._store = store         # keeps the C store alive as long as this ingest
        self._h = ffi.gc(h, lib.ls_ingest_free)
        self._lock = threading.Lock()
        self._take = ffi.new("const uint8_t *[2]")
        self._take_len = ffi.new("size_t[2]")
        self._records = bytearray()
        self._raw = bytearray()

    def _collect(self) -> None:
        lib.ls_ingest_take(self._h, self._take, self._take_len, self._take + 1,
                           self._take_len + 1)
        if self._take_len[0]:
            self._records += ffi.buffer(self._take[0], self._take_len[0])
        if self._take_len[1]:
            self._raw += ffi.buffer(self._take[1], self._take_len[1])

    def _fail(self, rc: int) -> None:
        _check(rc, ffi.string(lib.ls_ingest_get_error(self._h)).decode("utf-8", "replace"))

    def feed(self, data) -> None:
        self._feed(lib.ls_ingest_feed, data)

    def feed_recipe(self, recipe: bytes) -> None:
        """Feeds the stream a recipe describes (see ls_ingest_feed_recipe; the
        partial pull's Rebuilt writes them): bytes, and objects of the store."""
        self._feed(lib.ls_ingest_feed_recipe, recipe)

    def _feed(self, call, data) -> None:
        with self._lock:
            rc = call(self._h, ffi.from_buffer(data), len(data))
            # Taken even on failure: the records of objects written before it say what a
            # failed import must remove.
            self._collect()
            if rc:
                self._fail(rc)

    def records_so_far(self) -> bytes:
        """Every record produced so far, also after finish: what a failed or interrupted
        layer got to (an interrupt may come between a call and the take that follows it)."""
        with self._lock:
            if self._h is not None:
                self._collect()
            return bytes(self._records)

    def finish(self) -> IngestResult:
        with self._lock:
            stats = ffi.new("ls_ingest_stats *")
            rc = lib.ls_ingest_finish(self._h, stats)
            if rc:
                self._fail(rc)
            self._collect()
            result = IngestResult(
                IngestStats(
                    diff_id="sha256:" + ffi.buffer(stats.diff_id)[:].hex(),
                    stream_bytes=stats.stream_bytes, entries=stats.entries,
                    files=stats.files, file_bytes=stats.file_bytes, new_objects=stats.new_objects,
                    new_bytes=stats.new_bytes),
                bytes(self._records), bytes(self._raw))
            self._raw = bytearray()
            return result

    def close(self) -> None:
        with self._lock:
            if self._h is not None:
                ffi.release(self._h)
                self._h = None


CHUNK = 1 << 20


def ingest_stream(stream: BinaryIO, store: ObjectStore | None = None,
                  chunk: int = CHUNK) -> IngestResult:
    """Ingests a whole layer stream read in chunk-sized pieces into one reused buffer."""
    ingest = LayerIngest(store)
    try:
        buf = bytearray(chunk)
        view = memoryview(buf)
        readinto = getattr(stream, "readinto", None)
        while True:
            if readinto is not None:
                n = readinto(buf)
                if not n:
                    break
                ingest.feed(view[:n])
            else:
                data = stream.read(chunk)
                if not data:
                    break
                ingest.feed(data)
        return ingest.finish()
    finally:
        ingest.close()
