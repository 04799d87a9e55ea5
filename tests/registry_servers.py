"""Registries and their neighbours on 127.0.0.1, for the registry client's tests and, later,
pull and push.

- RegistryServer: Debian's docker-registry (distribution 2.8) as a child process on a free
  port with its own config and storage, open, with htpasswd, with token auth, with TLS, or
  redirecting blob GETs to a "CDN"; waited for until /v2/ answers, stopped by its PID.
- TokenServer: a token server like Docker Hub's (ES256 JWTs that registry 2.8 verifies against
  a certificate bundle): anonymous users get pull, known users pull and push, an identity
  token works through the OAuth2 POST.  It logs every request and can hand out tokens that
  expired more than the registry's 60 s leeway ago.
- CDN: serves a registry's storage files where the registry's redirect middleware points
  blob GETs, and records every request that carries Authorization (a test fails on it).
- FaultProxy: an HTTP proxy in front of a registry that logs each request and, for requests
  that match a rule, answers a status of its own (429 + Retry-After, 5xx, 416, 401),
  resets the connection after N bytes of the body, forwards without the Range header (a
  server that ignores Range), replaces the body, sets headers, or holds an answer after N
  bytes of its body until the test releases it (a download caught mid-way).
- Seeds: small images built here as OCI layouts and pushed with `skopeo copy` (Docker v2
  schema 2 and OCI), a two-platform index with a BuildKit-style attestation entry and an OCI
  artifact pushed by hand; corpus images as Docker gzip and OCI zstd (slow: marked so).

Fixtures are session-scoped servers plus function-scoped views that reset logs and faults;
tests/conftest.py registers this module as a plugin, so any test can ask for them.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tarfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REGISTRY_BIN = shutil.which("docker-registry") or shutil.which("registry")
SERVICE = "layerstore-test"
ISSUER = "layerstore-test-issuer"
USER, PASSWORD = "alice", "s3cret-Pa55word"
IDENTITY_TOKEN = "identity-TOKEN-for-alice-0123456789"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def need_registry():
    if REGISTRY_BIN is None:
        pytest.skip("needs docker-registry (apt-get install docker-registry)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_answers(host: str, proc: subprocess.Popen | None = None, tls: bool = False,
                       timeout: float = 20.0) -> None:
    """Polls GET /v2/ until any HTTP answer comes back."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server for {host} exited with {proc.returncode}")
        try:
            conn = (http.client.HTTPSConnection(host, timeout=2, context=_unverified())
                    if tls else http.client.HTTPConnection(host, timeout=2))
            conn.request("GET", "/v2/")
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _unverified():
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def stop_pid(proc: subprocess.Popen) -> None:
    """Stops a child we started, by its PID: SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


# -- keys and certificates ------------------------------------------------------------------

def _crypto():
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
    except ImportError:
        pytest.skip("needs the cryptography package (token server, TLS certificates)")
    return x509, hashes, serialization, ec


def make_cert(workdir: Path, names=("localhost",), ips=("127.0.0.1",)):
    """A self-signed P-256 certificate and key (PEM files) for names and ips; returns
    (cert_path, key_path, private_key)."""
    import datetime
    import ipaddress
    x509, hashes, serialization, ec = _crypto()
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    sans = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(i))
                                               for i in ips]
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    workdir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = workdir / "cert.pem", workdir / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path, key


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def libtrust_kid(public_key) -> str:
    """docker/libtrust's key id: base32 of the first 240 bits of sha256(DER SPKI), in groups
    of four joined by colons; registry 2.8 finds the signing key by it."""
    from cryptography.hazmat.primitives import serialization
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(b32[i:i + 4] for i in range(0, len(b32), 4))


# -- small HTTP servers in threads ----------------------------------------------------------

class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        import sys
        if not isinstance(sys.exc_info()[1], ConnectionError):   # a client that hung up
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner = None        # set on the subclass made per server

    def log_message(self, *args):       # quiet
        pass

    def handle(self):
        # A client that tries TLS first (an insecure registry) sends a handshake: close at
        # once, as a plain-http Go server answers at once, instead of waiting for a line.
        try:
            if self.connection.recv(1, socket.MSG_PEEK) == b"\x16":
                return
        except OSError:
            return
        super().handle()

    def body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()      # a streamed upload (push's PATCH)
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass        # trailers
                    return bytes(data)
                data += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def reply(self, status: int, body: bytes = b"", headers=None) -> None:
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class ThreadServer:
    """An HTTP server on a free 127.0.0.1 port, serving from a daemon thread."""

    handler = _Handler

    def __init__(self, bind: str = "127.0.0.1"):
        cls = type(f"{type(self).__name__}Handler", (self.handler,), {"owner": self})
        self.server = _Server((bind, 0), cls)
        self.port = self.server.server_address[1]
        self.host = f"{bind}:{self.port}"
        self.url = f"http://{self.host}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- token server ---------------------------------------------------------------------------

class _TokenHandler(_Handler):
    def do_GET(self):
        self.owner.answer(self, "GET", self.headers.get("Authorization"), None)

    def do_POST(self):
        form = urllib.parse.parse_qs(self.body().decode())
        self.owner.answer(self, "POST", self.headers.get("Authorization"), form)


class TokenServer(ThreadServer):
    """Docker's token protocol, ES256-signed, for registry 2.8 (research/registry.md A.2).

    users: name -> password (GET with Basic); identity_tokens: token -> name (POST
    grant_type=refresh_token).  Anonymous users get pull only, known users what they ask.
    Knobs, reset between tests: expires_in (what the answer says; None leaves it out),
    expired (how many of the next tokens are issued already expired by 120 s, past the
    registry's 60 s leeway), field ("token" or "access_token").  log: one dict per request.
    """

    handler = _TokenHandler

    def __init__(self, workdir: Path):
        self.cert, _, self._key = make_cert(workdir / "token", names=("token-issuer",), ips=())
        self.kid = libtrust_kid(self._key.public_key())
        self.users = {USER: PASSWORD}
        self.identity_tokens = {IDENTITY_TOKEN: USER}
        self.log: list[dict] = []
        self.reset()
        super().__init__()
        self.realm = f"{self.url}/token"

    def reset(self) -> None:
        self.expires_in: int | None = 300
        self.expired = 0
        self.field = "token"
        self.log = []

    def answer(self, h: _Handler, method: str, authorization: str | None, form) -> None:
        parts = urllib.parse.urlsplit(h.path)
        query = urllib.parse.parse_qs(parts.query)
        user = None
        if form is not None:                       # OAuth2 refresh-token grant
            if form.get("grant_type") != ["refresh_token"]:
                return h.reply(400, b'{"error":"unsupported_grant_type"}')
            user = self.identity_tokens.get((form.get("refresh_token") or [""])[0])
            if user is None:
                return h.reply(401, b'{"error":"invalid_grant"}')
            scopes = " ".join(form.get("scope", [])).split()
            service = (form.get("service") or [""])[0]
        else:
            if authorization:
                scheme, _, value = authorization.partition(" ")
                name, _, password = base64.b64decode(value).decode().partition(":")
                if scheme != "Basic" or self.users.get(name) != password:
                    self.log.append({"method": method, "user": name, "refused": True})
                    return h.reply(401, b'{"details":"incorrect username or password"}',
                                   {"WWW-Authenticate": 'Basic realm="token"'})
                user = name
            scopes = query.get("scope", [])
            service = (query.get("service") or [""])[0]
        self.log.append({"method": method, "user": user, "scopes": list(scopes),
                         "service": service, "authorization": bool(authorization),
                         "form": sorted(form) if form else None})
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            wanted = actions.split(",")
            granted = [a for a in wanted if a == "pull" or (user and a in ("push", "delete"))]
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        if self.expired:
            self.expired -= 1
            now -= 600
        lifetime = self.expires_in or 60
        claims = {"iss": ISSUER, "sub": user or "", "aud": service, "exp": now + lifetime,
                  "nbf": now - 1, "iat": now, "jti": os.urandom(8).hex(), "access": access}
        token = self._sign(claims)
        answer = {self.field: token, "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ")}
        if self.expires_in is not None:
            answer["expires_in"] = self.expires_in
        h.reply(200, json.dumps(answer).encode(), {"Content-Type": "application/json"})

    def _sign(self, claims: dict) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
        header = {"typ": "JWT", "alg": "ES256", "kid": self.kid}
        signing_input = (_b64url(json.dumps(header).encode()) + "." +
                         _b64url(json.dumps(claims).encode()))
        r, s = decode_dss_signature(self._key.sign(signing_input.encode(),
                                                   ec.ECDSA(hashes.SHA256())))
        return signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


# -- CDN ------------------------------------------------------------------------------------

class _CDNHandler(_Handler):
    def do_GET(self):
        self.owner.serve(self)

    do_HEAD = do_GET


class CDN(ThreadServer):
    """Serves files under root (a registry's storage) with single Range support.  Every
    request is logged; one with Authorization is also in violations, and gets a 400."""

    handler = _CDNHandler

    def __init__(self, bind: str = "127.0.0.1"):
        self.root: Path | None = None
        self.log: list[dict] = []
        self.violations: list[str] = []
        super().__init__(bind)

    def serve(self, h: _Handler) -> None:
        path = urllib.parse.urlsplit(h.path).path
        auth = h.headers.get("Authorization")
        self.log.append({"method": h.command, "path": path, "authorization": bool(auth),
                         "range": h.headers.get("Range")})
        if auth:
            self.violations.append(f"{h.command} {path} carried Authorization")
            return h.reply(400, b"Authorization sent to the CDN")
        file = (self.root / path.lstrip("/")).resolve()
        if self.root not in file.parents or not file.is_file():
            return h.reply(404)
        data = file.read_bytes()
        m = re.match(r"bytes=(\d+)-(\d*)\Z", h.headers.get("Range") or "")
        if m:
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else len(data) - 1
            return h.reply(206, data[start:end + 1], {
                "Content-Range": f"bytes {start}-{end}/{len(data)}",
                "Content-Type": "application/octet-stream"})
        h.reply(200, data, {"Content-Type": "application/octet-stream"})


# -- fault proxy ----------------------------------------------------------------------------

@dataclass
class Fault:
    """What the proxy does to the next `times` requests matching method and path (a regex
    searched in the path with its query).

    kind: "status" answers status/headers/body itself (after forwarding the request when
    forward is true, so the registry did act on it); "reset" forwards and cuts the
    connection after `after` bytes of the answer's body; "ignore_range" forwards without the
    Range header; "headers" forwards and sets headers of the answer; "body" forwards and
    replaces the answer's body (keeping status and the other headers); "hold" forwards,
    sends `after` bytes of the body, sets held and waits (up to a minute) for release
    before sending the rest.  range: a regex the request's Range header must match (""
    matches requests without one too; "," only multi-range requests).
    """

    kind: str
    method: str
    path: str
    times: int = 1
    status: int = 200
    headers: dict = field(default_factory=dict)
    body: bytes = b""
    after: int = 0
    forward: bool = False
    held: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    range: str = ""


_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"}


class _ProxyHandler(_Handler):
    def _any(self):
        self.owner.forward(self)

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _any


class FaultProxy(ThreadServer):
    """An HTTP proxy to upstream ("127.0.0.1:port") with Faults; log holds one dict per
    request: method, path, range, accept, authorization (bool), content_range, length (of
    the request body), status and location (of the answer)."""

    handler = _ProxyHandler

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.faults: list[Fault] = []
        self.log: list[dict] = []
        self._lock = threading.Lock()
        super().__init__()

    def reset(self) -> None:
        with self._lock:
            self.faults, self.log = [], []

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def _take(self, method: str, path: str, range_: str | None = None) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.times > 0 and f.method == method and re.search(f.path, path) and \
                        (not f.range or re.search(f.range, range_ or "")):
                    f.times -= 1
                    return f
        return None

    def forward(self, h: _Handler) -> None:
        body = h.body()
        fault = self._take(h.command, h.path, h.headers.get("Range"))
        entry = {"method": h.command, "path": h.path, "range": h.headers.get("Range"),
                 "authorization": h.headers.get("Authorization") is not None,
                 "content_range": h.headers.get("Content-Range"), "length": len(body),
                 "accept": h.headers.get("Accept"), "fault": fault.kind if fault else None}
        self.log.append(entry)
        if fault and fault.kind == "status" and not fault.forward:
            entry["status"] = fault.status
            return h.reply(fault.status, fault.body, fault.headers)
        headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP}
        if fault and fault.kind == "ignore_range":
            headers.pop("Range", None)
        conn = http.client.HTTPConnection(self.upstream, timeout=30)
        try:
            conn.request(h.command, h.path, body=body if body or h.command in ("PUT", "POST",
                                                                               "PATCH") else None,
                         headers=headers)
            resp = conn.getresponse()
            if fault and fault.kind == "status":
                resp.read()
                entry["status"] = fault.status
                return h.reply(fault.status, fault.body, fault.headers)
            entry["status"] = resp.status
            entry["location"] = resp.getheader("Location")
            out = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP]
            if fault and fault.kind == "headers":
                names = {k.lower() for k in fault.headers}
                out = [(k, v) for k, v in out if k.lower() not in names]
                out += list(fault.headers.items())
            if fault and fault.kind == "body":
                resp.read()
                data = fault.body
                out = [(k, v) for k, v in out if k.lower() != "content-length"]
                out.append(("Content-Length", str(len(data))))
                return self._send(h, resp.status, out, [data])
            if resp.getheader("Content-Length") is None and h.command != "HEAD":
                data = resp.read()
                out.append(("Content-Length", str(len(data))))
                return self._send(h, resp.status, out, [data])
            if fault and fault.kind == "reset":
                return self._reset(h, resp, out, fault.after)
            if fault and fault.kind == "hold":
                first = resp.read(fault.after)

                def held():
                    yield first
                    h.wfile.flush()
                    fault.held.set()
                    fault.release.wait(60)
                    yield from iter(lambda: resp.read(64 << 10), b"")

                return self._send(h, resp.status, out, held())
            return self._send(h, resp.status, out, iter(lambda: resp.read(64 << 10), b""))
        finally:
            conn.close()

    def _send(self, h, status, headers, chunks) -> None:
        h.send_response(status)
        for k, v in headers:
            h.send_header(k, v)
        h.end_headers()
        if h.command != "HEAD":
            for chunk in chunks:
                h.wfile.write(chunk)

    def _reset(self, h, resp, headers, after: int) -> None:
        """Sends headers and `after` bytes of the body, then an RST."""
        h.send_response(resp.status)
        for k, v in headers:
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(resp.read(after))
        h.wfile.flush()
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.close_connection = True
        h.connection.close()


# -- registry processes ---------------------------------------------------------------------

class RegistryServer:
    """docker-registry serving root on 127.0.0.1 (a copy of seed when given).

    root: a storage directory to serve as it is, instead of a copy of seed.
    auth: None, "htpasswd" (USER/PASSWORD) or a TokenServer; cdn: a CDN to redirect blob
    GETs to (it is pointed at this registry's storage); tls: (cert, key) paths; bind: the
    loopback address to listen on.
    """

    def __init__(self, workdir: Path, *, seed: Path | None = None, root: Path | None = None,
                 auth=None, cdn: CDN | None = None, tls=None, bind: str = "127.0.0.1"):
        need_registry()
        workdir.mkdir(parents=True)
        self.root = root or workdir / "storage"
        if seed is not None:
            shutil.copytree(seed, self.root)
        elif root is None:
            self.root.mkdir()
        self.port = free_port()
        self.host = f"{bind}:{self.port}"
        config = {
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.root)},
                        "delete": {"enabled": True},
                        "maintenance": {"uploadpurging": {"enabled": False}}},
            "http": {"addr": self.host, "secret": "layerstore-test-secret"},
        }
        if tls:
            config["http"]["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
        if auth == "htpasswd":
            config["auth"] = {"htpasswd": {"realm": "layerstore-test",
                                           "path": str(_htpasswd(workdir / "htpasswd"))}}
        elif auth is not None:
            config["auth"] = {"token": {"realm": auth.realm, "service": SERVICE,
                                        "issuer": ISSUER, "rootcertbundle": str(auth.cert)}}
        if cdn is not None:
            cdn.root = self.root.resolve()
            config["middleware"] = {"storage": [{"name": "redirect",
                                                 "options": {"baseurl": cdn.url}}]}
        (workdir / "config.yml").write_text(json.dumps(config))   # YAML reads JSON
        self._log = open(workdir / "registry.log", "wb")
        self.proc = subprocess.Popen([REGISTRY_BIN, "serve", str(workdir / "config.yml")],
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        try:
            wait_until_answers(self.host, self.proc, tls=bool(tls))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        stop_pid(self.proc)
        self._log.close()


def _htpasswd(path: Path) -> Path:
    """A bcrypt htpasswd file for USER/PASSWORD (registry 2.8 reads bcrypt only)."""
    tool = shutil.which("htpasswd")
    if tool:
        subprocess.run([tool, "-Bbc", str(path), USER, PASSWORD], check=True,
                       capture_output=True)
        return path
    try:
        import bcrypt
    except ImportError:
        pytest.skip("needs htpasswd (apt-get install apache2-utils) or the bcrypt package")
    path.write_bytes(USER.encode() + b":" + bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt())
                     + b"\n")
    return path


# -- seeding --------------------------------------------------------------------------------

def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class SeedImage:
    """An image pushed while seeding: what a test compares against."""

    manifest_digest: str
    manifest: bytes
    config_digest: str
    config: bytes
    layers: list      # [(digest, size, compressed bytes, diff_id)]


def write_oci_layout(path: Path, files: dict[str, bytes], arch: str = "amd64",
                     tag: str = "latest") -> SeedImage:
    """An OCI layout with one gzip layer holding files, for skopeo to copy."""
    tar = layer_tar(files)
    blob = gzip.compress(tar, compresslevel=1, mtime=0)
    config = json.dumps({"architecture": arch, "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [sha256(tar)]},
                         "config": {}}, sort_keys=True).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, "digest": sha256(config),
                                      "size": len(config)},
                           "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": sha256(blob),
                                       "size": len(blob)}]}).encode()
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for data in (blob, config, manifest):
        (blobs / sha256(data)[7:]).write_bytes(data)
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (path / "index.json").write_text(json.dumps({
        "schemaVersion": 2, "manifests": [{
            "mediaType": OCI_MANIFEST, "digest": sha256(manifest), "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    return SeedImage(sha256(manifest), manifest, sha256(config), config,
                     [(sha256(blob), len(blob), blob, sha256(tar))])


def skopeo_copy(src: str, dest: str, *args: str) -> str:
    """skopeo copy into a plain-http registry; returns the manifest digest it wrote."""
    if shutil.which("skopeo") is None:
        pytest.skip("needs skopeo")
    with open(os.devnull, "wb") as devnull:
        digestfile = Path(f"/tmp/layerstore-skopeo-{os.getpid()}-{threading.get_ident()}")
        try:
            subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false",
                            "--digestfile", str(digestfile), *args, src, dest],
                           check=True, stdout=devnull)
            return digestfile.read_text().strip()
        finally:
            digestfile.unlink(missing_ok=True)


class RawPusher:
    """Blobs and manifests into an open registry by plain HTTP: what skopeo cannot make
    (an index with an attestation entry, an artifact)."""

    def __init__(self, host: str):
        self.host = host

    def _do(self, method: str, path: str, body: bytes = b"", headers=None):
        conn = http.client.HTTPConnection(self.host, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def blob(self, repo: str, data: bytes) -> str:
        digest = sha256(data)
        status, headers, _ = self._do("POST", f"/v2/{repo}/blobs/uploads/")
        assert status == 202, status
        location = urllib.parse.urlsplit(headers["Location"])
        sep = "&" if location.query else "?"
        path = f"{location.path}?{location.query}{sep}digest={digest}".replace("??", "?")
        status, _, text = self._do("PUT", path, data,
                                   {"Content-Type": "application/octet-stream"})
        assert status == 201, (status, text)
        return digest

    def manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        status, _, text = self._do("PUT", f"/v2/{repo}/manifests/{ref}", data,
                                   {"Content-Type": media_type})
        assert status == 201, (status, text)
        return sha256(data)


@dataclass
class Seed:
    """What the seeded storage holds."""

    root: Path
    app: SeedImage                  # seed/app: :v2s2 (Docker schema 2) and :oci (OCI)
    app_v2s2_digest: str
    app_oci_digest: str
    index_digest: str               # seed/multi:latest, two platforms and an attestation
    platform_digests: dict          # "linux/amd64" -> manifest digest
    attestation_digest: str
    artifact_digest: str            # seed/artifact:latest, config type not an image's


def seed_storage(workdir: Path) -> Seed:
    """Seeds a registry storage directory through an open registry that is then stopped."""
    reg = RegistryServer(workdir / "seeding")
    try:
        # A layer of ~1 MiB of incompressible bytes: big enough to break off mid-way.
        rnd = hashlib.shake_256(b"layerstore registry seed").digest(1 << 20)
        app = write_oci_layout(workdir / "app", {"etc/hello": b"hello\n", "data/random": rnd,
                                                 "etc/motd": b"seeded by the tests\n"})
        v2s2 = skopeo_copy(f"oci:{workdir / 'app'}:latest",
                           f"docker://{reg.host}/seed/app:v2s2", "--format", "v2s2")
        oci = skopeo_copy(f"oci:{workdir / 'app'}:latest",
                          f"docker://{reg.host}/seed/app:oci", "--format", "oci")
        raw = RawPusher(reg.host)
        platforms = {}
        entries = []
        for arch in ("amd64", "arm64"):
            write_oci_layout(workdir / f"multi-{arch}", {"etc/arch": arch.encode()}, arch)
            digest = skopeo_copy(f"oci:{workdir / f'multi-{arch}'}:latest",
                                 f"docker://{reg.host}/seed/multi:{arch}", "--format", "oci")
            platforms[f"linux/{arch}"] = digest
            size = raw._do("HEAD", f"/v2/seed/multi/manifests/{digest}",
                           headers={"Accept": OCI_MANIFEST})[1]["Content-Length"]
            entries.append({"mediaType": OCI_MANIFEST, "digest": digest, "size": int(size),
                            "platform": {"os": "linux", "architecture": arch}})
        # A BuildKit-style attestation manifest: image config type, an in-toto layer.
        statement = json.dumps({"_type": "https://in-toto.io/Statement/v0.1",
                                "predicateType": "https://slsa.dev/provenance/v0.2",
                                "subject": [{"name": "seed/multi",
                                             "digest": {"sha256": platforms["linux/amd64"][7:]}}],
                                "predicate": {}}).encode()
        att_config = json.dumps({"architecture": "unknown", "os": "unknown", "config": {},
                                 "rootfs": {"type": "layers",
                                            "diff_ids": [sha256(statement)]}}).encode()
        raw.blob("seed/multi", statement)
        raw.blob("seed/multi", att_config)
        att = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                          "config": {"mediaType": OCI_CONFIG, "digest": sha256(att_config),
                                     "size": len(att_config)},
                          "layers": [{"mediaType": "application/vnd.in-toto+json",
                                      "digest": sha256(statement), "size": len(statement),
                                      "annotations": {"in-toto.io/predicate-type":
                                                      "https://slsa.dev/provenance/v0.2"}}]
                          }).encode()
        att_digest = raw.manifest("seed/multi", sha256(att), att, OCI_MANIFEST)
        entries.append({"mediaType": OCI_MANIFEST, "digest": att_digest, "size": len(att),
                        "platform": {"os": "unknown", "architecture": "unknown"},
                        "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                                        "vnd.docker.reference.digest": platforms["linux/amd64"]}})
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                            "manifests": entries}).encode()
        index_digest = raw.manifest("seed/multi", "latest", index, OCI_INDEX)
        # An OCI artifact (a Helm chart's shape): an image manifest whose config is not an
        # image config.
        chart_config = b'{"name":"chart","version":"1.0.0"}'
        chart = b"not a tar: a chart"
        raw.blob("seed/artifact", chart_config)
        raw.blob("seed/artifact", chart)
        artifact = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json",
                       "digest": sha256(chart_config), "size": len(chart_config)},
            "layers": [{"mediaType": "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
                        "digest": sha256(chart), "size": len(chart)}]}).encode()
        artifact_digest = raw.manifest("seed/artifact", "latest", artifact, OCI_MANIFEST)
    finally:
        reg.stop()
    return Seed(reg.root, app, v2s2, oci, index_digest, platforms, att_digest, artifact_digest)


@dataclass
class CorpusSeed:
    registry: RegistryServer
    images: dict        # tag -> manifest digest: "base-gzip" (Docker v2s2), "base-zstd" (OCI)


def seed_corpus(workdir: Path, corpus: Path, names=("base",)) -> CorpusSeed:
    """The corpus images as Docker gzip and OCI zstd in one registry.  Each format is pushed
    into a registry of its own (skopeo 1.9's blob cache would reuse a gzip blob for zstd, or
    a zstd one for v2s2 and then fail) and the storage trees are merged."""
    regs = {fmt: RegistryServer(workdir / f"seed-{fmt}") for fmt in ("gzip", "zstd")}
    jobs, images = [], {}
    try:
        for name in names:
            src = f"docker-archive:{corpus / f'{name}.docker.tar.zst'}"
            for fmt, args in (("gzip", ("--format", "v2s2")),
                              ("zstd", ("--format", "oci", "--dest-compress-format", "zstd"))):
                digestfile = workdir / f"{name}-{fmt}.digest"
                jobs.append((f"{name}-{fmt}", digestfile, subprocess.Popen(
                    ["skopeo", "copy", "-q", "--dest-tls-verify=false", "--digestfile",
                     str(digestfile), *args, src,
                     f"docker://{regs[fmt].host}/corpus/{name}:{fmt}"],
                    stdout=subprocess.DEVNULL)))
        for tag, digestfile, proc in jobs:
            assert proc.wait() == 0, f"skopeo copy for {tag} failed"
            images[tag] = digestfile.read_text().strip()
    finally:
        for reg in regs.values():
            reg.stop()
    merged = workdir / "merged"
    for reg in regs.values():       # hard links: the seeding registries are gone
        shutil.copytree(reg.root, merged, dirs_exist_ok=True, copy_function=os.link)
    return CorpusSeed(RegistryServer(workdir / "corpus", root=merged), images)


def make_client(host: str, sleeps: list | None = None, clock=None, retries: int = 3,
                **kw):
    """A Client whose waits are recorded in sleeps instead of slept (tests never wait)."""
    from layerstore.registry.client import Client
    from layerstore.registry.transport import Transport
    transport = Transport(sleep=(sleeps.append if sleeps is not None else _no_sleep),
                          retries=retries, **{k: kw.pop(k) for k in
                                              ("insecure_registries", "tls_verify", "ca_file")
                                              if k in kw})
    if clock is not None:
        kw["clock"] = clock
    return Client(host, transport=transport, **kw)


def _no_sleep(seconds: float) -> None:
    pass


class FakeClock:
    """time.monotonic for token expiry, moved by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def seed(tmp_path_factory) -> Seed:
    need_registry()
    return seed_storage(tmp_path_factory.mktemp("registry-seed"))


def _serve(request, make):
    server = make()
    request.addfinalizer(server.stop)
    return server


@pytest.fixture(scope="session")
def open_registry(request, seed, tmp_path_factory) -> RegistryServer:
    """Open (no auth), plain http, seeded."""
    return _serve(request, lambda: RegistryServer(tmp_path_factory.mktemp("open") / "r",
                                                  seed=seed.root))


@pytest.fixture(scope="session")
def htpasswd_registry(request, seed, tmp_path_factory) -> RegistryServer:
    """Basic auth with USER/PASSWORD, seeded."""
    return _serve(request, lambda: RegistryServer(tmp_path_factory.mktemp("htpasswd") / "r",
                                                  seed=seed.root, auth="htpasswd"))


@pytest.fixture(scope="session")
def _token_server(request, tmp_path_factory) -> TokenServer:
    return _serve(request, lambda: TokenServer(tmp_path_factory.mktemp("token")))


def _reset_around(server):
    server.reset()
    yield server
    server.reset()


@pytest.fixture
def token_server(_token_server) -> TokenServer:
    """The token server, its knobs and log reset for this test."""
    yield from _reset_around(_token_server)


@pytest.fixture(scope="session")
def token_registry(request, seed, _token_server, tmp_path_factory) -> RegistryServer:
    """Token auth against the tests' token server, seeded."""
    return _serve(request, lambda: RegistryServer(tmp_path_factory.mktemp("tokenreg") / "r",
                                                  seed=seed.root, auth=_token_server))


@pytest.fixture(scope="session")
def _cdn(request) -> CDN:
    return _serve(request, CDN)


@pytest.fixture(scope="session")
def _cdn_registry(request, seed, _token_server, _cdn, tmp_path_factory) -> RegistryServer:
    return _serve(request, lambda: RegistryServer(tmp_path_factory.mktemp("cdnreg") / "r",
                                                  seed=seed.root, auth=_token_server,
                                                  cdn=_cdn))


@pytest.fixture
def cdn_registry(_cdn_registry, _cdn, token_server):
    """A token-auth registry whose blob GETs redirect to a CDN; the test fails if the CDN
    saw Authorization.  Yields (registry, cdn)."""
    _cdn.log, _cdn.violations = [], []
    yield _cdn_registry, _cdn
    violations, _cdn.violations = _cdn.violations, []
    assert not violations, violations


@pytest.fixture(scope="session")
def _proxy(request, open_registry) -> FaultProxy:
    return _serve(request, lambda: FaultProxy(open_registry.host))


@pytest.fixture
def proxy(_proxy) -> FaultProxy:
    """The fault proxy in front of the open registry, with no faults and an empty log."""
    yield from _reset_around(_proxy)


@pytest.fixture(scope="session")
def _token_proxy(request, token_registry) -> FaultProxy:
    return _serve(request, lambda: FaultProxy(token_registry.host))


@pytest.fixture
def token_proxy(_token_proxy, token_server) -> FaultProxy:
    """The fault proxy in front of the token-auth registry."""
    yield from _reset_around(_token_proxy)


@pytest.fixture(scope="session")
def corpus_registry(request, corpus_dir, tmp_path_factory) -> CorpusSeed:
    """corpus/base as :gzip (Docker v2 schema 2, gzip) and :zstd (OCI, zstd).  Slow: a few
    seconds of skopeo compressing 121 MB."""
    need_registry()
    if shutil.which("skopeo") is None:
        pytest.skip("needs skopeo")
    seeded = seed_corpus(tmp_path_factory.mktemp("corpus-registry"), corpus_dir)
    request.addfinalizer(seeded.registry.stop)
    return seeded


@pytest.fixture(scope="session")
def loopback_name() -> tuple[str, str]:
    """(name, address): this machine's host name when it resolves to a loopback address.
    The client does not resolve names, so for it the name is a secure (TLS-verified) host
    while the tests can still listen on loopback only."""
    name = socket.gethostname()
    try:
        addresses = {a[4][0] for a in socket.getaddrinfo(name, None, socket.AF_INET)}
    except OSError:
        addresses = set()
    if (not name or name.lower().startswith("localhost") or len(addresses) != 1
            or not next(iter(addresses)).startswith("127.")):
        pytest.skip(f"the host name {name!r} does not resolve to one loopback address")
    return name, next(iter(addresses))


@pytest.fixture(scope="session")
def tls_registry(request, seed, loopback_name, tmp_path_factory):
    """A seeded open registry over HTTPS with a self-signed certificate for the host name
    and the loopback address.  Returns (registry, name_host, cert_path)."""
    name, address = loopback_name
    work = tmp_path_factory.mktemp("tlsreg")
    cert, key, _ = make_cert(work / "cert", names=(name,), ips=(address,))
    reg = _serve(request, lambda: RegistryServer(work / "r", seed=seed.root, tls=(cert, key),
                                                 bind=address))
    return reg, f"{name}:{reg.port}", cert
