"""Exceptions raised by layerstore.

Each class inherits both LayerstoreError and the builtin a caller would catch anyway: a
malformed archive is a ValueError, a failed system call an OSError with its errno.
"""

import errno as _errno
import os as _os

__all__ = [
    "LayerstoreError",
    "CorruptArchive",
    "TruncatedArchive",
    "UnsafePath",
    "LimitExceeded",
    "UnsupportedFormat",
    "DigestMismatch",
    "MissingBlob",
    "InvalidReference",
    "InvalidPlatform",
    "PlatformMismatch",
    "ImageNotFound",
    "LayerNotFound",
    "StoreLocked",
    "StoreIOError",
    "MountError",
    "PathNotFound",
    "NotADirectory",
    "IsADirectory",
    "SymlinkLoop",
    "NotAFile",
    "HostPathError",
    "HostPathNotFound",
]


class LayerstoreError(Exception):
    """Base class of every error layerstore raises on purpose."""


class CorruptArchive(LayerstoreError, ValueError):
    """The archive or layer is malformed: bad checksum, number field, PAX record, ..."""


class TruncatedArchive(CorruptArchive):
    """The stream ended inside a header or inside file content."""


class UnsafePath(CorruptArchive):
    """A path or hardlink target leaves the image root."""


class LimitExceeded(CorruptArchive):
    """A name, extended header or sparse map is beyond what layerstore accepts."""


class UnsupportedFormat(LayerstoreError, ValueError):
    """Valid input that layerstore cannot represent (multi-volume tar, unknown format, ...)."""


class DigestMismatch(CorruptArchive):
    """Content does not hash to the digest that names it."""


class MissingBlob(CorruptArchive):
    """The archive's metadata names a file or blob the archive does not hold."""


class InvalidReference(LayerstoreError, ValueError):
    """Not a valid image reference (name:tag, sha256:<id> or an id prefix)."""


class InvalidPlatform(LayerstoreError, ValueError):
    """Not a platform: os[/arch[/variant]] with an os and an architecture the OCI image index
    names (Go's GOOS and GOARCH values)."""


class PlatformMismatch(UnsupportedFormat):
    """The archive holds no image for the platform asked for."""


class ImageNotFound(LayerstoreError, LookupError):
    """No image matches the reference."""


class LayerNotFound(LayerstoreError, LookupError):
    """No layer has that diffID."""


class StoreLocked(LayerstoreError):
    """Another process held the store lock for longer than we were willing to wait."""


class StoreIOError(LayerstoreError, OSError):
    """A system call failed while reading or writing the store; errno says why."""


class PathNotFound(LayerstoreError, FileNotFoundError):
    """No such path in the image (reading without checkout: stat, open, ls)."""


class NotADirectory(LayerstoreError, NotADirectoryError):
    """A path component inside the image is not a directory."""


class IsADirectory(LayerstoreError, IsADirectoryError):
    """Content was asked of a directory of the image."""


class SymlinkLoop(LayerstoreError, OSError):
    """More than 40 symbolic links while resolving a path of the image (errno ELOOP)."""


class NotAFile(LayerstoreError, OSError):
    """Content was asked of a device node or fifo: the store records it but holds no bytes."""


class MountError(LayerstoreError, OSError):
    """An overlay mount or unmount failed, or cannot be made here (not root); errno says why
    when a system call refused."""


class HostPathError(LayerstoreError, OSError):
    """A path of this machine that the user named (an archive to read, a file or directory to
    write, the store root) cannot be used; errno says why."""


class HostPathNotFound(HostPathError, FileNotFoundError):
    """That path, or the directory it should be made in, does not exist."""


def host_path_error(exc: OSError, path, action: str) -> HostPathError:
    """exc, an OSError about path (or about a temporary file beside it), as the error the user
    sees: "cannot <action> <path>: <reason>", naming their path and never a temporary one."""
    code = exc.errno if exc.errno is not None else _errno.EIO
    return host_error(code, f"cannot {action} {_os.fsdecode(path) or repr('')}: "
                            f"{_os.strerror(code)}")


def host_error(code: int, message: str) -> HostPathError:
    """A HostPathError (HostPathNotFound for ENOENT) with errno code and message as it is."""
    err = (HostPathNotFound if code == _errno.ENOENT else HostPathError)(message)
    # errno set after construction keeps str(err) the plain message the CLI prints.
    err.errno = code
    return err
