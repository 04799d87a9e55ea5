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
    "InvalidTOC",
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
    "RegistryError",
    "RegistryUnreachable",
    "RangeUnsupported",
    "AuthenticationRequired",
    "AccessDenied",
    "RateLimited",
    "ManifestUnknown",
    "BlobUnknown",
    "UnsupportedManifest",
    "CredentialError",
    "ContainerError",
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


class InvalidTOC(CorruptArchive):
    """A zstd:chunked or eStargz layer's table of contents or tar-split is malformed, over
    a size cap, or not what its digest says."""


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


class RegistryError(LayerstoreError, OSError):
    """A registry refused or failed a request.  status is the HTTP status and code the error
    code of the registry's error JSON (MANIFEST_INVALID, DIGEST_INVALID, ...), when there was
    one.  The message names the registry and the request, never a credential or a query
    string."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.code = status, code


class RegistryUnreachable(RegistryError, ConnectionError):
    """No answer from the registry after the retries: refused, reset, timed out, or a TLS
    handshake that failed (a certificate that does not verify)."""


class RangeUnsupported(RegistryError, ConnectionError):
    """A download broke off and could not resume: the server answered Range: bytes=N- with
    anything but 206 Partial Content from byte N (a 200 means it ignored the Range)."""


class AuthenticationRequired(RegistryError, PermissionError):
    """The registry or its token server wants credentials that were missing or refused (401),
    or granted a token without the access asked for."""


class AccessDenied(RegistryError, PermissionError):
    """The registry knows who we are and refuses the operation (403 DENIED)."""


class RateLimited(RegistryError):
    """429 Too Many Requests, still there after the retries.  limit and remaining are the
    registry's ratelimit-limit and ratelimit-remaining headers as sent ("100;w=21600"), and
    retry_after the seconds its Retry-After header asked for (None when it sent none)."""

    def __init__(self, message: str, *, status: int | None = 429, code: str | None = None,
                 limit: str | None = None, remaining: str | None = None,
                 retry_after: float | None = None):
        super().__init__(message, status=status, code=code)
        self.limit, self.remaining, self.retry_after = limit, remaining, retry_after


class ManifestUnknown(RegistryError, LookupError):
    """The registry has no such manifest (tag or digest), or no such repository."""


class BlobUnknown(RegistryError, LookupError):
    """The registry has no such blob in that repository."""


class UnsupportedManifest(UnsupportedFormat):
    """A manifest layerstore does not pull: Docker schema 1, an OCI artifact, or a media type
    that is neither an image manifest nor an index."""


class CredentialError(LayerstoreError, ValueError):
    """Credentials could not be read: an auth file that is not valid JSON or base64, a
    credential helper that is missing or failed, a --creds that is not USER:PASSWORD.  The
    message names the file or helper, never a secret."""


class ContainerError(LayerstoreError):
    """A bundle or container cannot be made or run: an image with no command and none given,
    a user or group the image does not have, no OCI runtime, a container name in use, a
    directory that is not a bundle layerstore made."""


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
