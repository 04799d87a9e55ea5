"""The partial pull on real images: corpus/rebuilt pushed by Debian's skopeo as zstd:chunked
(the old format: no tar-split, so the tar headers come from the frames between files), pulled
into a store that holds corpus/python (imported from its docker-archive, so every object came
from an ordinary layer).  It must give the same image, diffIDs, tree and fsck result as a
full pull, and move at most 5% of the blob bytes.  Slow: skopeo compresses 120 MB."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from registry_servers import RegistryServer, need_registry

from helpers import differences, snapshot
from layerstore import Store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chunked_registry(corpus_dir, tmp_path_factory):
    """A fresh registry holding corpus/rebuilt:chunked (skopeo's blob cache reuses a variant
    a registry already has, so this one has no other)."""
    need_registry()
    if shutil.which("skopeo") is None:
        pytest.skip("needs skopeo")
    reg = RegistryServer(tmp_path_factory.mktemp("chunked") / "r")
    try:
        subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", "--format", "oci",
                        "--dest-compress-format", "zstd:chunked",
                        f"docker-archive:{corpus_dir / 'rebuilt.docker.tar.zst'}",
                        f"docker://{reg.host}/corpus/rebuilt:chunked"],
                       check=True, stdout=subprocess.DEVNULL)
        yield reg
    finally:
        reg.stop()


def _pull(store: Store, ref: str, mode: str):
    seen = []
    (image,) = store.pull(ref, partial=mode, progress=seen.append)
    return image, seen[-1].layers


def test_partial_pull_of_rebuilt_after_python(chunked_registry, corpus_dir, tmp_path):
    ref = f"{chunked_registry.host}/corpus/rebuilt:chunked"
    with Store(tmp_path / "full") as full:
        whole, whole_layers = _pull(full, ref, "never")
        assert {layer.action for layer in whole_layers} == {"downloaded"}
        full.checkout(whole.id, tmp_path / "want")
    want = snapshot(str(tmp_path / "want"), owners=os.geteuid() == 0)[0]
    with Store(tmp_path / "s") as store:
        store.import_archive(corpus_dir / "python.docker.tar.zst")
        image, layers = _pull(store, ref, "always")
        assert {layer.action for layer in layers} == {"partial"}
        assert image.id == whole.id and image.diff_ids == whole.diff_ids
        assert store.fsck() == []
        store.checkout(image.id, tmp_path / "got")
        got = snapshot(str(tmp_path / "got"), owners=os.geteuid() == 0)[0]
        assert differences(got, want) == []
        blob_bytes = sum(layer.size for layer in layers)
        moved = sum(layer.bytes for layer in layers)
        assert moved <= 0.05 * blob_bytes, (moved, blob_bytes)
        assert all(layer.requests <= 2 + layer.partial["planned_requests"] for layer in layers)
