"""Real images pulled: corpus/base pushed by skopeo as Docker v2 schema 2 with gzip and as OCI
with zstd, each pulled into a store and checked out equal to `umoci unpack` of the same image
(paths, types, modes, owners, mtimes, content, link targets), its diffIDs the config's, fsck
clean; pulling the other form after the first downloads nothing (same diffID).  Slow: the
seeding compresses 121 MB twice."""

from __future__ import annotations

import pytest
from test_pull import _check

from layerstore import Store

pytestmark = pytest.mark.slow


def test_corpus_pulls_equal_umoci_unpack(corpus_registry, tmp_path):
    host = corpus_registry.registry.host
    with Store(tmp_path / "s") as store:
        pulled = {}
        for tag in ("gzip", "zstd"):
            seen = []
            (image,) = store.pull(f"{host}/corpus/base:{tag}", progress=seen.append)
            pulled[tag] = (image, seen[-1])
        gz, zs = pulled["gzip"], pulled["zstd"]
        assert gz[0].diff_ids == zs[0].diff_ids     # the configs differ: Docker's, OCI's
        assert [layer.action for layer in gz[1].layers] == ["downloaded"]
        assert [layer.action for layer in zs[1].layers] == ["skipped"]
        _check(store, gz[0], host, "corpus/base:gzip", tmp_path, mtimes=True)

    # The zstd form on its own, into a store of its own.
    with Store(tmp_path / "z") as store:
        (image,) = store.pull(f"{host}/corpus/base:zstd")
        (layer,) = store.inspect(image.id).layers
        assert layer.blob_digests and store.manifest(image.id)["layers"][0][
            "mediaType"].endswith("zstd")
        _check(store, image, host, "corpus/base:zstd", tmp_path, mtimes=True)
