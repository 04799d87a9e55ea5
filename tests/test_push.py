"""push against real registries on 127.0.0.1 (tests/registry_servers.py): a fresh registry
read back by skopeo and umoci, a second push that uploads nothing and names the same digest,
the original manifest kept when its blobs mount from another repository, chunked uploads
(asked for, and when a registry refuses the streamed one), htpasswd and token auth, and the
CLI's --digestfile and --json."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess

import pytest
import zstandard
from registry_servers import (PASSWORD, USER, Fault, RegistryServer, skopeo_copy)

import archives as A
from helpers import context, differences, invoke, need_tool, snapshot
from layerstore import Store, cli, errors
from layerstore.registry import RegistryOptions
from layerstore.registry.credentials import Credentials

BIG = hashlib.shake_256(b"a layer larger than a compression block").digest(3 << 20)
LAYERS = [
    A.layer(("d", "etc"), ("f", "etc/hello", b"hello\n"), ("f", "big", BIG),
            ("l", "etc/link", "hello"), ("h", "etc/hard", "etc/hello")),
    A.layer(("f", "etc/motd", b"second layer\n" * 1000), ("wh", "big")),
]


@pytest.fixture
def registry(tmp_path):
    """A fresh, empty, open registry for this test."""
    reg = RegistryServer(tmp_path / "registry")
    yield reg
    reg.stop()


def _store_with(tmp_path, layers=LAYERS, compress="gzip", tag="test/app:1"):
    """A store holding one image imported from an OCI layout with compressed layers (so it
    has an original manifest); also returns the layout's directory."""
    layout = tmp_path / "layout"
    A.write_dir(A.oci_layout(layers, tags=[f"docker.io/{tag}"], compress=compress), layout)
    store = Store(tmp_path / "store")
    (image,) = store.import_archive(layout)
    return store, image, layout


def _read_back(host: str, ref: str, dest) -> tuple[dict, list[str]]:
    """skopeo copy of ref to an OCI layout at dest: (its config, the sha256 of each layer's
    uncompressed bytes)."""
    skopeo_copy(f"docker://{host}/{ref}", f"oci:{dest}:x", "--src-tls-verify=false")
    index = json.loads((dest / "index.json").read_text())
    blob = lambda d: (dest / "blobs" / "sha256" / d[7:]).read_bytes()   # noqa: E731
    manifest = json.loads(blob(index["manifests"][0]["digest"]))
    config = json.loads(blob(manifest["config"]["digest"]))
    diff_ids = []
    for l in manifest["layers"]:
        data = blob(l["digest"])
        if l["mediaType"].endswith("gzip"):
            data = gzip.decompress(data)
        elif l["mediaType"].endswith("zstd"):
            data = zstandard.ZstdDecompressor().stream_reader(data).read()
        diff_ids.append("sha256:" + hashlib.sha256(data).hexdigest())
    return config, diff_ids


def _umoci_tree(layout, bundle):
    need_tool("umoci")
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:x", str(bundle)], check=True,
                   capture_output=True)
    return snapshot(str(bundle / "rootfs"))[0]


@pytest.mark.parametrize("compress, fmt", [(None, None), ("zstd", "oci"), ("gzip", "docker")])
def test_push_to_a_fresh_registry_reads_back_as_the_same_image(registry, tmp_path, compress,
                                                                 fmt):
    store, image, _ = _store_with(tmp_path)
    with store:
        result = store.push("test/app:1", f"{registry.host}/team/app:1", compress=compress,
                            format=fmt)
        assert [l.action for l in result.layers] == ["uploaded", "uploaded"]
        assert result.config.action == "uploaded"
        assert result.bytes_sent > sum(l.size for l in result.layers) + len(image.id)
        config, diff_ids = _read_back(registry.host, "team/app:1", tmp_path / "back")
        assert diff_ids == config["rootfs"]["diff_ids"] == list(image.diff_ids)
        store.checkout("test/app:1", tmp_path / "checkout")
    if compress != "zstd":      # umoci 0.4.7 reads no zstd layers; the diffIDs are checked
        tree = _umoci_tree(tmp_path / "back", tmp_path / "bundle")
        assert not differences(snapshot(str(tmp_path / "checkout"))[0], tree)
    want = {None: "gzip", "zstd": "zstd", "gzip": "gzip"}[compress]
    assert {l.compression for l in result.layers} == {want}
    # The store's own original blobs were made by another gzip: a new manifest, same config.
    assert not result.original_manifest
    assert result.config.digest == image.id


def test_second_push_names_the_same_digest_and_uploads_nothing(registry, tmp_path):
    store, image, _ = _store_with(tmp_path)
    with store:
        first = store.push("test/app:1", f"{registry.host}/team/app:1")
        second = store.push("test/app:1", f"{registry.host}/team/app:1")
        layer = store.layer(image.diff_ids[0])
    assert second.digest == first.digest
    assert [l.action for l in second.layers] == ["skipped", "skipped"]
    assert second.config.action == "skipped"
    assert all(l.bytes_sent == 0 for l in second.layers)
    # The uploaded blobs were recorded on their layers, with the recipe that made them.
    assert first.layers[0].digest in layer.blob_digests
    with Store(tmp_path / "store") as again:
        assert again.fsck() == []       # the blobs and locations recorded are consistent
    assert second.bytes_sent < 4096          # HEADs and the manifest


def test_the_recipe_gives_the_same_digest_in_another_registry(registry, tmp_path):
    """A blob the recipe made before is made again byte for byte: a fresh registry gets the
    same digests, uploaded in one PUT because digest and size are known beforehand."""
    store, _, _ = _store_with(tmp_path)
    other = RegistryServer(tmp_path / "other")
    try:
        with store:
            first = store.push("test/app:1", f"{registry.host}/team/app:1")
            again = store.push("test/app:1", f"{other.host}/elsewhere/app:2")
    finally:
        other.stop()
    assert again.digest == first.digest
    assert [l.digest for l in again.layers] == [l.digest for l in first.layers]
    assert [l.upload for l in first.layers] == ["streamed", "streamed"]
    assert [l.upload for l in again.layers] == ["monolithic", "monolithic"]


def test_blobs_known_in_another_repository_mount_and_keep_the_manifest(registry, tmp_path):
    """An image whose blobs the registry has in repository A, pushed to repository B: every
    blob is mounted (nothing uploaded) and the original manifest goes unchanged, so its
    digest is the one A has."""
    store, image, layout = _store_with(tmp_path)
    seeded = skopeo_copy(f"oci:{layout}:1", f"docker://{registry.host}/team/source:1")
    with store:
        index = context(store).index
        with index.read() as txn:
            manifest_digest = index.image(txn, image.id).manifest_digest
        assert seeded == manifest_digest        # skopeo kept the layout's manifest
        with index.write() as txn:
            for blob in json.loads(index.metadata(txn, manifest_digest))["layers"]:
                index.add_blob_location(txn, blob["digest"], f"{registry.host}/team/source")
        result = store.push("test/app:1", f"{registry.host}/team/copy:1")
        # Where the blobs are now is recorded: a push to a third repository mounts too.
        third = store.push("test/app:1", f"{registry.host}/team/third:1")
    assert result.digest == seeded
    assert result.original_manifest
    assert [(l.action, l.source) for l in result.layers] == [("mounted", "team/source")] * 2
    assert result.config.action == "uploaded"       # a few hundred bytes, the same ones
    assert sum(l.bytes_sent for l in result.layers) == 0
    assert third.digest == seeded and {l.action for l in third.layers} == {"mounted"}


def test_original_manifest_pushed_when_the_registry_has_every_blob(registry, tmp_path):
    store, image, layout = _store_with(tmp_path)
    seeded = skopeo_copy(f"oci:{layout}:1", f"docker://{registry.host}/team/app:old")
    with store:
        result = store.push("test/app:1", f"{registry.host}/team/app:new")
        # Asking for another compression gives up the original blobs.
        zstd = store.push("test/app:1", f"{registry.host}/team/app:zstd", compress="zstd")
    assert (result.digest, result.original_manifest) == (seeded, True)
    assert [l.action for l in result.layers] == ["skipped", "skipped"]
    assert zstd.digest != seeded and not zstd.original_manifest
    assert [l.action for l in zstd.layers] == ["uploaded", "uploaded"]


def test_chunked_upload_when_asked(registry, tmp_path):
    store, image, _ = _store_with(tmp_path)
    with store:
        result = store.push("test/app:1", f"{registry.host}/team/app:1", chunk_size=256 << 10)
        streamed = store.push("test/app:1", f"{registry.host}/team/app2:1", compress="zstd")
    big = result.layers[0]
    assert big.upload == "chunked"
    assert big.requests >= 2 + big.size // (256 << 10)       # HEAD, POST, PATCHes, PUT
    config, diff_ids = _read_back(registry.host, "team/app:1", tmp_path / "back")
    assert diff_ids == list(image.diff_ids)
    assert streamed.layers[0].upload == "streamed"


def test_chunked_upload_when_the_registry_refuses_a_streamed_one(proxy, tmp_path):
    store, image, _ = _store_with(tmp_path)
    proxy.add(Fault("status", "PATCH", r"/v2/refusing/app/blobs/uploads/", status=400,
                    times=2, body=b'{"errors":[{"code":"BLOB_UPLOAD_INVALID","message":'
                                  b'"no streams"}]}'))
    with store:
        result = store.push("test/app:1", f"{proxy.host}/refusing/app:1")
    assert {l.upload for l in result.layers} == {"chunked"}
    patches = [e for e in proxy.log if e["method"] == "PATCH"]
    assert [e["content_range"] is None for e in patches[:2]] == [True, True]
    assert all(e["content_range"] for e in patches[2:])
    config, diff_ids = _read_back(proxy.upstream, "refusing/app:1", tmp_path / "back")
    assert diff_ids == list(image.diff_ids)


def test_a_damaged_object_never_completes_an_upload(registry, tmp_path):
    store, image, _ = _store_with(tmp_path)
    with store:
        entry = next(e for e in store.layer_entries(image.diff_ids[0]) if e.path == "big")
        path = store.object_path(entry.object_id)
        shutil.copy(path, tmp_path / "saved")
        with open(path, "r+b") as f:
            f.write(b"X")
        with pytest.raises(errors.DigestMismatch):
            store.push("test/app:1", f"{registry.host}/team/app:1")
    from layerstore.registry.client import Client
    with Client(registry.host) as c:
        with pytest.raises(errors.ManifestUnknown):
            c.head_manifest("team/app", "1")


def test_push_with_htpasswd_credentials(htpasswd_registry, tmp_path):
    store, image, _ = _store_with(tmp_path)
    with store:
        with pytest.raises(errors.AuthenticationRequired):
            store.push("test/app:1", f"{htpasswd_registry.host}/auth/app:1")
        result = store.push("test/app:1", f"{htpasswd_registry.host}/auth/app:1",
                            registry=RegistryOptions(credentials=Credentials(USER, PASSWORD)))
    assert [l.action for l in result.layers] == ["uploaded", "uploaded"]


def test_push_with_a_token_for_push_scopes(token_registry, token_server, tmp_path):
    store, image, _ = _store_with(tmp_path)
    with store:
        with pytest.raises(errors.AuthenticationRequired):
            store.push("test/app:1", f"{token_registry.host}/tok/app:1",
                       registry=RegistryOptions(allow_private_realm=True))
        options = RegistryOptions(credentials=Credentials(USER, PASSWORD),
                                  allow_private_realm=True)
        first = store.push("test/app:1", f"{token_registry.host}/tok/app:1", registry=options)
        # A mount from tok/app to tok/other needs pull on the source in the same token.
        second = store.push("test/app:1", f"{token_registry.host}/tok/other:1",
                            registry=options)
    assert second.digest == first.digest
    assert {l.action for l in second.layers} == {"mounted"}


def test_cli_push_digestfile_and_json(registry, tmp_path):
    store, image, _ = _store_with(tmp_path)
    store.close()
    root = str(tmp_path / "store")
    digestfile = tmp_path / "digest"
    from click.testing import CliRunner
    res = CliRunner().invoke(cli.cli, ["--root", root, "push", "test/app:1",
                                       f"{registry.host}/team/app:1", "--digestfile",
                                       str(digestfile), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["digest"] == digestfile.read_text()
    assert [l["action"] for l in doc["layers"]] == ["uploaded", "uploaded"]
    assert all(l["requests"] >= 3 and l["bytes_sent"] > 0 for l in doc["layers"])
    assert cli.main(["--root", root, "push", "test/app:1", f"{registry.host}/team/app:1",
                     "--quiet"]) == 0


def test_cli_push_errors_are_one_line(registry, tmp_path, capsys):
    store, image, _ = _store_with(tmp_path)
    store.close()
    root = str(tmp_path / "store")
    assert cli.main(["--root", root, "push", image.id]) == 1
    assert "needs a destination" in capsys.readouterr().err
    assert cli.main(["--root", root, "push", "test/app:1", f"{registry.host}/a:1",
                     "--format", "docker", "--compress", "zstd"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("layerstore: error:") and "--format oci" in err


# ---- the corpus --------------------------------------------------------------------------------


@pytest.mark.slow
def test_corpus_image_pushed_to_a_fresh_registry_unpacks_equal(corpus_images, registry,
                                                               tmp_path):
    """python (3 layers, 217 MB of tar) from a docker-archive: no original manifest, so
    gzip with the recipe and a new Docker manifest; skopeo + umoci give the same tree."""
    image = next(i for i in corpus_images if i.archive.name.startswith("python"))
    with Store(tmp_path / "store") as store:
        (stored,) = store.import_archive(image.archive)
        result = store.push(stored.id, f"{registry.host}/corpus/python:1")
        again = store.push(stored.id, f"{registry.host}/corpus/python:1")
        store.checkout(stored.id, tmp_path / "checkout")
    assert {l.action for l in result.layers} == {"uploaded"}
    assert (again.digest, {l.action for l in again.layers}) == (result.digest, {"skipped"})
    config, diff_ids = _read_back(registry.host, "corpus/python:1", tmp_path / "back")
    assert diff_ids == config["rootfs"]["diff_ids"] == list(image.diff_ids)
    tree = _umoci_tree(tmp_path / "back", tmp_path / "bundle")
    assert not differences(snapshot(str(tmp_path / "checkout"))[0], tree)


@pytest.mark.slow
def test_corpus_image_pushed_to_another_repository_keeps_its_digest(corpus_registry,
                                                                   tmp_path):
    """corpus/base as skopeo pushed it (OCI, zstd), brought into the store through an OCI
    layout with its blobs' location recorded, pushed to a new repository of the same
    registry: every blob mounts and the manifest digest is the one skopeo made."""
    host = corpus_registry.registry.host
    want = corpus_registry.images["base-zstd"]
    layout = tmp_path / "layout"
    skopeo_copy(f"docker://{host}/corpus/base:zstd", f"oci:{layout}:1", "--src-tls-verify=false")
    with Store(tmp_path / "store") as store:
        (image,) = store.import_archive(layout)
        index = context(store).index
        with index.write() as txn:
            manifest = json.loads(index.metadata(txn, want))
            for blob in manifest["layers"]:
                index.add_blob_location(txn, blob["digest"], f"{host}/corpus/base")
        result = store.push(image.id, f"{host}/corpus/copy:1")
    assert result.digest == want and result.original_manifest
    assert {l.action for l in result.layers} == {"mounted"}
    assert result.bytes_sent < 16 << 10


def test_cli_push_shows_each_blob_on_a_terminal(registry, tmp_path):
    from helpers import run_on_terminal
    store, image, _ = _store_with(tmp_path)
    store.close()
    status, seen = run_on_terminal(tmp_path / "store", "push", "test/app:1",
                                   f"{registry.host}/team/app:1")
    assert status == 0, seen
    assert seen.count("Copying layer") == 2 and "Copying config" in seen
    assert "Writing manifest sha256:" in seen
    status, seen = run_on_terminal(tmp_path / "store", "push", "test/app:1",
                                   f"{registry.host}/team/app:1")
    assert seen.count("skipped: already exists") == 3


def test_an_interrupted_push_leaves_no_manifest_and_no_threads(registry, tmp_path):
    import threading
    store, image, _ = _store_with(tmp_path)
    before = threading.active_count()

    def interrupt(p):
        if p.state == "uploading" and p.bytes_done > 0:
            raise KeyboardInterrupt

    with store:
        with pytest.raises(KeyboardInterrupt):
            store.push("test/app:1", f"{registry.host}/team/app:1", progress=interrupt)
        assert threading.active_count() == before
        from layerstore.registry.client import Client
        with Client(registry.host) as c, pytest.raises(errors.ManifestUnknown):
            c.head_manifest("team/app", "1")
        # Nothing was recorded, and the next push goes through.
        result = store.push("test/app:1", f"{registry.host}/team/app:1")
    assert {l.action for l in result.layers} <= {"uploaded", "skipped"}


def test_streamed_upload_when_the_registry_refuses_a_monolithic_one(registry, proxy, tmp_path):
    """A blob the recipe made before goes in one PUT; a registry answering 413 to it gets
    the streamed upload instead (through the proxy, which forwards it whole)."""
    store, image, _ = _store_with(tmp_path)
    with store:
        first = store.push("test/app:1", f"{registry.host}/team/app:1")
        for layer in first.layers:      # the monolithic PUT of each layer, once
            proxy.add(Fault("status", "PUT", rf"digest=sha256(:|%3A){layer.digest[7:]}",
                            status=413))
        result = store.push("test/app:1", f"{proxy.host}/toolarge/app:1")
    assert [l.upload for l in result.layers] == ["streamed", "streamed"]
    assert [l.digest for l in result.layers] == [l.digest for l in first.layers]
    assert result.digest == first.digest
    assert [e["status"] for e in proxy.log if e["fault"]] == [413, 413]


def test_a_recorded_blob_the_recipe_no_longer_makes_is_not_sent_as_it(registry, tmp_path):
    """A recipe's output that differs from what it recorded (another library build, another
    CPU): the one-PUT upload stops before its last byte and the streamed one sends the new
    blob, recorded beside the old."""
    store, image, _ = _store_with(tmp_path)
    with store:
        first = store.push("test/app:1", f"{registry.host}/team/app:1")
        index = context(store).index
        with index.write() as txn:      # pretend the recipe once made other bytes
            rec = index.layer(txn, image.diff_ids[0])
            for b in rec.blobs:
                if b["digest"] == first.layers[0].digest:
                    b["digest"] = "sha256:" + "0" * 64
            index.put_row(txn, "layers", image.diff_ids[0].encode(), rec.to_json())
        other = RegistryServer(tmp_path / "other")
        try:
            again = store.push("test/app:1", f"{other.host}/team/app:1")
        finally:
            other.stop()
    assert [l.upload for l in again.layers] == ["streamed", "monolithic"]
    assert again.digest == first.digest


@pytest.mark.parametrize("wrong", ["digest", "size"])
def test_layer_stream_stops_before_the_last_byte_when_it_is_not_the_recorded_blob(tmp_path,
                                                                                  wrong):
    from layerstore.formats import push as P
    store, image, _ = _store_with(tmp_path)
    with store:
        with context(store).index.read() as txn:
            layer = context(store).index.layer(txn, image.diff_ids[0])
        stream = P.LayerStream(context(store), layer, "gzip")
        whole = b"".join(stream)
        expect = {"digest": stream.digest, "size": stream.size}
        expect[wrong] = "sha256:" + "0" * 64 if wrong == "digest" else stream.size - 1
        given = []
        with pytest.raises(P._NotTheRecipe):
            for piece in P.LayerStream(context(store), layer, "gzip", expect=expect):
                given.append(piece)
        assert len(b"".join(given)) < len(whole)
        # The recorded blob itself streams whole.
        good = P.LayerStream(context(store), layer, "gzip",
                             expect={"digest": stream.digest, "size": stream.size})
        assert b"".join(good) == whole


def test_cli_push_with_creds(htpasswd_registry, tmp_path, capsys):
    store, image, _ = _store_with(tmp_path)
    store.close()
    root = str(tmp_path / "store")
    dest = f"{htpasswd_registry.host}/cli/app:1"
    assert cli.main(["--root", root, "push", "test/app:1", dest]) == 1
    err = capsys.readouterr().err
    assert err.startswith("layerstore: error:") and PASSWORD not in err
    wrong = PASSWORD + "-not-it"        # refused credentials never show either
    assert cli.main(["--root", root, "push", "test/app:1", dest,
                     "--creds", f"{USER}:{wrong}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("layerstore: error:") and err.count("\n") == 1 and wrong not in err
    assert cli.main(["--root", root, "push", "test/app:1", dest,
                     "--creds", f"{USER}:{PASSWORD}"]) == 0
    out = capsys.readouterr()
    assert out.out.strip().startswith(f"{dest}@sha256:") and PASSWORD not in out.err


@pytest.mark.parametrize("fault, deletes", [
    # The registry answers the mount with an upload session, which is deleted; one that
    # refuses that DELETE (405) has only lost a session it expires itself.
    (Fault("status", "DELETE", r"/v2/mounting/app/blobs/uploads/", status=405, times=2), 2),
    # A mount answered 202 with no Location (no session opened): nothing to cancel.
    (Fault("status", "POST", r"/v2/mounting/app/blobs/uploads/\?mount=", status=202,
           times=2), 0),
], ids=["delete-refused", "no-location"])
def test_a_mount_that_fails_still_uploads(proxy, tmp_path, fault, deletes):
    """Blobs recorded in a repository that no longer has them: the mounts fail, and the
    blobs are uploaded."""
    store, image, _ = _store_with(tmp_path)
    with store:
        index = context(store).index
        with index.read() as txn:
            manifest = json.loads(index.metadata(txn, index.image(txn, image.id)
                                                 .manifest_digest))
        with index.write() as txn:
            for blob in manifest["layers"]:
                index.add_blob_location(txn, blob["digest"], f"{proxy.host}/gone/app")
        proxy.add(fault)
        result = store.push("test/app:1", f"{proxy.host}/mounting/app:1")
    assert [l.action for l in result.layers] == ["uploaded", "uploaded"]
    assert [e["status"] for e in proxy.log if e["fault"]] == [fault.status] * 2
    assert len([e for e in proxy.log if e["method"] == "DELETE"]) == deletes


def test_an_image_removed_while_it_is_pushed_leaves_no_dangling_record(registry, tmp_path):
    """rm takes no store lock, so it may delete the image while a push of it runs: what the
    push records afterwards must not name the deleted image (fsck would call it damage)."""
    store, image, _ = _store_with(tmp_path)

    def remove_when_written(p):
        if p.what == "manifest" and p.state == "written":
            store.remove(["test/app:1"])

    with store:
        store.push("test/app:1", f"{registry.host}/team/app:1", progress=remove_when_written)
        assert store.images() == []
        assert store.fsck() == []


# ---- push --all-platforms ----------------------------------------------------------------------

def _index_at(host: str, ref: str) -> dict:
    out = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                          f"docker://{host}/{ref}"], check=True, capture_output=True)
    return json.loads(out.stdout)


def test_all_platforms_pushes_each_image_and_an_index(open_registry, seed, registry, tmp_path):
    """An index pulled whole, pushed whole to another registry: each platform's image by
    digest, then an index of them (without the attestation, which the store does not keep)
    under the tag; pulled back, every platform is the same image; a second push uploads
    nothing and names the same index."""
    need_tool("skopeo")
    with Store(tmp_path / "s") as store:
        images = store.pull(f"{open_registry.host}/seed/multi", all_platforms=True,
                            platform="linux/amd64")
        ids = {i.platform: i.id for i in images}
        (tagged,) = [i for i in images if i.tags]
        result = store.push(tagged.id, f"{registry.host}/multi/app:1", all_platforms=True)
        assert len(result.images) == 2 and not result.original_manifest
        assert result.media_type == "application/vnd.oci.image.index.v1+json"
        index = _index_at(registry.host, "multi/app:1")
        assert sorted(d["platform"]["architecture"] for d in index["manifests"]) == \
            ["amd64", "arm64"]
        assert [d["digest"] for d in index["manifests"]] == [i.digest for i in result.images]
        again = store.push(tagged.id, f"{registry.host}/multi/app:1", all_platforms=True)
        assert again.digest == result.digest
        assert {b.action for b in again.layers} == {"skipped"}
        # Named by the platform it is not tagged for, the same index is pushed.
        (other,) = [i for i in images if not i.tags]
        assert store.push(other.id, f"{registry.host}/multi/app:2",
                          all_platforms=True).digest == result.digest
    with Store(tmp_path / "back") as back:
        pulled = back.pull(f"{registry.host}/multi/app:1", all_platforms=True,
                           platform="linux/amd64")
        assert {i.platform: i.id for i in pulled} == ids
        assert back.fsck() == []
        # An index every entry of which the store holds unchanged goes as its own bytes.
        (tag,) = [i for i in pulled if i.tags]
        copy = back.push(tag.id, f"{registry.host}/multi/copy:1", all_platforms=True)
        assert copy.original_manifest and copy.digest == result.digest
        assert {b.action for b in copy.layers} == {"mounted"}


def test_all_platforms_keeps_the_original_index_when_nothing_changes(open_registry, seed,
                                                                      tmp_path):
    """Pushed back to the registry it came from, every manifest is the original: with the
    attestation the store does not keep, the index is new, and says so."""
    with Store(tmp_path / "s") as store:
        store.pull(f"{open_registry.host}/seed/multi", all_platforms=True,
                   platform="linux/amd64")
        result = store.push(f"{open_registry.host}/seed/multi",
                            f"{open_registry.host}/seed/multi-copy:1", all_platforms=True)
        assert [i.original_manifest for i in result.images] == [True, True]
        assert {b.action for b in result.layers} <= {"mounted", "skipped"}
        assert sorted(i.digest for i in result.images) == sorted(seed.platform_digests.values())
        assert not result.original_manifest     # the attestation is left out


def test_all_platforms_errors(open_registry, seed, registry, tmp_path):
    with Store(tmp_path / "s") as store:
        (one,) = store.pull(f"{open_registry.host}/seed/app:oci")
        with pytest.raises(errors.UnsupportedManifest, match="multi-platform index"):
            store.push(one.id, f"{registry.host}/x/app:1", all_platforms=True)
        (arm,) = store.pull(f"{open_registry.host}/seed/multi", platform="linux/arm64")
        with pytest.raises(errors.UnsupportedManifest, match="no image for linux/amd64"):
            store.push(arm.id, f"{registry.host}/x/multi:1", all_platforms=True)
    code, out, err = invoke("--root", str(tmp_path / "s"), "push", one.id,
                            f"{registry.host}/x/app:1", "--all-platforms")
    assert code == 1 and err.count("\n") == 1 and "--all-platforms" in err
