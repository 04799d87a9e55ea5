"""Pull against real registry processes (tests/registry_servers.py): the seeded images as Docker
schema 2 and OCI, a two-platform index with an attestation entry, an artifact; open, htpasswd
and token auth, a CDN that must never see Authorization; a fault proxy (429, 5xx, a reset
mid-blob, a server that ignores Range, a download held mid-way and the puller killed).  Every
pulled image checks out equal to `umoci unpack` of the same image pulled by skopeo."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
from registry_servers import (PASSWORD, USER, Fault, make_client, sha256)

from helpers import differences, invoke, python_env, run, run_on_terminal, snapshot
from layerstore import Store, errors
from layerstore.registry import RegistryOptions, parse_creds

TOKEN_OPTIONS = RegistryOptions(allow_private_realm=True)


@pytest.fixture
def sleeps(monkeypatch):
    """Registry clients whose waits (backoff, Retry-After) are recorded, not slept."""
    waits: list[float] = []

    def client(self, registry):
        return make_client(registry, sleeps=waits, credentials=self.credentials,
                           allow_private_realm=True)

    monkeypatch.setattr(RegistryOptions, "client", client)
    return waits


def _umoci_tree(host: str, ref: str, tmp_path, platform: str | None = None,
                mtimes: bool = True):
    """What umoci unpacks from the image skopeo copies out of the registry."""
    if shutil.which("skopeo") is None or shutil.which("umoci") is None:
        pytest.skip("needs skopeo and umoci")
    layout, bundle = tmp_path / "umoci-layout", tmp_path / "umoci-bundle"
    shutil.rmtree(layout, ignore_errors=True)
    shutil.rmtree(bundle, ignore_errors=True)
    # gzip layers: umoci 0.4 cannot unpack zstd ones.
    args = ["skopeo", "copy", "-q", "--src-tls-verify=false", "--dest-compress",
            "--dest-compress-format", "gzip"]
    if platform:
        os_, arch, *variant = platform.split("/")
        args += ["--override-os", os_, "--override-arch", arch]
        if variant:
            args += ["--override-variant", variant[0]]
    subprocess.run(args + [f"docker://{host}/{ref}", f"oci:{layout}:x"], check=True,
                   capture_output=True)
    argv = ["umoci", "unpack", "--image", f"{layout}:x", str(bundle)]
    if os.geteuid() != 0:
        argv.insert(2, "--rootless")
    subprocess.run(argv, check=True, capture_output=True)
    return snapshot(str(bundle / "rootfs"), owners=os.geteuid() == 0, mtimes=mtimes)[0]


def _check(store: Store, image, host: str, ref: str, tmp_path, platform=None,
           mtimes: bool = False) -> None:
    """The pulled image: diffIDs as its config says, fsck clean, checkout = umoci unpack
    (mtimes too where asked: the seeded layers leave parent directories implicit, which
    umoci makes with the time of the unpack)."""
    config = store.inspect(image.id).config
    assert list(image.diff_ids) == config["rootfs"]["diff_ids"]
    assert store.fsck() == []
    dest = tmp_path / "checkout"
    shutil.rmtree(dest, ignore_errors=True)
    store.checkout(image.id, dest)
    ours = snapshot(str(dest), owners=os.geteuid() == 0, mtimes=mtimes)[0]
    assert differences(ours, _umoci_tree(host, ref, tmp_path, platform, mtimes)) == []


def _manifest_and_blob_requests(log) -> tuple[int, int]:
    return (sum("/manifests/" in e["path"] for e in log),
            sum("/blobs/" in e["path"] for e in log))


# ---- what is pulled -------------------------------------------------------------------------

@pytest.mark.parametrize("tag", ["v2s2", "oci"])
def test_pull_checks_out_as_umoci_unpacks_it(open_registry, seed, tag, tmp_path):
    ref = f"seed/app:{tag}"
    with Store(tmp_path / "s") as store:
        (image,) = store.pull(f"{open_registry.host}/{ref}")
        assert image.id == seed.app.config_digest
        assert image.tags == (f"{open_registry.host}/{ref}",)
        digest = seed.app_v2s2_digest if tag == "v2s2" else seed.app_oci_digest
        assert image.repo_digests == (f"{open_registry.host}/seed/app@{digest}",)
        assert image.source_format == "registry"
        _check(store, image, open_registry.host, ref, tmp_path)
        # name@digest names the image pulled by it; the manifest is the registry's bytes.
        assert store.image(f"{open_registry.host}/seed/app@{digest}").id == image.id
        assert store.inspect(image.id).manifest["config"]["digest"] == image.id
        (layer,) = store.inspect(image.id).layers
        assert seed.app.layers[0][0] in layer.blob_digests


def test_pull_by_digest_has_no_tag(open_registry, seed, tmp_path):
    ref = f"{open_registry.host}/seed/app@{seed.app_oci_digest}"
    with Store(tmp_path / "s") as store:
        (image,) = store.pull(ref)
        assert image.tags == () and store.image(ref).id == image.id


def test_index_gives_the_platform_asked_for_and_skips_the_attestation(open_registry, seed,
                                                                      tmp_path):
    ref = "seed/multi:latest"
    with Store(tmp_path / "s") as store:
        (arm,) = store.pull(f"{open_registry.host}/{ref}", platform="linux/arm64/v8")
        assert arm.platform == "linux/arm64"
        assert arm.repo_digests == (f"{open_registry.host}/seed/multi@{seed.index_digest}",)
        _check(store, arm, open_registry.host, ref, tmp_path, platform="linux/arm64")
        with pytest.raises(errors.PlatformMismatch, match="linux/amd64, linux/arm64"):
            store.pull(f"{open_registry.host}/{ref}", platform="linux/s390x")


def test_all_platforms_pulls_each_image_and_tags_the_one_for_this_machine(open_registry,
                                                                          tmp_path):
    with Store(tmp_path / "s") as store:
        images = store.pull(f"{open_registry.host}/seed/multi", all_platforms=True,
                            platform="linux/amd64")
        assert sorted(i.platform for i in images) == ["linux/amd64", "linux/arm64"]
        tagged = [i for i in images if i.tags]
        assert [i.platform for i in tagged] == ["linux/amd64"]
        assert store.fsck() == []


def test_artifacts_and_schema_1_are_refused(open_registry, proxy, tmp_path):
    with Store(tmp_path / "s") as store:
        with pytest.raises(errors.UnsupportedManifest, match="artifact"):
            store.pull(f"{open_registry.host}/seed/artifact")
        schema1 = json.dumps({"schemaVersion": 1, "name": "seed/app", "tag": "old",
                              "fsLayers": [], "history": []}).encode()
        mt = "application/vnd.docker.distribution.manifest.v1+prettyjws"
        proxy.add(Fault("status", "HEAD", "/manifests/old", status=200,
                        headers={"Docker-Content-Digest": sha256(schema1), "Content-Type": mt,
                                 "Content-Length": str(len(schema1))}))
        proxy.add(Fault("status", "GET", "/manifests/sha256:", status=200, body=schema1,
                        headers={"Content-Type": mt}))
        with pytest.raises(errors.UnsupportedManifest, match="schema 1"):
            store.pull(f"{proxy.host}/seed/app:old")
        assert store.images() == []


def test_a_head_without_a_digest_falls_back_to_a_get_of_the_tag(open_registry, proxy, seed,
                                                                tmp_path):
    proxy.add(Fault("status", "HEAD", "/manifests/v2s2", status=200,
                    headers={"Content-Length": "0"}))
    with Store(tmp_path / "s") as store:
        (image,) = store.pull(f"{proxy.host}/seed/app:v2s2")
        assert image.repo_digests == (f"{proxy.host}/seed/app@{seed.app_v2s2_digest}",)
    assert [e["method"] for e in proxy.log if "/manifests/" in e["path"]] == ["HEAD", "GET"]


def test_a_manifest_whose_bytes_are_not_its_digest_is_refused(open_registry, proxy, tmp_path):
    proxy.add(Fault("body", "GET", "/manifests/sha256:", body=b'{"schemaVersion": 2}'))
    with Store(tmp_path / "s") as store:
        with pytest.raises(errors.DigestMismatch):
            store.pull(f"{proxy.host}/seed/app:v2s2")
        assert store.images() == []


def test_second_pull_is_one_manifest_request_and_no_blob_request(open_registry, proxy,
                                                                 tmp_path):
    with Store(tmp_path / "s") as store:
        for ref in ("seed/app:v2s2", "seed/multi"):
            first = store.pull(f"{proxy.host}/{ref}")
            proxy.log.clear()
            seen = []
            again = store.pull(f"{proxy.host}/{ref}", progress=seen.append)
            assert [i.id for i in again] == [i.id for i in first]
            assert _manifest_and_blob_requests(proxy.log) == (1, 0), proxy.log
            assert {layer.action for layer in seen[-1].layers} == {"skipped"}
        # A layer stored by its diffID is not requested when another image names it.
        proxy.log.clear()
        store.pull(f"{proxy.host}/seed/app:oci")
        assert _manifest_and_blob_requests(proxy.log)[1] == 0, proxy.log


def test_removing_the_image_drops_the_index_bytes_kept_for_it(open_registry, seed, tmp_path):
    from helpers import context
    with Store(tmp_path / "s") as store:
        (image,) = store.pull(f"{open_registry.host}/seed/multi", platform="linux/arm64")
        index = context(store).index
        with index.read() as txn:
            assert index.metadata(txn, seed.index_digest) is not None
        store.remove(image.id)
        with index.read() as txn:
            assert index.metadata(txn, seed.index_digest) is None
        store.gc()
        assert store.fsck() == []


def test_blob_locations_are_recorded_for_blobs_the_store_holds(open_registry, seed, tmp_path):
    from helpers import context
    with Store(tmp_path / "s") as store:
        store.pull(f"{open_registry.host}/seed/app:v2s2")
        ctx = context(store)
        with ctx.index.read() as txn:
            assert ctx.index.blob_locations(txn, seed.app.layers[0][0]) == [
                f"{open_registry.host}/seed/app"]


# ---- authentication -------------------------------------------------------------------------

def test_htpasswd_registry_needs_the_credentials(htpasswd_registry, seed, tmp_path):
    ref = f"{htpasswd_registry.host}/seed/app:v2s2"
    with Store(tmp_path / "s") as store:
        with pytest.raises(errors.AuthenticationRequired):
            store.pull(ref)
        options = RegistryOptions(credentials=parse_creds(f"{USER}:{PASSWORD}"))
        (image,) = store.pull(ref, registry=options)
        assert image.id == seed.app.config_digest and store.fsck() == []


def test_token_registry_anonymous_pull(token_registry, token_server, seed, tmp_path):
    with Store(tmp_path / "s") as store:
        (image,) = store.pull(f"{token_registry.host}/seed/app:oci", registry=TOKEN_OPTIONS)
        assert image.id == seed.app.config_digest
    assert any("repository:seed/app:pull" in e.get("scopes", []) for e in token_server.log)


def test_blobs_from_a_cdn_never_carry_authorization(cdn_registry, seed, tmp_path):
    registry, cdn = cdn_registry
    with Store(tmp_path / "s") as store:
        (image,) = store.pull(f"{registry.host}/seed/app:v2s2", registry=TOKEN_OPTIONS)
        assert image.id == seed.app.config_digest and store.fsck() == []
    assert any(e["method"] == "GET" for e in cdn.log)     # the blobs came from the CDN
    assert not any(e["authorization"] for e in cdn.log)


# ---- faults ---------------------------------------------------------------------------------

def _layer(seed):
    digest, size, _, _ = seed.app.layers[0]
    return digest, size


def test_429_with_retry_after_is_waited_for(open_registry, proxy, sleeps, tmp_path):
    proxy.add(Fault("status", "HEAD", "/manifests/", status=429,
                    headers={"Retry-After": "7"}))
    with Store(tmp_path / "s") as store:
        (image,) = store.pull(f"{proxy.host}/seed/app:v2s2")
        assert store.fsck() == []
    assert 7.0 in sleeps


def test_a_rate_limit_names_the_limit_and_commits_nothing(open_registry, proxy, sleeps,
                                                          tmp_path):
    proxy.add(Fault("status", "GET", "/blobs/", status=429, times=10,
                    headers={"Retry-After": "3600", "ratelimit-limit": "100;w=21600",
                             "ratelimit-remaining": "0;w=21600"}))
    with Store(tmp_path / "s") as store:
        with pytest.raises(errors.RateLimited, match="limit 100 per 6 h.*retry after 3600 s"):
            store.pull(f"{proxy.host}/seed/app:v2s2")
        assert store.images() == []


def test_5xx_is_retried(open_registry, proxy, seed, sleeps, tmp_path):
    digest, _ = _layer(seed)
    proxy.add(Fault("status", "GET", f"/blobs/{digest}", status=503, times=2))
    with Store(tmp_path / "s") as store:
        store.pull(f"{proxy.host}/seed/app:v2s2")
        assert store.fsck() == []
    assert len(sleeps) == 2


def test_a_reset_mid_blob_resumes_where_it_broke(open_registry, proxy, seed, sleeps, tmp_path):
    digest, size = _layer(seed)
    proxy.add(Fault("reset", "GET", f"/blobs/{digest}", after=300_000))
    with Store(tmp_path / "s") as store:
        seen = []
        (image,) = store.pull(f"{proxy.host}/seed/app:v2s2", progress=seen.append)
        (layer,) = seen[-1].layers
        # Resumed, not restarted: every byte came once.
        assert (layer.action, layer.bytes, layer.resumes, layer.requests) == (
            "downloaded", size, 1, 2)
        ranges = [e["range"] for e in proxy.log if digest in e["path"]]
        assert ranges[0] is None and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"
        _check(store, image, open_registry.host, "seed/app:v2s2", tmp_path)


def test_a_server_ignoring_range_is_read_again_from_the_start(open_registry, proxy, seed,
                                                              sleeps, tmp_path):
    digest, size = _layer(seed)
    proxy.add(Fault("reset", "GET", f"/blobs/{digest}", after=300_000))
    proxy.add(Fault("ignore_range", "GET", f"/blobs/{digest}"))
    with Store(tmp_path / "s") as store:
        seen = []
        store.pull(f"{proxy.host}/seed/app:v2s2", progress=seen.append)
        (layer,) = seen[-1].layers
        assert layer.action == "downloaded" and size < layer.bytes <= size + 300_000
        assert store.fsck() == []


def test_a_blob_that_is_not_its_digest_commits_nothing(open_registry, proxy, seed, tmp_path):
    digest, size = _layer(seed)
    proxy.add(Fault("body", "GET", f"/blobs/{digest}", body=os.urandom(size)))
    with Store(tmp_path / "s") as store:
        with pytest.raises(errors.CorruptArchive):    # not a layer, and not its digest
            store.pull(f"{proxy.host}/seed/app:v2s2")
        assert store.images() == []
        assert all(p.garbage for p in store.fsck())


def test_sigkill_mid_download_then_pull_again(open_registry, proxy, seed, tmp_path):
    digest, _ = _layer(seed)
    root = tmp_path / "s"
    with Store(root) as store:
        (before,) = store.pull(f"{open_registry.host}/seed/multi", platform="linux/amd64")
    hold = proxy.add(Fault("hold", "GET", f"/blobs/{digest}", after=400_000))
    proc = subprocess.Popen([sys.executable, "-m", "layerstore", "--root", str(root), "pull",
                             f"{proxy.host}/seed/app:v2s2"], env=python_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert hold.held.wait(60), "the pull never reached the blob"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        hold.release.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with Store(root) as store:
        assert [i.id for i in store.images()] == [before.id]      # nothing lost, nothing half
        assert all(p.garbage for p in store.fsck())
        (image,) = store.pull(f"{proxy.host}/seed/app:v2s2")
        store.gc()
        assert store.fsck() == []
        _check(store, image, open_registry.host, "seed/app:v2s2", tmp_path)
        _check(store, before, open_registry.host, "seed/multi", tmp_path,
               platform="linux/amd64")


# ---- the command ----------------------------------------------------------------------------

def test_cli_pull_json_reports_each_layer(open_registry, seed, tmp_path):
    root = tmp_path / "s"
    ref = f"{open_registry.host}/seed/app:v2s2"
    out = json.loads(run(root, "pull", "--json", ref).stdout)
    assert [i["id"] for i in out["images"]] == [seed.app.config_digest]
    (layer,) = out["layers"]
    digest, size = _layer(seed)
    assert (layer["digest"], layer["action"], layer["bytes"], layer["requests"]) == (
        digest, "downloaded", size, 1)
    assert out["requests"] >= 4          # ping, HEAD, manifest, config, blob
    again = json.loads(run(root, "pull", "--json", ref).stdout)
    assert [layer["action"] for layer in again["layers"]] == ["skipped"]
    assert again["requests"] == 2        # ping and HEAD
    table = run(root, "images", "--digests").stdout.decode().splitlines()
    assert table[0].split()[:3] == ["REPOSITORY", "TAG", "DIGEST"]
    assert table[1].split()[:3] == [f"{open_registry.host}/seed/app", "v2s2",
                                    seed.app_v2s2_digest]
    assert run(root, "pull", "-q", ref).stdout.decode().split() == [seed.app.config_digest]


def test_cli_pull_shows_each_layer_on_a_terminal(open_registry, seed, tmp_path):
    ref = f"{open_registry.host}/seed/app:v2s2"
    status, out = run_on_terminal(tmp_path / "s", "pull", ref)
    assert status == 0 and _layer(seed)[0][7:19] in out and "done" in out
    status, out = run_on_terminal(tmp_path / "s", "pull", ref)
    assert status == 0 and "skipped: already stored" in out


def test_cli_pull_errors_are_one_line(open_registry, tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSTORE_ROOT", str(tmp_path / "s"))
    rc, _, err = invoke("pull", f"{open_registry.host}/seed/nothing:here")
    assert rc == 1 and err.startswith("layerstore: error: ") and err.count("\n") == 1
    rc, _, err = invoke("pull", "Bad Reference")
    assert rc == 1 and "invalid reference" in err


def test_cli_pull_takes_the_registry_flags(htpasswd_registry, seed, tmp_path):
    root = tmp_path / "s"
    ref = f"{htpasswd_registry.host}/seed/app:oci"
    err = run(root, "pull", ref, check=False)
    assert err.returncode == 1 and b"needs credentials" in err.stderr
    assert PASSWORD.encode() not in err.stderr
    out = run(root, "pull", "-q", "--creds", f"{USER}:{PASSWORD}", ref).stdout.decode()
    assert out.split() == [seed.app.config_digest]


def test_choose_manifests_as_containerd_picks():
    from layerstore.formats.manifests import choose_manifests
    mt = "application/vnd.oci.image.manifest.v1+json"

    def entry(n, plat=None, **kw):
        d = {"mediaType": mt, "digest": "sha256:" + f"{n:x}" * 64, "size": 1, **kw}
        if plat:
            os_, arch, *v = plat.split("/")
            d["platform"] = {"os": os_, "architecture": arch, **({"variant": v[0]} if v else {})}
        return d

    index = {"manifests": [
        entry(1, "unknown/unknown"),
        entry(2, "linux/arm/v6"),
        entry(3, "linux/arm/v7", mediaType=None),
        entry(4, "linux/amd64", annotations={
            "vnd.docker.reference.type": "attestation-manifest"}),
        entry(5, "linux/amd64"),
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": "sha256:" + "6" * 64},
    ]}
    pick = lambda p, a=False: [(d["digest"][7], pl) for d, pl in  # noqa: E731
                               choose_manifests(index, p, a, "x")]
    assert pick("linux/arm/v7") == [("3", "linux/arm/v7")]
    assert pick("linux/arm/v6") == [("2", "linux/arm/v6")]
    assert pick("linux/arm64") == [("3", "linux/arm/v7")]     # arm64 runs arm/v7 first
    assert pick("linux/amd64") == [("5", "linux/amd64")]
    assert [d for d, _ in pick("linux/amd64", True)] == ["2", "3", "5"]
    with pytest.raises(errors.PlatformMismatch):
        pick("linux/s390x")
