"""--platform as Docker reads it (containerd's platform specifiers, with the os and
architecture names the OCI image index allows): a value that is none is a usage error, and an
archive with no image for the platform asked for is refused, naming both."""

import io
import json
import os
import re

import pytest

import archives as A
from helpers import invoke_error as _error, oci_tar as _oci
from layerstore import Store, errors

L1 = A.layer(("d", "etc"), ("f", "etc/os-release", b"NAME=test\n"))


@pytest.fixture
def store():
    with Store(os.environ["LAYERSTORE_ROOT"]) as s:     # the store the CLI helpers use
        yield s


@pytest.mark.parametrize("value, message", [
    ("foo/amd64", "unknown operating system 'foo'"),
    ("linux/amd65", "unknown architecture 'amd65'"),
    ("linux/amd64/v8/x", "expected os[/arch[/variant]]"),
    ("linux//amd64", "expected os[/arch[/variant]]"),
    ("", "expected os[/arch[/variant]]"),
    ("linux/am d64", "expected os[/arch[/variant]]"),
    ("nonsense", "unknown architecture 'nonsense'"),
])
def test_unknown_platform_is_a_usage_error(store, tmp_path, value, message):
    path = tmp_path / "app.tar"
    path.write_bytes(A.docker_archive([([L1], ["app:1"])]))
    err = _error(["import", "--platform", value, str(path)], 2)
    assert "Invalid value for '--platform'" in err and message in err
    with pytest.raises(errors.InvalidPlatform, match=re.escape(message)):
        store.import_archive(path, platform=value)
    assert store.images() == []


@pytest.mark.parametrize("value, canonical", [
    ("linux/amd64", "linux/amd64"), ("linux/arm64/v8", "linux/arm64"),
    ("LINUX/AMD64", "linux/amd64"), ("linux/x86_64", "linux/amd64"),
    ("linux/aarch64", "linux/arm64"), ("arm64", "linux/arm64"), ("windows/amd64", "windows/amd64"),
    ("linux/armhf", "linux/arm/v7"),
])
def test_platforms_docker_accepts(value, canonical):
    """containerd's platform specifiers: os/arch[/variant], one part with the rest this
    machine's, and the names uname gives (x86_64, aarch64)."""
    from layerstore.formats.platforms import parse_platform
    assert parse_platform(value) == canonical
    assert parse_platform("linux").startswith("linux/")


def test_single_platform_archive_for_another_platform_is_refused(store, tmp_path):
    """A docker-archive (which says its platform only in the config) and an OCI layout whose
    index gives none: --platform for another platform refuses them, naming both; the
    matching platform, or none, imports them."""
    arm = A.config([L1], "arm64")
    docker = tmp_path / "arm.tar"
    docker.write_bytes(A.tar_of({
        "manifest.json": json.dumps([{"Config": A.digest(arm)[7:] + ".json",
                                      "RepoTags": ["arm:1"],
                                      "Layers": [A.digest(L1)[7:] + ".tar"]}]).encode(),
        A.digest(arm)[7:] + ".json": arm, A.digest(L1)[7:] + ".tar": L1}))
    oci = tmp_path / "arm-oci.tar"
    oci.write_bytes(_oci([L1], ["armoci:1"], arm).getvalue())
    for path in (docker, oci):
        err = _error(["import", "--platform", "linux/amd64", str(path)])
        assert "linux/arm64" in err and "linux/amd64" in err
        with pytest.raises(errors.PlatformMismatch, match="linux/arm64.*linux/amd64"):
            store.import_archive(path, platform="linux/amd64")
        assert isinstance(errors.PlatformMismatch("x"), errors.UnsupportedFormat)
        assert store.images() == []
    (image,) = store.import_archive(docker, platform="arm64")
    assert image.platform == "linux/arm64"
    (image,) = store.import_archive(oci)        # no --platform: whatever it holds, as docker load
    assert "docker.io/library/armoci:1" in image.tags


def test_multi_platform_index_names_both(store, tmp_path):
    blobs, desc = A.oci_blobs([L1], ["multi:1"], arch="arm64")
    with pytest.raises(errors.PlatformMismatch, match="linux/s390x.*linux/arm64"):
        store.import_archive(io.BytesIO(A.tar_of(A.oci_layout_files([desc], blobs))),
                             platform="linux/s390x")


def test_an_index_gives_the_best_image_for_the_platform(store, tmp_path):
    """As containerd picks: the exact variant before a fallback, a fallback when nothing
    better is there, and never an attestation entry (unknown/unknown), which is no image."""
    blobs, descs = {}, []
    for variant, content in (("v6", b"six\n"), ("v7", b"seven\n")):
        b, d = A.oci_blobs([A.layer(("f", "arm", content))], arch="arm")
        d["platform"]["variant"] = variant
        blobs.update(b)
        descs.append(d)
    junk = b'{"predicateType": "https://slsa.dev/provenance/v0.2"}'
    b, d = A.oci_blobs([junk])      # not a tar: importing it would fail
    d["platform"] = {"os": "unknown", "architecture": "unknown"}
    blobs.update(b)
    descs.append(d)
    layout = tmp_path / "layout"
    A.write_dir(A.oci_layout_files(descs, blobs), layout)
    for want, got in (("linux/arm", b"seven\n"), ("linux/arm/v7", b"seven\n"),
                      ("linux/arm/v8", b"seven\n"), ("linux/arm64", b"seven\n"),
                      ("linux/arm/v6", b"six\n")):
        with Store(tmp_path / want.replace("/", "-")) as s:
            (image,) = s.import_archive(layout, platform=want)
            assert s.open(image.id, "arm").read() == got, want
    with pytest.raises(errors.PlatformMismatch, match="linux/arm/v5"):
        store.import_archive(layout, platform="linux/arm/v5")
