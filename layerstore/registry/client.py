"""The OCI distribution (Docker registry v2) API over transport.py and auth.py.

One Client per registry.  Repositories are names as the registry knows them
("library/python"), references tags or digests; parsing "python:3.12" into those is the
caller's (references as Docker resolves them come with pull).

Every byte read is checked before it is returned: a manifest's sha256 against the digest
asked for or the registry's Docker-Content-Digest, a blob's size and sha256 against its
descriptor (transport.BlobReader).  Manifests are capped at 4 MiB, blobs read whole
(configs) at 8 MiB.  The registry's error JSON ({"errors": [{"code", "message"}]}) becomes a
layerstore.errors class: ManifestUnknown, BlobUnknown, AuthenticationRequired, AccessDenied,
RateLimited, or RegistryError with its code.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import quote, urljoin, urlsplit

from .. import errors
from ..formats.reference import check_digest
from .auth import Authenticator, parse_challenges
from .credentials import Credentials, lookup, normalize_registry
from .transport import BlobReader, Response, Transport, retry_after

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
# Sent on every manifest request: registry 2.8 turns a schema 2 manifest into schema 1 for a
# client that does not name schema 2, and answers 404 for OCI content to one that does not
# name OCI.
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])
SCHEMA1_TYPES = frozenset({"application/vnd.docker.distribution.manifest.v1+json",
                           "application/vnd.docker.distribution.manifest.v1+prettyjws"})
OCI_ARTIFACT = "application/vnd.oci.artifact.manifest.v1+json"
IMAGE_CONFIG_TYPES = frozenset({"application/vnd.oci.image.config.v1+json",
                                "application/vnd.docker.container.image.v1+json"})

MANIFEST_LIMIT = 4 << 20
CONFIG_LIMIT = 8 << 20
DOCKER_HUB_HOST = "registry-1.docker.io"

# distribution/reference's grammar: what may reach a URL path.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*\Z")
_TAG = re.compile(r"[\w][\w.-]{0,127}\Z")
_RANGE = re.compile(r"(?:bytes=)?0-(\d+)\Z")


def endpoint(registry: str) -> str:
    """The host serving a registry name: Docker Hub's names -> registry-1.docker.io."""
    return DOCKER_HUB_HOST if normalize_registry(registry) == "docker.io" else registry


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """A manifest or index as the registry sent it: data is the raw bytes its digest
    covers; json the parsed object."""

    media_type: str
    digest: str
    data: bytes
    json: dict

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


@dataclass(frozen=True)
class RateLimit:
    """The last rate-limit headers seen (Docker Hub: "100;w=21600", "76;w=21600")."""

    limit: str | None
    remaining: str | None
    source: str | None = None


@dataclass(frozen=True)
class RegistryOptions:
    """How to reach registries, as pull and push take it (the CLI's --authfile, --creds,
    --tls-verify and --insecure-registry; see cli.py: registry_options).  client(registry)
    is the one place a Client is made from them.

    authfile: where credentials are looked up first (credentials.lookup); credentials: used
    for every repository instead (--creds); insecure_registries, tls_verify, ca_file: as
    transport.Transport; allow_private_realm: as Client (tests only)."""

    authfile: str | None = None
    credentials: Credentials | None = field(default=None, repr=False)
    tls_verify: bool = True
    insecure_registries: tuple[str, ...] = ()
    ca_file: str | None = None
    allow_private_realm: bool = False

    def client(self, registry: str) -> "Client":
        """A Client for registry ("docker.io", "host:5000", ...) with these options."""
        return Client(registry, credentials=self.credentials, authfile=self.authfile,
                      insecure_registries=self.insecure_registries,
                      tls_verify=self.tls_verify, ca_file=self.ca_file,
                      allow_private_realm=self.allow_private_realm)


def _pull(repo: str) -> tuple[str, ...]:
    return (f"repository:{repo}:pull",)


def _push(repo: str) -> tuple[str, ...]:
    return (f"repository:{repo}:pull,push",)


def _path(url: str) -> str:
    return urlsplit(url).path


class Client:
    """A registry, through one connection pool.  Thread-safe: downloads may run in parallel.

    registry: "docker.io" (served by registry-1.docker.io), "quay.io", "host:5000", ...
    credentials: --creds, used for every repository; otherwise they are looked up
    (credentials.lookup, with authfile) the first time the registry asks for them.
    insecure_registries, tls_verify, ca_file: as transport.Transport.
    allow_private_realm: accept a token server on a loopback/private address other than
    the registry's own (tests).  transport: a Transport to use instead of a new one.
    """

    def __init__(self, registry: str, *, credentials: Credentials | None = None,
                 authfile=None, insecure_registries=(), tls_verify: bool = True,
                 ca_file: str | None = None, transport: Transport | None = None,
                 allow_private_realm: bool = False, clock=time.monotonic):
        self.registry = registry
        self.host = endpoint(registry)
        self.transport = transport or Transport(insecure_registries=insecure_registries,
                                                tls_verify=tls_verify, ca_file=ca_file)
        self.ratelimit: RateLimit | None = None

        def find(repository):
            if credentials is not None:
                return credentials
            return lookup(registry, repository, authfile=authfile)

        self._auth = Authenticator(self.transport, self.host, find,
                                   allow_private_realm=allow_private_realm, clock=clock)
        self._pinged = False
        self._ping_lock = threading.Lock()

    @property
    def counters(self):
        return self.transport.counters

    @property
    def token_requests(self) -> int:
        return self._auth.token_requests

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.transport.close()

    # -- the API -----------------------------------------------------------------------

    def ping(self) -> None:
        """GET /v2/: learns how the registry authenticates.  Raises errors.RegistryError
        when the host does not speak the v2 API.  Other methods ping on first use."""
        with self._ping_lock:
            resp = self.transport.request("GET", self.transport.url(self.host, "/v2/"))
            self._note(resp)
            if resp.status == 401:
                self._auth.learn(parse_challenges(resp.headers.getlist("WWW-Authenticate")))
            elif resp.status != 200:
                raise self._error(resp, "GET", "/v2/", None, None)
            self._pinged = True

    def head_manifest(self, repo: str, reference: str) -> Descriptor:
        """The descriptor of a tag or digest without fetching it (Docker Hub does not count
        a HEAD as a pull).  Raises errors.ManifestUnknown."""
        path = f"/v2/{_repo(repo)}/manifests/{_ref(reference)}"
        resp = self._request("HEAD", path, repo, _pull(repo), headers={"Accept": MANIFEST_ACCEPT},
                             what=("manifest", reference))
        digest = resp.header("Docker-Content-Digest")
        if not digest:
            raise errors.RegistryError(f"{self.host}/{repo}: HEAD of manifest {reference} "
                                       "answered without Docker-Content-Digest")
        check_digest(digest, "Docker-Content-Digest")
        if _is_digest(reference) and digest != reference:
            raise errors.DigestMismatch(f"{self.host}/{repo}: asked for manifest {reference}, "
                                        f"the registry names it {digest}")
        length = resp.header("Content-Length")
        return Descriptor(_media_type(resp.header("Content-Type")), digest,
                          int(length) if length and length.isdigit() else 0)

    def get_manifest(self, repo: str, reference: str) -> Manifest:
        """A manifest or index by tag or digest, its raw bytes verified.  Raises
        errors.ManifestUnknown, errors.DigestMismatch, errors.LimitExceeded (over 4 MiB),
        errors.UnsupportedManifest (Docker schema 1, OCI artifacts, other media types)."""
        path = f"/v2/{_repo(repo)}/manifests/{_ref(reference)}"
        resp = self._request("GET", path, repo, _pull(repo), headers={"Accept": MANIFEST_ACCEPT},
                             limit=MANIFEST_LIMIT, what=("manifest", reference))
        data = resp.data
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        where = f"{self.host}/{repo}:{reference}" if not _is_digest(reference) else \
            f"{self.host}/{repo}@{reference}"
        if _is_digest(reference) and digest != reference:
            raise errors.DigestMismatch(f"manifest {where}: its bytes hash to {digest}")
        sent = resp.header("Docker-Content-Digest")
        if sent and sent.startswith("sha256:") and sent != digest:
            raise errors.DigestMismatch(f"manifest {where}: the registry names it {sent}, "
                                        f"its bytes hash to {digest}")
        media_type, parsed = _classify(data, resp.header("Content-Type"), where)
        return Manifest(media_type, digest, data, parsed)

    def put_manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> str:
        """Uploads a manifest or index under a tag or its digest; returns its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if _is_digest(reference) and reference != digest:
            raise errors.DigestMismatch(f"manifest to put as {reference} hashes to {digest}")
        path = f"/v2/{_repo(repo)}/manifests/{_ref(reference)}"
        resp = self._request("PUT", path, repo, _push(repo), body=data,
                             headers={"Content-Type": media_type,
                                      "Content-Length": str(len(data))},
                             ok=(200, 201), what=("manifest", reference))
        sent = resp.header("Docker-Content-Digest")
        if sent and sent.startswith("sha256:") and sent != digest:
            raise errors.DigestMismatch(f"{self.host}/{repo}: stored manifest {reference} as "
                                        f"{sent}, its bytes hash to {digest}")
        return digest

    def head_blob(self, repo: str, digest: str) -> int | None:
        """The size of a blob the repository has, or None."""
        path = f"/v2/{_repo(repo)}/blobs/{check_digest(digest)}"
        resp = self._request("HEAD", path, repo, _pull(repo), ok=(200, 404),
                             what=("blob", digest))
        if resp.status == 404:
            return None
        length = resp.header("Content-Length")
        return int(length) if length and length.isdigit() else 0

    def get_blob(self, repo: str, digest: str, size: int | None = None,
                 restart: bool = False, response: Response | None = None) -> BlobReader:
        """A blob as a verifying, resuming stream (transport.BlobReader; restart: as there);
        the GET is sent now, so errors.BlobUnknown comes from here.  Close it when done.
        response: a 200 answer with the whole blob to a GET already sent (a range GET the
        server answered so), read instead of sending another."""
        path = f"/v2/{_repo(repo)}/blobs/{check_digest(digest)}"

        def open_at(offset: int) -> Response:
            nonlocal response
            if response is not None and offset == 0:
                first, response = response, None
                return first
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            return self._request("GET", path, repo, _pull(repo), headers=headers, stream=True,
                                 ok=(200, 206), what=("blob", digest))

        return BlobReader(open_at, digest, size, self.transport,
                          label=f"blob {self.host}/{repo}@{digest}", restart=restart)

    def get_blob_ranges(self, repo: str, digest: str, ranges: list[tuple[int, int]]) -> Response:
        """One GET of the (start, end) byte ranges of a blob, streamed, answered as the server
        chose: 206 (multipart/byteranges, or one part), 200 (the whole blob: Range ignored)
        or 400/416/501 (ranges refused).  Close it when done."""
        spec = ",".join(f"{s}-{e - 1}" for s, e in ranges)
        return self._request("GET", f"/v2/{_repo(repo)}/blobs/{check_digest(digest)}", repo,
                             _pull(repo), headers={"Range": f"bytes={spec}"}, stream=True,
                             ok=(200, 206, 400, 416, 501), what=("blob", digest))

    def get_blob_bytes(self, repo: str, digest: str, size: int | None = None,
                       limit: int = CONFIG_LIMIT) -> bytes:
        """A small blob (an image config) whole, verified; over limit bytes is refused."""
        if size is not None and size > limit:
            raise errors.LimitExceeded(f"blob {self.host}/{repo}@{digest} is {size} bytes, "
                                       f"over the {limit} layerstore reads whole")
        with self.get_blob(repo, digest, size) as reader:
            if reader.size is not None and reader.size > limit:
                raise errors.LimitExceeded(f"blob {self.host}/{repo}@{digest} is "
                                           f"{reader.size} bytes, over the {limit} layerstore "
                                           "reads whole")
            return reader.read()

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Asks the registry to link a blob of from_repo into repo without uploading it:
        True when it did (201).  When it opened an upload session instead (202), the
        session is cancelled (as far as the registry lets it) and False returned: upload
        the blob then.  The token asked
        for holds pull on from_repo too."""
        path = (f"/v2/{_repo(repo)}/blobs/uploads/?mount={quote(check_digest(digest))}"
                f"&from={quote(_repo(from_repo), safe='/')}")
        scopes = _push(repo) + _pull(from_repo)
        resp = self._request("POST", path, repo, scopes, headers={"Content-Length": "0"},
                             ok=(201, 202), what=("blob", digest))
        if resp.status == 201:
            return True
        # Quiet: a registry that keeps the session (refusing the DELETE) expires it itself,
        # and the blob is still to be uploaded.  One that names no session has none to end.
        if resp.header("Location"):
            Upload(self, repo, resp).cancel(quiet=True)
        return False

    def start_upload(self, repo: str) -> Upload:
        """Opens an upload session (POST /v2/<repo>/blobs/uploads/)."""
        resp = self._request("POST", f"/v2/{_repo(repo)}/blobs/uploads/", repo, _push(repo),
                             headers={"Content-Length": "0"}, ok=(202,), what=("upload", None))
        return Upload(self, repo, resp)

    def push_blob(self, repo: str, digest: str, source, size: int | None = None,
                  chunk_size: int | None = None) -> str:
        """Uploads a blob from bytes or a binary file: one PUT (monolithic), or PATCHes of
        chunk_size bytes (raised to the registry's OCI-Chunk-Min-Length) and a closing PUT.
        Returns the digest the registry stored it under (checked to be digest)."""
        check_digest(digest)
        upload = self.start_upload(repo)
        try:
            if chunk_size is None:
                if isinstance(source, (bytes, bytearray, memoryview)):
                    size = len(source)
                if size is None:
                    raise ValueError("push_blob of a file needs its size")
                return upload.commit(digest, source, size)
            chunk_size = max(chunk_size, upload.min_chunk)
            if isinstance(source, (bytes, bytearray, memoryview)):
                view = memoryview(source)
                for start in range(0, len(view), chunk_size):
                    upload.patch(bytes(view[start:start + chunk_size]))
            else:
                while chunk := source.read(chunk_size):
                    upload.patch(chunk)
            return upload.commit(digest)
        except BaseException:
            upload.cancel(quiet=True)
            raise

    # -- requests ----------------------------------------------------------------------

    def _request(self, method: str, path_or_url: str, repo: str | None, scopes, *,
                 headers=None, body=None, stream: bool = False, limit: int | None = None,
                 ok=(200,), what=None) -> Response:
        """One API request with authentication: the registry's 401 is answered once (a
        token for the scopes it names, or Basic credentials); any status not in ok raises
        the errors class it means."""
        if not self._pinged:
            self.ping()
        url = path_or_url if "://" in path_or_url else self.transport.url(self.host, path_or_url)
        same_host = urlsplit(url).netloc == self.host
        start = body.tell() if hasattr(body, "seekable") and body.seekable() else None
        kwargs = {"stream": stream} if limit is None else {"stream": stream, "limit": limit}
        retried = False
        while True:
            sent = dict(headers or {})
            if same_host:
                auth = self._auth.header(scopes, repo)
                if auth:
                    sent["Authorization"] = auth
            resp = self.transport.request(method, url, headers=sent, body=body, **kwargs)
            self._note(resp)
            if resp.status != 401 or retried or not same_host:
                break
            challenges = parse_challenges(resp.headers.getlist("WWW-Authenticate"))
            new_scopes = self._auth.unauthorized(challenges, scopes, repo)
            if new_scopes is None:
                break
            resp.close()
            if start is not None:
                body.seek(start)
            elif body is not None and not isinstance(body, (bytes, bytearray, memoryview)):
                break
            scopes, retried = new_scopes, True
        if resp.status not in ok:
            try:
                raise self._error(resp, method, _path(url), repo, what)
            finally:
                resp.close()
        return resp

    def _note(self, resp: Response) -> None:
        limit = resp.header("ratelimit-limit")
        if limit is not None:
            self.ratelimit = RateLimit(limit, resp.header("ratelimit-remaining"),
                                       resp.header("docker-ratelimit-source"))

    def _error(self, resp: Response, method: str, path: str, repo, what) -> errors.RegistryError:
        data = resp.data if resp.data is not None else _read_some(resp)
        code, message = _registry_error(data)
        status = resp.status
        said = f"{code}: {message}" if code and message else code or message or _REASONS.get(
            status, f"HTTP {status}")
        kind, ref = what or (None, None)
        where = f"{self.host}/{repo}" if repo else self.host
        if status == 401 or code == "UNAUTHORIZED":
            challenge = next(iter(parse_challenges(resp.headers.getlist("WWW-Authenticate"))),
                             None)
            why = f" ({challenge.error})" if challenge and challenge.error else ""
            return errors.AuthenticationRequired(
                f"{where}: {method} {path} needs credentials that were missing or refused"
                f"{why}: {said}", status=status, code=code)
        if status == 403 or code == "DENIED":
            return errors.AccessDenied(f"{where}: {method} {path} denied: {said}",
                                       status=status, code=code)
        if status == 429 or code == "TOOMANYREQUESTS":
            return _rate_limited(resp, where, said, code)
        if kind == "manifest" and (status == 404 or code in ("MANIFEST_UNKNOWN",
                                                             "NAME_UNKNOWN")):
            return errors.ManifestUnknown(f"{where}: manifest {ref} not found ({said})",
                                          status=status, code=code)
        if kind == "blob" and (status == 404 or code == "BLOB_UNKNOWN"):
            return errors.BlobUnknown(f"{where}: blob {ref} not found ({said})",
                                      status=status, code=code)
        return errors.RegistryError(f"{where}: {method} {path} answered {status}: {said}",
                                    status=status, code=code)


class Upload:
    """An upload session: PATCH chunks in order, then PUT with the digest (commit).  Every
    answer's Location is the URL of the next request, as the spec requires."""

    def __init__(self, client: Client, repo: str, resp: Response):
        self._client, self.repo = client, repo
        self.location = self._location(resp)
        self.offset = 0
        minimum = resp.header("OCI-Chunk-Min-Length")
        self.min_chunk = int(minimum) if minimum and minimum.isdigit() else 0

    def patch(self, data: bytes) -> None:
        """Sends the next chunk.  On 416 (the registry holds another offset) asks the
        session where it stands and sends the part of this chunk it lacks."""
        for _ in range(2):
            end = self.offset + len(data) - 1
            resp = self._client._request(
                "PATCH", self.location, self.repo, _push(self.repo), body=data,
                headers={"Content-Type": "application/octet-stream",
                         "Content-Range": f"{self.offset}-{end}",
                         "Content-Length": str(len(data))},
                ok=(202, 416), what=("upload", None))
            if resp.status == 202:
                self.location = self._location(resp)
                self.offset = _range_end(resp, self.offset + len(data))
                return
            have = self.status()
            if not self.offset <= have <= self.offset + len(data):
                break
            data, self.offset = data[have - self.offset:], have
            if not data:
                return
        raise errors.RegistryError(
            f"{self._client.host}/{self.repo}: the upload session holds {self.offset} bytes, "
            f"which this chunk cannot continue", status=416, code="BLOB_UPLOAD_INVALID")

    def stream(self, chunks) -> None:
        """Sends a whole blob of unknown length as one PATCH without Content-Range, chunked
        transfer encoding (what Docker's push does): the digest is given at commit, so it can
        be computed while the bytes go out.  chunks: an iterable of bytes, read once."""
        resp = self._client._request(
            "PATCH", self.location, self.repo, _push(self.repo), body=chunks,
            headers={"Content-Type": "application/octet-stream"},
            ok=(202,), what=("upload", None))
        self.location = self._location(resp)
        self.offset = _range_end(resp, self.offset)

    def commit(self, digest: str, data=b"", size: int | None = None) -> str:
        """Closes the session with its last bytes (none after PATCHes; the whole blob for a
        monolithic upload: bytes, a binary file or an iterable of bytes, with size): the
        registry checks the digest and stores the blob."""
        length = len(data) if isinstance(data, (bytes, bytearray, memoryview)) else size
        sep = "&" if urlsplit(self.location).query else "?"
        resp = self._client._request(
            "PUT", f"{self.location}{sep}digest={quote(digest)}", self.repo, _push(self.repo),
            body=data, headers={"Content-Type": "application/octet-stream",
                                "Content-Length": str(length)},
            ok=(201, 204), what=("blob", digest))
        stored = resp.header("Docker-Content-Digest") or digest
        if stored != digest:
            raise errors.DigestMismatch(f"{self._client.host}/{self.repo}: uploaded {digest}, "
                                        f"the registry stored {stored}")
        return stored

    def status(self) -> int:
        """How many bytes the registry holds for this session (GET on its Location)."""
        resp = self._client._request("GET", self.location, self.repo, _push(self.repo),
                                     ok=(204,), what=("upload", None))
        self.location = self._location(resp)
        return _range_end(resp, 0)

    def cancel(self, quiet: bool = False) -> None:
        """Ends the session without a blob (DELETE); quiet ignores a failure to."""
        try:
            self._client._request("DELETE", self.location, self.repo, _push(self.repo),
                                  ok=(200, 202, 204, 404), what=("upload", None))
        except (errors.RegistryError, errors.LimitExceeded):
            if not quiet:
                raise

    def _location(self, resp: Response) -> str:
        location = resp.header("Location")
        if not location:
            if getattr(self, "location", None):
                return self.location
            raise errors.RegistryError(f"{self._client.host}/{self.repo}: the upload answer "
                                       "has no Location", status=resp.status)
        return urljoin(resp.url, location)


def _range_end(resp: Response, default: int) -> int:
    """The offset after a session's Range header ("0-1023" -> 1024; none -> default)."""
    m = _RANGE.match((resp.header("Range") or "").strip())
    return int(m.group(1)) + 1 if m else default


def _repo(repo: str) -> str:
    if not isinstance(repo, str) or len(repo) > 255 or not _REPOSITORY.match(repo):
        raise errors.InvalidReference(f"invalid repository name {str(repo)[:100]!r}")
    return repo


def _is_digest(reference: str) -> bool:
    return reference.startswith("sha256:")


def _ref(reference: str) -> str:
    if _is_digest(reference):
        return check_digest(reference)
    if not isinstance(reference, str) or not _TAG.match(reference):
        raise errors.InvalidReference(f"invalid tag {str(reference)[:100]!r}")
    return reference


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def _classify(data: bytes, content_type: str | None, where: str) -> tuple[str, dict]:
    """(media type, parsed JSON) of a manifest we pull; everything else refused clearly."""
    try:
        parsed = json.loads(data)
        if not isinstance(parsed, dict):
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise errors.CorruptArchive(f"manifest {where} is not a JSON object") from None
    media_type = parsed.get("mediaType") or _media_type(content_type)
    if media_type in SCHEMA1_TYPES or parsed.get("schemaVersion") == 1:
        raise errors.UnsupportedManifest(
            f"manifest {where} is Docker image manifest schema 1, which registries stopped "
            "serving and containerd no longer pulls; push the image again with a current "
            "Docker, podman or skopeo")
    if media_type == OCI_ARTIFACT:
        raise errors.UnsupportedManifest(f"manifest {where} is an OCI artifact manifest, not "
                                         "a container image")
    if media_type in MANIFEST_TYPES:
        config = parsed.get("config")
        config_type = config.get("mediaType") if isinstance(config, dict) else None
        if config_type not in IMAGE_CONFIG_TYPES:
            raise errors.UnsupportedManifest(
                f"manifest {where} is an artifact (config media type "
                f"{str(config_type)[:100]!r}), not a container image")
    elif media_type not in INDEX_TYPES:
        raise errors.UnsupportedManifest(f"manifest {where} has media type "
                                         f"{str(media_type)[:100]!r}, neither an image "
                                         "manifest nor an index")
    return media_type, parsed


def _read_some(resp: Response) -> bytes:
    try:
        return resp.read(64 << 10)
    except Exception:       # noqa: BLE001 - only for the message of an error being raised
        return b""


def _registry_error(data: bytes) -> tuple[str | None, str | None]:
    """The first {code, message} of a registry's error JSON."""
    try:
        first = json.loads(data)["errors"][0]
        code, message = first.get("code"), first.get("message")
        return (str(code)[:100] if code else None), (str(message)[:300] if message else None)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None, None


_REASONS = {400: "bad request", 401: "unauthorized", 403: "forbidden", 404: "not found",
            405: "method not allowed", 416: "range not satisfiable", 429: "too many requests",
            500: "internal server error", 502: "bad gateway", 503: "service unavailable",
            504: "gateway timeout"}


def _window(limit: str) -> str:
    """ "100;w=21600" -> "100 per 6 h"."""
    count, _, rest = limit.partition(";")
    m = re.search(r"w=(\d+)", rest)
    if not m:
        return count.strip()
    secs = int(m.group(1))
    span = (f"{secs // 3600} h" if secs % 3600 == 0 else f"{secs // 60} min"
            if secs % 60 == 0 else f"{secs} s")
    return f"{count.strip()} per {span}"


def _rate_limited(resp: Response, where: str, said: str, code) -> errors.RateLimited:
    limit, remaining = resp.header("ratelimit-limit"), resp.header("ratelimit-remaining")
    wait = retry_after(resp.header("Retry-After"))
    parts = []
    if limit:
        parts.append(f"limit {_window(limit)}")
    if remaining:
        parts.append(f"{remaining.partition(';')[0].strip()} remaining")
    quota = f" ({', '.join(parts)})" if parts else ""
    if wait is not None:
        at = time.strftime("%H:%M:%S UTC", time.gmtime(time.time() + wait))
        when = f"; retry after {wait:.0f} s (at {at})"
    else:
        when = "; the registry did not say when to retry"
    return errors.RateLimited(f"{where}: rate limit reached{quota}: {said}{when}",
                              code=code, limit=limit, remaining=remaining, retry_after=wait)
