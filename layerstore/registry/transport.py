"""HTTP for the registry client: one urllib3 PoolManager, TLS per host, retries, counters, and
a blob reader that verifies what it returns and resumes a broken download with Range.

Nothing here knows the v2 API or how to authenticate: client.py builds the requests and
auth.py the Authorization header; this module moves bytes and decides when to try again.

Policy, as Docker, containerd and go-containerregistry have it:
- A host is *insecure* when it is localhost or a loopback address (127.0.0.0/8, ::1; Docker
  treats these as insecure by default), when it is named by --insecure-registry (HOST,
  HOST:PORT or a CIDR of IP addresses), or for every host with --tls-verify=false.  An insecure
  host is tried over HTTPS without verifying the certificate first and, when its port does
  not speak TLS, over plain HTTP (remembered per host).  Every other host is HTTPS, verified.
- Connection errors and 408/429/500/502/503/504 are retried with exponential backoff and
  jitter (1 s, 3 s, 9 s, +-10 %), or after the Retry-After the server asked for; a wait
  longer than max_retry_after is not slept through: the response goes back to the caller,
  which names the limit and the time to retry (errors.RateLimited).
- Redirects are followed for GET and HEAD (blob downloads go to a CDN).  urllib3 drops
  Authorization (and Cookie) on a redirect to another host, scheme or port, so a registry's
  token never reaches the CDN; tests/test_registry_transport.py checks that it does.
- Request bodies are resent on a retry only when they can be: bytes, or a file that seeks.
"""

from __future__ import annotations

import email.utils
import hashlib
import io
import ipaddress
import random
import re
import ssl
import threading
import time
import warnings
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.exceptions import (InsecureRequestWarning, MaxRetryError, ProtocolError,
                                ResponseError, SSLError)
from urllib3.exceptions import TimeoutError as _Urllib3Timeout
from urllib3.util.retry import Retry

from .. import errors
from .._version import __version__

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_REDIRECTS = 5
USER_AGENT = f"layerstore/{__version__}"
# Small responses (JSON errors, token answers) are read whole up to this size; a manifest
# or config asks for its own cap.
SMALL_BODY = 1 << 20
READ_CHUNK = 256 << 10

# Errors of a connection rather than of the server's answer: worth another try.
_CONNECTION_ERRORS = (ProtocolError, _Urllib3Timeout, SSLError, OSError,
                      urllib3.exceptions.NewConnectionError)


def split_host(host: str) -> tuple[str, int | None]:
    """"registry:5000" -> ("registry", 5000); "[::1]:5000" -> ("::1", 5000); no port -> None."""
    if host.startswith("["):
        end = host.find("]")
        name, rest = host[1:end], host[end + 1:]
        return name, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        return name, int(port)
    return host, None


def ip_of(hostname: str):
    """hostname as an ipaddress object, or None when it is a name."""
    try:
        return ipaddress.ip_address(hostname)
    except ValueError:
        return None


def is_loopback(hostname: str) -> bool:
    """localhost or a loopback address literal.  Names are not resolved (as containerd)."""
    ip = ip_of(hostname)
    return hostname.lower() in ("localhost", "localhost.") or (ip is not None
                                                                and ip.is_loopback)


@dataclass
class Counters:
    """What a client did on the wire, for --json reports.  Shared by threads."""

    requests: int = 0           # HTTP requests sent, each redirect hop counted
    bytes_received: int = 0     # body bytes read
    bytes_sent: int = 0         # body bytes sent
    retries: int = 0            # requests sent again after an error or a 408/429/5xx
    resumes: int = 0            # downloads continued with Range after a broken connection
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def snapshot(self) -> dict:
        with self._lock:
            return {"requests": self.requests, "bytes_received": self.bytes_received,
                    "bytes_sent": self.bytes_sent, "retries": self.retries,
                    "resumes": self.resumes}


class Response:
    """A response: status, headers (case-insensitive), the URL it came from after redirects,
    and either data (read whole) or, for a streamed one, read()/close()."""

    def __init__(self, raw, url: str, data: bytes | None):
        self.status: int = raw.status
        self.headers = raw.headers
        self.url = url
        self.data = data
        self._raw = raw

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def read(self, n: int) -> bytes:
        """Up to n bytes of a streamed body (fewer only at its end); raises urllib3's errors
        when the connection breaks."""
        return self._raw.read(n)

    def close(self) -> None:
        """Give the connection back when the body was read to its end, else drop it."""
        if self._raw.isclosed():
            self._raw.release_conn()
        else:
            self._raw.close()
            self._raw.release_conn()


class _Pools(urllib3.PoolManager):
    """One PoolManager whose HTTPS pools for insecure hosts do not verify certificates.
    Two TLS contexts, each made once, on first use: one verifying with ca_file or the
    system's CA certificates, one verifying nothing.  Left to itself urllib3 loads the CA
    certificates again for each connection (30 ms each), even for an insecure host, which
    every run first tries with TLS."""

    def __init__(self, insecure, ca_file: str | None, **kw):
        super().__init__(**kw)
        self._insecure = insecure
        self._ca_file = ca_file
        self._contexts: dict[bool, ssl.SSLContext] = {}
        self._lock = threading.Lock()

    def _context(self, verify: bool) -> ssl.SSLContext:
        with self._lock:
            if verify not in self._contexts:
                if verify:
                    context = ssl.create_default_context(cafile=self._ca_file)
                else:
                    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                self._contexts[verify] = context
            return self._contexts[verify]

    def connection_from_host(self, host, port=None, scheme="http", pool_kwargs=None):
        if scheme == "https" and host:
            if self._insecure(host, port):
                pool_kwargs = {**(pool_kwargs or {}), "cert_reqs": "CERT_NONE",
                               "assert_hostname": False, "ssl_context": self._context(False)}
            else:
                pool_kwargs = {**(pool_kwargs or {}), "ssl_context": self._context(True)}
        return super().connection_from_host(host, port, scheme, pool_kwargs)


def _quiet_insecure_warning(hostname: str) -> None:
    """urllib3 warns on every unverified HTTPS request; for a host the user declared insecure
    (or a loopback one) that is the point, so the warning is silenced for that host only.
    (Added again on each use: filterwarnings replaces an equal filter, and a caller's
    catch_warnings may have dropped the last one.)"""
    warnings.filterwarnings(
        "ignore", category=InsecureRequestWarning,
        message=re.escape(f"Unverified HTTPS request is being made to host '{hostname}'"))


def _path_of(url: str) -> str:
    """A URL as it may appear in a message: no query string (upload state, CDN signatures)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


class Transport:
    """HTTP to registries, token servers and CDNs: one connection pool per client.

    insecure_registries: HOST, HOST:PORT or CIDR entries (--insecure-registry); tls_verify
    False makes every host insecure (--tls-verify=false); ca_file a PEM bundle to verify
    with instead of the system's.  sleep is time.sleep; tests pass their own.
    """

    def __init__(self, *, insecure_registries=(), tls_verify: bool = True,
                 ca_file: str | None = None, connect_timeout: float = 15.0,
                 read_timeout: float = 60.0, retries: int = 3, backoff: float = 1.0,
                 backoff_factor: float = 3.0, max_backoff: float = 30.0,
                 max_retry_after: float = 60.0, sleep=time.sleep, user_agent: str = USER_AGENT):
        self.tls_verify = tls_verify
        self.retries = retries
        self.backoff, self.backoff_factor, self.max_backoff = backoff, backoff_factor, max_backoff
        self.max_retry_after = max_retry_after
        self.sleep = sleep
        self.counters = Counters()
        self._insecure_hosts: set[str] = set()
        self._insecure_nets = []
        for entry in insecure_registries:
            try:
                self._insecure_nets.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self._insecure_hosts.add(entry.lower())
        self._schemes: dict[str, str] = {}      # insecure host -> the scheme that answered
        self._timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self._pool = _Pools(self._pool_insecure, ca_file, cert_reqs="CERT_REQUIRED",
                            headers={"User-Agent": user_agent}, maxsize=8)

    # -- host policy -------------------------------------------------------------------

    def insecure(self, host: str) -> bool:
        """Whether host ("name", "name:port", "[v6]:port") may skip TLS verification and
        fall back to plain HTTP."""
        hostname, port = split_host(host)
        return self._pool_insecure(hostname, port)

    def _pool_insecure(self, hostname: str, port: int | None) -> bool:
        hostname = hostname.strip("[]").lower()
        if not self.tls_verify or is_loopback(hostname):
            return True
        ip = ip_of(hostname)
        if ip is not None and any(ip in net for net in self._insecure_nets):
            return True
        shown = f"[{hostname}]" if ip is not None and ip.version == 6 else hostname
        return shown in self._insecure_hosts or (
            port is not None and f"{shown}:{port}" in self._insecure_hosts)

    def url(self, host: str, path: str) -> str:
        """The URL of path on a registry host, in the scheme that host answers on."""
        return f"{self._schemes.get(host, 'https')}://{host}{path}"

    # -- requests ----------------------------------------------------------------------

    def backoff_delay(self, attempt: int) -> float:
        """The wait before retry number attempt + 1: exponential, capped, +-10 % jitter."""
        delay = min(self.max_backoff, self.backoff * self.backoff_factor ** attempt)
        return delay * (1 + 0.1 * (2 * random.random() - 1))

    def request(self, method: str, url: str, *, headers=None, body=None, stream: bool = False,
                limit: int = SMALL_BODY, redirect: bool | None = None,
                retry: bool = True) -> Response:
        """Sends a request and returns the response, retrying as the module says.

        The body of a response that is not streamed is read here, at most limit bytes: a
        2xx response with more raises errors.LimitExceeded; others are cut.  A streamed
        response must be closed by the caller.  Raises errors.RegistryUnreachable when the
        host cannot be reached after the retries.
        """
        if redirect is None:
            redirect = method in ("GET", "HEAD")
        start = _body_start(body)
        attempt = 0
        while True:
            try:
                resp = self._attempt(method, url, headers, body, redirect, stream, limit)
            except errors.LayerstoreError:
                raise
            except _CONNECTION_ERRORS as exc:
                if self._plain_http_instead(url, exc):
                    url = "http://" + url[len("https://"):]
                    _rewind(body, start)
                    continue
                if not retry or attempt >= self.retries or not _rewind(body, start):
                    raise _unreachable(exc, method, url, self) from None
                wait = None
            else:
                if (resp.status not in RETRY_STATUSES or not retry or attempt >= self.retries
                        or not _rewind(body, start)):
                    return resp
                wait = retry_after(resp.header("Retry-After"))
                if wait is not None and wait > self.max_retry_after:
                    return resp         # not slept through: the caller says when to retry
                resp.close()
            self.counters.add(retries=1)
            self.sleep(self.backoff_delay(attempt) if wait is None else wait)
            attempt += 1

    def _attempt(self, method, url, headers, body, redirect, stream, limit) -> Response:
        resp = self._send(method, url, headers, body, redirect)
        host = urlsplit(url).netloc
        if url.startswith("https://") and host not in self._schemes and self.insecure(host):
            self._schemes[host] = "https"
        final_url = _final_url(url, resp)
        if stream:
            return Response(resp, final_url, None)
        data = _read_capped(resp, limit, 200 <= resp.status < 300, method, final_url)
        self.counters.add(bytes_received=len(data))
        return Response(resp, final_url, data)

    def _plain_http_instead(self, url: str, exc: Exception) -> bool:
        """Whether a failed HTTPS request goes to an insecure host whose port does not speak
        TLS: then it speaks plain HTTP, as Docker tries it (remembered for the host)."""
        host = urlsplit(url).netloc
        if (url.startswith("https://") and host not in self._schemes and self.insecure(host)
                and isinstance(exc, (SSLError, ProtocolError))):
            self._schemes[host] = "http"
            return True
        return False

    def _send(self, method, url, headers, body, redirect):
        if url.startswith("https://"):
            hostname, port = split_host(urlsplit(url).netloc)
            if self._pool_insecure(hostname.strip("[]"), port):
                _quiet_insecure_warning(hostname.strip("[]"))
        try:
            resp = self._pool.urlopen(
                method, url, headers=headers, body=body, redirect=redirect,
                retries=Retry(total=None, connect=0, read=0, status=0, other=0,
                              redirect=MAX_REDIRECTS if redirect else 0),
                preload_content=False, decode_content=False, timeout=self._timeout)
        except MaxRetryError as exc:
            if isinstance(exc.reason, ResponseError):       # too many redirects
                raise errors.RegistryError(f"{method} {_path_of(url)}: more than "
                                           f"{MAX_REDIRECTS} redirects") from None
            raise exc.reason from None
        hops = len(resp.retries.history) if resp.retries else 0
        self.counters.add(requests=1 + hops, bytes_sent=_body_size(body, headers))
        return resp

    def close(self) -> None:
        self._pool.clear()


def _body_start(body):
    if body is None or isinstance(body, (bytes, bytearray, memoryview)):
        return 0
    try:
        return body.tell() if body.seekable() else None
    except (AttributeError, OSError):
        return None


def _rewind(body, start) -> bool:
    """Makes body ready to be sent again; False when it cannot be (a stream, an iterator)."""
    if body is None or isinstance(body, (bytes, bytearray, memoryview)):
        return True
    if start is None:
        return False
    body.seek(start)
    return True


def _body_size(body, headers) -> int:
    if body is None:
        return 0
    if isinstance(body, (bytes, bytearray, memoryview)):
        return len(body)
    length = (headers or {}).get("Content-Length")
    return int(length) if length and str(length).isdigit() else 0


def _final_url(url: str, resp) -> str:
    for hop in (resp.retries.history if resp.retries else ()):
        if hop.redirect_location:
            url = urljoin(url, hop.redirect_location)
    return url


def _read_capped(resp, limit: int, success: bool, method: str, url: str) -> bytes:
    length = resp.headers.get("Content-Length")
    if success and method != "HEAD" and length and length.isdigit() and int(length) > limit:
        resp.close()
        raise errors.LimitExceeded(f"{method} {_path_of(url)}: the answer is {int(length)} "
                                   f"bytes, over the {limit} layerstore accepts")
    data = resp.read(limit + 1)
    if len(data) > limit:
        resp.close()
        if success:
            raise errors.LimitExceeded(f"{method} {_path_of(url)}: the answer is over the "
                                       f"{limit} bytes layerstore accepts")
        return data[:limit]
    resp.release_conn()
    return data


def retry_after(value: str | None, now=time.time) -> float | None:
    """Retry-After as seconds to wait: delay-seconds or an HTTP date; None when absent or
    unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now())


def _unreachable(exc, method: str, url: str, transport: Transport) -> errors.RegistryUnreachable:
    host = urlsplit(url).netloc
    reason = str(getattr(exc, "reason", None) or exc) or type(exc).__name__
    # urllib3 prefixes its own object reprs: keep the part a person can act on.
    reason = re.sub(r"<urllib3[^>]*>:?\s*", "", reason).strip(" :()") or type(exc).__name__
    hint = ""
    if isinstance(exc, SSLError) and "CERTIFICATE_VERIFY_FAILED" in reason.upper():
        hint = (f" (to use {host} without verifying its certificate: --tls-verify=false "
                f"or --insecure-registry {host})")
    tries = "" if transport.retries == 0 else f" after {transport.retries + 1} attempts"
    return errors.RegistryUnreachable(f"cannot reach {host}{tries}: {method} {_path_of(url)}: "
                                      f"{reason}{hint}")


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)\Z")
_DIGEST = re.compile(r"(sha256):([0-9a-f]{64})\Z")


class BlobReader(io.RawIOBase):
    """A blob's bytes as they arrive, checked against its descriptor.

    read()/readinto() never return bytes past size, and the read that completes the blob
    raises errors.DigestMismatch instead of returning when the sha256 is not the digest, so
    a consumer that reads to the end has read a verified blob (and one that stops early has
    verified nothing).  When the connection breaks, the download goes on from the next byte
    with Range: bytes=N- and accepts only a 206 whose Content-Range starts at N: a 200
    means the server ignored Range, and the reader raises errors.RangeUnsupported rather
    than hand out bytes twice.  bytes_received, requests and resumes count what it did.

    open_at(offset) sends the GET (with Range when offset > 0) and returns a streamed
    Response with status 200 or 206; the client supplies it, with its authentication.

    restart: when a server ignores Range (200), read its whole blob again and skip the bytes
    already handed out (counted in bytes_received and restarts), instead of raising.
    """

    def __init__(self, open_at, digest: str, size: int | None, transport: Transport,
                 label: str, restart: bool = False):
        super().__init__()
        m = _DIGEST.match(digest)
        if not m:
            raise errors.CorruptArchive(f"invalid digest {digest[:100]!r}: expected "
                                        "sha256:<64 lowercase hex digits>")
        self.digest, self.size, self.label = digest, size, label
        self.bytes_received = 0
        self.requests = 0
        self.resumes = 0
        self.restarts = 0
        self.verified = False
        self._restart = restart
        self._failed: Exception | None = None    # raised again by every later read
        self._open_at, self._transport = open_at, transport
        self._hash = hashlib.sha256()
        self._offset = 0
        self._stalls = 0            # consecutive breaks without a byte in between
        self._resp = self._open(0)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.closed:
            raise ValueError("read of a closed BlobReader")
        if self._failed is not None:
            raise self._failed
        view = memoryview(b).cast("B")
        while True:
            if self.size is not None and self._offset >= self.size:
                return 0
            if self._resp is None:
                self._resp = self._open(self._offset)
            want = min(len(view), READ_CHUNK)
            if self.size is not None:
                want = min(want, self.size - self._offset)
            try:
                data = self._resp.read(want)
            except _CONNECTION_ERRORS:
                self._broken()
                continue
            if not data:
                if self.size is None:
                    self.size = self._offset
                    self._check_digest()
                    return 0
                self._broken()          # ended early without an error: same as a break
                continue
            self._stalls = 0
            self._offset += len(data)
            self.bytes_received += len(data)
            self._transport.counters.add(bytes_received=len(data))
            self._hash.update(data)
            if self._offset == self.size:
                self._check_digest()
            view[:len(data)] = data
            return len(data)

    def _open(self, offset: int) -> Response:
        resp = self._open_at(offset)
        self.requests += 1
        try:
            if offset and resp.status == 200 and self._restart:
                self._skip(resp, offset)
            else:
                self._check_answer(resp, offset)
        except BaseException:
            resp.close()
            raise
        return resp

    def _skip(self, resp: Response, offset: int) -> None:
        """The server sent the whole blob again: read past the offset bytes handed out."""
        length = resp.header("Content-Length")
        if length and length.isdigit() and self.size is not None and int(length) != self.size:
            raise errors.DigestMismatch(f"{self.label}: the registry sends {length} bytes, "
                                        f"the descriptor says {self.size}")
        self.restarts += 1
        left = offset
        try:
            while left:
                data = resp.read(min(left, READ_CHUNK))
                if not data:
                    raise ProtocolError("the answer ended early")
                left -= len(data)
                self.bytes_received += len(data)
                self._transport.counters.add(bytes_received=len(data))
        except _CONNECTION_ERRORS as exc:
            raise errors.RegistryUnreachable(
                f"{self.label}: the download broke off after {self._offset} of {self.size} "
                f"bytes, and the server, which ignores Range, broke off again: {exc}") from None

    def _check_answer(self, resp: Response, offset: int) -> None:
        length = resp.header("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if offset == 0:
            if resp.status != 200:
                raise errors.RegistryError(f"{self.label}: answered {resp.status} to a GET of "
                                           "the whole blob", status=resp.status)
            if self.size is None:
                self.size = length
            elif length is not None and length != self.size:
                raise errors.DigestMismatch(f"{self.label}: the registry sends {length} "
                                            f"bytes, the descriptor says {self.size}")
            return
        m = _CONTENT_RANGE.match(resp.header("Content-Range") or "")
        if resp.status != 206 or not m or int(m.group(1)) != offset:
            what = ("ignored the Range (200, the whole blob again)" if resp.status == 200 else
                    f"answered {resp.status} Content-Range "
                    f"{(resp.header('Content-Range') or 'none')!r}")
            raise errors.RangeUnsupported(
                f"{self.label}: the download broke off after {offset} of {self.size} bytes "
                f"and cannot resume: the server {what} to Range: bytes={offset}-",
                status=resp.status)
        if m.group(3) != "*" and self.size is not None and int(m.group(3)) != self.size:
            raise errors.DigestMismatch(f"{self.label}: the registry says the blob is "
                                        f"{m.group(3)} bytes, the descriptor says {self.size}")

    def _broken(self) -> None:
        """The connection broke: close it, and either let readinto reopen at the current
        offset (after a backoff when nothing came since the last break) or give up."""
        self._resp.close()
        self._resp = None
        if self._stalls >= self._transport.retries:
            raise errors.RegistryUnreachable(
                f"{self.label}: the download broke off after {self._offset} of {self.size} "
                f"bytes, and {self._stalls} attempts to resume from there brought nothing")
        if self._stalls:
            self._transport.sleep(self._transport.backoff_delay(self._stalls - 1))
        self._stalls += 1
        self.resumes += 1
        self._transport.counters.add(resumes=1)

    def _check_digest(self) -> None:
        got = "sha256:" + self._hash.hexdigest()
        if got != self.digest:
            self._failed = errors.DigestMismatch(f"{self.label}: the blob's {self._offset} "
                                                 f"bytes hash to {got}")
            raise self._failed
        self.verified = True

    def close(self) -> None:
        if self._resp is not None:
            self._resp.close()
            self._resp = None
        super().close()
