"""References as Docker resolves them (distribution/reference's normalize.go), and the one
platform matcher import and pull share (containerd's platforms: Normalize and Only)."""

import pytest

from layerstore import errors
from layerstore.formats.platforms import (is_attestation, normalize_platform, parse_platform,
                                          platform_rank, runnable_platforms)
from layerstore.formats.reference import normalize_tag, parse_reference

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("ref, domain, path, tag, digest", [
    ("python", "docker.io", "library/python", "latest", None),
    ("python:3.12-slim", "docker.io", "library/python", "3.12-slim", None),
    ("docker.io/ubuntu", "docker.io", "library/ubuntu", "latest", None),
    ("index.docker.io/ubuntu:22.04", "docker.io", "library/ubuntu", "22.04", None),
    ("index.docker.io/library/ubuntu", "docker.io", "library/ubuntu", "latest", None),
    ("corpus/python", "docker.io", "corpus/python", "latest", None),
    ("docker.io/corpus/python:1", "docker.io", "corpus/python", "1", None),
    ("localhost/app", "localhost", "app", "latest", None),
    ("localhost:5000/app:v1", "localhost:5000", "app", "v1", None),
    ("127.0.0.1:5000/a/b/c", "127.0.0.1:5000", "a/b/c", "latest", None),
    ("[::1]:5000/app", "[::1]:5000", "app", "latest", None),
    ("[2001:db8::1]/app:t", "[2001:db8::1]", "app", "t", None),
    ("ghcr.io/owner/repo", "ghcr.io", "owner/repo", "latest", None),
    ("Foo/bar", "Foo", "bar", "latest", None),       # an upper-case first part is a host
    (f"python@{DIGEST}", "docker.io", "library/python", None, DIGEST),
    (f"quay.io/a/b:t@{DIGEST}", "quay.io", "a/b", "t", DIGEST),
    ("a.b/c_d__e-f--g.h", "a.b", "c_d__e-f--g.h", "latest", None),
])
def test_references_normalize_as_docker(ref, domain, path, tag, digest):
    r = parse_reference(ref)
    assert (r.domain, r.path, r.tag, r.digest) == (domain, path, tag, digest)
    assert parse_reference(str(r)) == r        # the normalized form reads back the same


@pytest.mark.parametrize("ref, reason", [
    ("", "invalid reference format"),
    ("UPPER", "must be lowercase"),
    ("docker.io/Library/ubuntu", "must be lowercase"),
    ("a" * 64, "64 hexadecimal digits"),
    ("python@sha256:abc", "sha256:<64 lowercase hex"),
    (f"python@md5:{'a' * 32}", "sha256:<64 lowercase hex"),
    ("python:", "bad tag"),
    ("python:-x", "bad tag"),
    ("python:" + "t" * 129, "bad tag"),
    ("a//b", "bad repository name"),
    ("a/b/", "bad repository name"),
    ("-a/b", "bad repository name"),
    ("a..b/c", "bad registry"),
    ("-host.io/c", "bad registry"),
    ("host.io:port/c", "bad registry"),
    ("x.io/" + "a" * 251, "longer than 255"),
])
def test_references_docker_refuses_are_refused(ref, reason):
    with pytest.raises(errors.InvalidReference, match=reason):
        parse_reference(ref)


def test_a_tag_in_the_store_is_the_normalized_name_and_tag():
    assert normalize_tag("docker.io/ubuntu") == "docker.io/library/ubuntu:latest"
    assert normalize_tag("ubuntu:22.04") == "docker.io/library/ubuntu:22.04"
    with pytest.raises(errors.InvalidReference, match="by digest"):
        normalize_tag(f"ubuntu@{DIGEST}")


@pytest.mark.parametrize("given, normal", [
    ("linux/x86_64", "linux/amd64"), ("linux/amd64/v1", "linux/amd64"),
    ("linux/amd64/v3", "linux/amd64/v3"), ("linux/aarch64", "linux/arm64"),
    ("linux/arm64/v8", "linux/arm64"), ("linux/arm64/8", "linux/arm64"),
    ("linux/arm", "linux/arm/v7"), ("linux/armhf", "linux/arm/v7"),
    ("linux/armel", "linux/arm/v6"), ("linux/arm/6", "linux/arm/v6"),
    ("Linux/AMD64", "linux/amd64"), ("windows/amd64", "windows/amd64"),
])
def test_platforms_normalize_as_containerd(given, normal):
    assert normalize_platform(given) == normal
    assert parse_platform(given) == normal


def test_platform_fallbacks_are_ordered_as_containerd_orders_them():
    assert runnable_platforms("linux/arm/v7") == ["linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]
    assert runnable_platforms("linux/arm64") == ["linux/arm64", "linux/arm/v8", "linux/arm/v7",
                                                 "linux/arm/v6", "linux/arm/v5"]
    assert runnable_platforms("linux/amd64/v3") == ["linux/amd64/v3", "linux/amd64/v2",
                                                    "linux/amd64", "linux/386"]
    assert runnable_platforms("linux/amd64") == ["linux/amd64", "linux/386"]
    assert platform_rank("linux/arm64/v8", "linux/arm64") == 0
    assert platform_rank("linux/arm/v6", "linux/arm") == 1
    assert platform_rank("linux/arm/v7", "linux/arm/v6") is None      # never upwards
    assert platform_rank("linux/amd64", "linux/arm64") is None
    assert platform_rank("windows/amd64", "linux/amd64") is None


def test_attestation_entries_are_no_images():
    assert is_attestation({"platform": {"os": "unknown", "architecture": "unknown"}})
    assert is_attestation({"annotations": {"vnd.docker.reference.type":
                                           "attestation-manifest"}})
    assert not is_attestation({"platform": {"os": "linux", "architecture": "amd64"}})
