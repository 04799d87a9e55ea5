"""The distribution v2 API of layerstore.registry.client against registry 2.8 (through the
fault proxy where a test needs to see or bend the wire): manifests of every kind and the
ones refused, digests checked on raw bytes, blobs, uploads monolithic and chunked, mounts,
and the registry's error JSON as layerstore.errors classes."""

from __future__ import annotations

import hashlib
import json
import os
from urllib.parse import urlsplit

import pytest
from registry_servers import CDN, Fault, make_client

from layerstore import errors
from layerstore.registry import client as C


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _manifest_gets(proxy):
    return [e for e in proxy.log if "/manifests/" in e["path"]]


# -- manifests ------------------------------------------------------------------------------

def test_docker_and_oci_manifests(proxy, seed):
    layer_digest, layer_size = seed.app.layers[0][:2]
    with make_client(proxy.host) as c:
        v2s2 = c.get_manifest("seed/app", "v2s2")
        oci = c.get_manifest("seed/app", "oci")
    assert (v2s2.media_type, v2s2.digest) == (C.DOCKER_MANIFEST, seed.app_v2s2_digest)
    assert (oci.media_type, oci.digest) == (C.OCI_MANIFEST, seed.app_oci_digest)
    for m in (v2s2, oci):
        assert m.digest == _sha(m.data) and not m.is_index
        assert m.json["config"]["digest"] == seed.app.config_digest
        assert [(layer["digest"], layer["size"]) for layer in m.json["layers"]] == [
            (layer_digest, layer_size)]
    # Every manifest request names all four media types.
    for e in _manifest_gets(proxy):
        assert [t.strip() for t in e["accept"].split(",")] == [
            C.OCI_INDEX, C.OCI_MANIFEST, C.DOCKER_LIST, C.DOCKER_MANIFEST]


def test_an_index_with_two_platforms_and_an_attestation(open_registry, seed):
    with make_client(open_registry.host) as c:
        index = c.get_manifest("seed/multi", "latest")
        assert index.is_index and index.media_type == C.OCI_INDEX
        assert index.digest == seed.index_digest
        entries = index.json["manifests"]
        platforms = [f"{e['platform']['os']}/{e['platform']['architecture']}" for e in entries]
        assert platforms == ["linux/amd64", "linux/arm64", "unknown/unknown"]
        assert entries[2]["annotations"]["vnd.docker.reference.type"] == "attestation-manifest"
        for entry in entries:
            m = c.get_manifest("seed/multi", entry["digest"])
            assert m.digest == entry["digest"] and m.size == entry["size"]
        assert [e["digest"] for e in entries[:2]] == [seed.platform_digests["linux/amd64"],
                                                      seed.platform_digests["linux/arm64"]]


def test_head_manifest(proxy, seed):
    with make_client(proxy.host) as c:
        d = c.head_manifest("seed/multi", "latest")
        assert (d.media_type, d.digest) == (C.OCI_INDEX, seed.index_digest)
        assert d.size == c.get_manifest("seed/multi", "latest").size
        assert c.head_manifest("seed/app", seed.app_oci_digest).digest == seed.app_oci_digest
    assert [e["method"] for e in _manifest_gets(proxy)] == ["HEAD", "GET", "HEAD"]


def test_a_manifest_by_digest_is_checked_against_that_digest(proxy, seed):
    with make_client(proxy.host) as c:
        assert c.get_manifest("seed/app", seed.app_oci_digest).digest == seed.app_oci_digest
        other = c.get_manifest("seed/app", "v2s2").data
        proxy.add(Fault("body", "GET", f"/manifests/{seed.app_oci_digest}", body=other))
        with pytest.raises(errors.DigestMismatch,
                           match=f"manifest {proxy.host}/seed/app@{seed.app_oci_digest}: its "
                                 f"bytes hash to {_sha(other)}"):
            c.get_manifest("seed/app", seed.app_oci_digest)


def test_a_manifest_by_tag_is_checked_against_docker_content_digest(proxy, seed):
    with make_client(proxy.host) as c:
        other = c.get_manifest("seed/app", "v2s2").data
        proxy.add(Fault("body", "GET", "/manifests/oci", body=other))
        with pytest.raises(errors.DigestMismatch,
                           match=f"the registry names it {seed.app_oci_digest}, its bytes hash "
                                 f"to {_sha(other)}"):
            c.get_manifest("seed/app", "oci")


_SCHEMA1 = json.dumps({"schemaVersion": 1, "name": "seed/app", "tag": "old",
                       "architecture": "amd64", "fsLayers": [], "history": [],
                       "signatures": []}).encode()


@pytest.mark.parametrize("content_type, body, message", [
    ("application/vnd.docker.distribution.manifest.v1+prettyjws", _SCHEMA1,
     "Docker image manifest schema 1"),
    ("application/json", _SCHEMA1, "Docker image manifest schema 1"),
    ("application/vnd.oci.artifact.manifest.v1+json",
     json.dumps({"mediaType": "application/vnd.oci.artifact.manifest.v1+json",
                 "artifactType": "application/vnd.example.sbom", "blobs": []}).encode(),
     "is an OCI artifact manifest, not a container image"),
    ("text/html", b"<html>hello</html>", "is not a JSON object"),
    ("application/vnd.example+json", b'{"schemaVersion": 2}',
     r"media type 'application/vnd.example\+json', neither an image manifest nor an index"),
])
def test_manifests_layerstore_cannot_pull_are_refused_clearly(proxy, content_type, body, message):
    proxy.add(Fault("status", "GET", "/manifests/old", status=200, body=body,
                    headers={"Content-Type": content_type}))
    with make_client(proxy.host) as c, pytest.raises((errors.UnsupportedManifest,
                                                      errors.CorruptArchive), match=message):
        c.get_manifest("seed/app", "old")


def test_an_artifact_in_an_image_manifest_is_refused(open_registry, seed):
    with make_client(open_registry.host) as c, pytest.raises(
            errors.UnsupportedManifest,
            match=r"is an artifact \(config media type "
                  r"'application/vnd.cncf.helm.config.v1\+json'\), not a container image"):
        c.get_manifest("seed/artifact", "latest")


def test_a_manifest_over_4_mib_is_refused(proxy):
    big = b'{"schemaVersion": 2, "pad": "' + b"x" * (4 << 20) + b'"}'
    proxy.add(Fault("status", "GET", "/manifests/big", status=200, body=big,
                    headers={"Content-Type": C.OCI_MANIFEST}))
    with make_client(proxy.host) as c, pytest.raises(errors.LimitExceeded,
                                                     match="over the 4194304 layerstore"):
        c.get_manifest("seed/app", "big")


def test_unknown_manifests_and_repositories(open_registry):
    with make_client(open_registry.host) as c:
        with pytest.raises(errors.ManifestUnknown) as info:
            c.get_manifest("seed/app", "no-such-tag")
        assert info.value.code == "MANIFEST_UNKNOWN" and isinstance(info.value, LookupError)
        assert str(info.value) == (f"{open_registry.host}/seed/app: manifest no-such-tag not "
                                   "found (MANIFEST_UNKNOWN: manifest unknown)")
        with pytest.raises(errors.ManifestUnknown) as info:
            c.head_manifest("no/such-repo", "latest")
        assert info.value.status == 404
        with pytest.raises(errors.ManifestUnknown, match="no/such-repo: manifest latest not"):
            c.get_manifest("no/such-repo", "latest")


def test_names_are_checked_before_they_reach_a_url(open_registry):
    with make_client(open_registry.host) as c:
        for repo in ("../etc", "Upper/case", "a//b", "", "a/b/"):
            with pytest.raises(errors.InvalidReference):
                c.get_manifest(repo, "latest")
        for ref in ("../latest", "sha256:abc", "-tag", "a" * 129):
            with pytest.raises((errors.InvalidReference, errors.CorruptArchive)):
                c.get_manifest("seed/app", ref)


def test_put_manifest(open_registry, seed):
    with make_client(open_registry.host) as c:
        m = c.get_manifest("seed/app", "oci")
        assert c.mount_blob("test/copy", seed.app.config_digest, "seed/app")
        assert c.mount_blob("test/copy", seed.app.layers[0][0], "seed/app")
        assert c.put_manifest("test/copy", "v1", m.data, m.media_type) == m.digest
        assert c.get_manifest("test/copy", "v1").digest == m.digest
        assert c.put_manifest("test/copy", m.digest, m.data, m.media_type) == m.digest
        with pytest.raises(errors.RegistryError) as info:    # its blobs are not there
            c.put_manifest("test/empty-repo", "v1", m.data, m.media_type)
        assert info.value.code == "MANIFEST_BLOB_UNKNOWN" and info.value.status == 400


# -- blobs ----------------------------------------------------------------------------------

def test_blobs_head_get_and_configs(open_registry, seed):
    digest, size = seed.app.layers[0][:2]
    missing = _sha(b"not there")
    with make_client(open_registry.host) as c:
        assert c.head_blob("seed/app", digest) == size
        assert c.head_blob("seed/app", missing) is None
        assert c.get_blob_bytes("seed/app", seed.app.config_digest) == seed.app.config
        with pytest.raises(errors.BlobUnknown) as info:
            c.get_blob("seed/app", missing)
        assert info.value.code == "BLOB_UNKNOWN" and isinstance(info.value, LookupError)
        with pytest.raises(errors.LimitExceeded, match="over the 1000 layerstore reads whole"):
            c.get_blob_bytes("seed/app", digest, limit=1000)
        with pytest.raises(errors.LimitExceeded):
            c.get_blob_bytes("seed/app", digest, size, limit=1000)


# -- uploads --------------------------------------------------------------------------------

def test_a_monolithic_upload(proxy):
    data = os.urandom(300_000)
    with make_client(proxy.host) as c:
        assert c.push_blob("test/mono", _sha(data), data) == _sha(data)
        with c.get_blob("test/mono", _sha(data), len(data)) as r:
            assert r.read() == data
    ops = [(e["method"], e["status"]) for e in proxy.log if "/blobs/uploads/" in e["path"]]
    assert ops == [("POST", 202), ("PUT", 201)]


def test_a_monolithic_upload_from_a_file(proxy, tmp_path):
    data = os.urandom(200_000)
    (tmp_path / "blob").write_bytes(data)
    with make_client(proxy.host) as c, open(tmp_path / "blob", "rb") as f:
        c.push_blob("test/mono-file", _sha(data), f, size=len(data))
        assert c.head_blob("test/mono-file", _sha(data)) == len(data)


def test_a_chunked_upload_follows_each_location(proxy):
    data = os.urandom(350_000)
    with make_client(proxy.host) as c:
        c.push_blob("test/chunked", _sha(data), data, chunk_size=100_000)
        with c.get_blob("test/chunked", _sha(data), len(data)) as r:
            assert r.read() == data
    session = [e for e in proxy.log if "/blobs/uploads/" in e["path"]]
    assert [(e["method"], e["content_range"], e["length"]) for e in session] == [
        ("POST", None, 0), ("PATCH", "0-99999", 100_000), ("PATCH", "100000-199999", 100_000),
        ("PATCH", "200000-299999", 100_000), ("PATCH", "300000-349999", 50_000),
        ("PUT", None, 0)]
    for before, after in zip(session, session[1:]):     # each request at the last Location
        location = urlsplit(before["location"])
        assert after["path"].split("&digest=")[0] == f"{location.path}?{location.query}"
    assert session[-1]["path"].endswith(f"digest={_sha(data).replace(':', '%3A')}")


def test_chunks_grow_to_the_registrys_minimum(proxy):
    data = os.urandom(350_000)
    proxy.add(Fault("headers", "POST", "/blobs/uploads/", headers={"OCI-Chunk-Min-Length":
                                                                   "200000"}))
    with make_client(proxy.host) as c:
        c.push_blob("test/minimum", _sha(data), data, chunk_size=100_000)
    assert [e["length"] for e in proxy.log if e["method"] == "PATCH"] == [200_000, 150_000]


def test_a_416_asks_the_session_where_it_stands(proxy):
    """A 416 for a PATCH: the client GETs the session's Location for its offset and goes on
    from there (here the registry never saw the chunk: it is sent again)."""
    data = os.urandom(300_000)
    with make_client(proxy.host) as c:
        upload = c.start_upload("test/range")
        upload.patch(data[:100_000])
        proxy.add(Fault("status", "PATCH", "/blobs/uploads/", status=416))
        upload.patch(data[100_000:200_000])
        upload.patch(data[200_000:])
        assert upload.commit(_sha(data)) == _sha(data)
        with c.get_blob("test/range", _sha(data), len(data)) as r:
            assert r.read() == data
    ops = [(e["method"], e["content_range"], e["status"]) for e in proxy.log
           if "/blobs/uploads/" in e["path"]]
    assert ops == [("POST", None, 202), ("PATCH", "0-99999", 202),
                   ("PATCH", "100000-199999", 416), ("GET", None, 204),
                   ("PATCH", "100000-199999", 202), ("PATCH", "200000-299999", 202),
                   ("PUT", None, 201)]


def test_a_cancelled_upload_is_gone(open_registry):
    with make_client(open_registry.host) as c:
        upload = c.start_upload("test/cancel")
        upload.patch(b"some bytes")
        assert upload.status() == 10
        upload.cancel()
        with pytest.raises(errors.RegistryError) as info:
            upload.status()
        assert (info.value.status, info.value.code) == (404, "BLOB_UPLOAD_UNKNOWN")


def test_a_wrong_digest_is_refused_by_the_registry_and_the_session_cancelled(proxy):
    data = b"these bytes"
    with make_client(proxy.host) as c, pytest.raises(errors.RegistryError) as info:
        c.push_blob("test/wrong", _sha(b"other bytes"), data)
    assert info.value.code == "DIGEST_INVALID" and info.value.status == 400
    assert [e["method"] for e in proxy.log if "/blobs/uploads/" in e["path"]] == [
        "POST", "PUT", "DELETE"]


def test_a_mount_or_an_upload_session_in_its_place(proxy, seed):
    digest, size = seed.app.layers[0][:2]
    with make_client(proxy.host) as c:
        assert c.mount_blob("test/mount", digest, "seed/app") is True
        assert c.head_blob("test/mount", digest) == size
        assert c.mount_blob("test/mount2", _sha(b"nowhere"), "seed/app") is False
    posts = [(e["method"], e["status"]) for e in proxy.log if "/blobs/uploads/" in e["path"]]
    assert posts == [("POST", 201), ("POST", 202), ("DELETE", 204)]
    assert f"mount={digest.replace(':', '%3A')}&from=seed/app" in proxy.log[1]["path"]


# -- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("status, code, kind", [
    (401, "UNAUTHORIZED", errors.AuthenticationRequired),
    (403, "DENIED", errors.AccessDenied),
    (404, "NAME_UNKNOWN", errors.ManifestUnknown),
    (400, "MANIFEST_INVALID", errors.RegistryError),
    (405, "UNSUPPORTED", errors.RegistryError),
    (500, None, errors.RegistryError),
])
def test_registry_errors_become_layerstore_errors(proxy, status, code, kind):
    body = json.dumps({"errors": [{"code": code, "message": "said the registry",
                                   "detail": {}}]}).encode() if code else b"<html>oops</html>"
    proxy.add(Fault("status", "GET", "/manifests/x", status=status, body=body, times=9))
    with make_client(proxy.host, retries=0) as c, pytest.raises(kind) as info:
        c.get_manifest("seed/app", "x")
    e = info.value
    assert type(e) is kind and (e.status, e.code) == (status, code)
    assert isinstance(e, errors.RegistryError) and isinstance(e, OSError)
    assert ("said the registry" if code else "internal server error") in str(e)


def test_a_host_that_is_not_a_registry(tmp_path):
    cdn = CDN()
    cdn.root = tmp_path.resolve()
    try:
        with make_client(cdn.host) as c, pytest.raises(errors.RegistryError,
                                                        match="GET /v2/ answered 404"):
            c.get_manifest("seed/app", "latest")
    finally:
        cdn.stop()


def test_rate_limit_headers_are_kept(proxy):
    proxy.add(Fault("headers", "HEAD", "/manifests/", headers={
        "ratelimit-limit": "100;w=21600", "ratelimit-remaining": "76;w=21600"}))
    with make_client(proxy.host) as c:
        assert c.ratelimit is None
        c.head_manifest("seed/app", "oci")
        assert c.ratelimit == C.RateLimit("100;w=21600", "76;w=21600", None)


def test_docker_hub_names_map_to_its_registry_host():
    assert C.endpoint("docker.io") == C.endpoint("index.docker.io") == "registry-1.docker.io"
    assert C.endpoint("quay.io") == "quay.io" and C.endpoint("127.0.0.1:5000") == "127.0.0.1:5000"
