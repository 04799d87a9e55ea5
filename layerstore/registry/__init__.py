"""layerstore's registry client: the OCI distribution protocol (Docker Hub, GHCR, Harbor,
`registry` on S3), kept apart from the store.  One module per job, as go-containerregistry
separates pkg/name, pkg/authn and pkg/v1/remote/transport:

    transport.py    HTTP through one urllib3 PoolManager: TLS per host and plain http for
                    insecure ones, retries with backoff and Retry-After, counters, and the
                    BlobReader that verifies a blob as it streams and resumes with Range
    auth.py         WWW-Authenticate, bearer tokens per scope set (refreshed before they
                    expire), Basic, identity tokens, realm safety
    credentials.py  auth.json, Docker's config.json, docker-credential-* helpers, --creds
    client.py       the v2 API: ping, manifests, blobs, uploads, mounts; registry errors as
                    layerstore.errors classes

Reading an image (what pull will do, minus the store):

    import json
    from layerstore.registry import Client

    with Client("docker.io") as hub:            # registry-1.docker.io; anonymous unless
                                                # auth.json/config.json have credentials
        head = hub.head_manifest("library/python", "3.12-slim")   # a HEAD is not a pull
        index = hub.get_manifest("library/python", head.digest)   # raw bytes verified
        entry = next(e for e in index.json["manifests"]
                     if e["platform"]["architecture"] == "amd64")
        image = hub.get_manifest("library/python", entry["digest"])
        config = json.loads(hub.get_blob_bytes("library/python", image.json["config"]["digest"],
                                               image.json["config"]["size"]))
        layer = image.json["layers"][0]
        with hub.get_blob("library/python", layer["digest"], layer["size"]) as blob:
            while chunk := blob.read(1 << 20):  # the read that completes the blob raises
                ...                             # errors.DigestMismatch when it is not the
                                                # digest; a dropped connection resumes
        print(hub.counters.snapshot())          # requests, bytes, retries, resumes
        print(hub.ratelimit)                    # Docker Hub's ratelimit-* headers, if sent

Writing one (what push will do):

    from layerstore.registry import Client, parse_creds

    with Client("127.0.0.1:5000") as reg:       # loopback: insecure, plain http as Docker
        for digest, path, size in blobs:
            if reg.head_blob("team/app", digest) is not None:
                continue                        # already there
            if reg.mount_blob("team/app", digest, from_repo="team/base"):
                continue                        # linked from another repository
            with open(path, "rb") as f:         # one PUT; chunk_size=... for PATCHes
                reg.push_blob("team/app", digest, f, size=size)
        reg.put_manifest("team/app", "v1", manifest_bytes, media_type)

Options, as the CLI flags pass them (RegistryOptions(...).client(registry) makes the same
Client from the flags' values; cli.py: registry_options):

    Client("quay.io", credentials=parse_creds("user:password"))   # --creds
    Client("ghcr.io", authfile="/run/user/1000/containers/auth.json")   # --authfile
    Client("reg.internal:5000", insecure_registries=["reg.internal:5000"])
    Client("reg.internal", tls_verify=False)                      # --tls-verify=false
    Client("reg.internal", ca_file="/etc/ssl/internal-ca.pem")

Errors are layerstore.errors classes: RegistryUnreachable (ConnectionError),
AuthenticationRequired and AccessDenied (PermissionError), RateLimited (the limit, what
remains, when to retry), ManifestUnknown and BlobUnknown (LookupError), RangeUnsupported,
UnsupportedManifest (schema 1, artifacts), DigestMismatch and LimitExceeded, CredentialError,
and RegistryError with the registry's error code for the rest.  None of them, no repr and no
log line, holds a password or token.
"""

from .auth import Challenge, parse_challenges
from .client import (CONFIG_LIMIT, DOCKER_LIST, DOCKER_MANIFEST, MANIFEST_LIMIT, OCI_INDEX,
                     OCI_MANIFEST, Client, Descriptor, Manifest, RateLimit, RegistryOptions, Upload,
                     endpoint)
from .credentials import Credentials, lookup, parse_creds
from .transport import BlobReader, Counters, Transport

__all__ = [
    "BlobReader",
    "CONFIG_LIMIT",
    "Challenge",
    "Client",
    "Counters",
    "Credentials",
    "DOCKER_LIST",
    "DOCKER_MANIFEST",
    "Descriptor",
    "MANIFEST_LIMIT",
    "Manifest",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "RateLimit",
    "RegistryOptions",
    "Transport",
    "Upload",
    "endpoint",
    "lookup",
    "parse_creds",
    "parse_challenges",
]
