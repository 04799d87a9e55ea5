"""Real images through the registry client: corpus/base pushed by skopeo as Docker v2 schema 2
with gzip and as OCI with zstd, read back manifest, config and layer, each layer streamed
through the verifying reader and decompressed to the diffID its config names.  Slow: the
seeding compresses 121 MB twice (a few seconds)."""

from __future__ import annotations

import hashlib
import json
import zlib

import pytest
import zstandard
from registry_servers import make_client

from layerstore.registry import client as C

pytestmark = pytest.mark.slow


def _diff_id(reader, media_type: str) -> str:
    """sha256 of the layer's uncompressed tar, streamed."""
    h = hashlib.sha256()
    if media_type.endswith("zstd"):
        with zstandard.ZstdDecompressor().stream_reader(reader, read_across_frames=True,
                                                         closefd=False) as z:
            while chunk := z.read(1 << 20):
                h.update(chunk)
    else:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        while chunk := reader.read(1 << 20):
            h.update(d.decompress(chunk))
        h.update(d.flush())
        assert d.eof
    return "sha256:" + h.hexdigest()


@pytest.mark.parametrize("tag, media_type, layer_type", [
    ("gzip", C.DOCKER_MANIFEST, "application/vnd.docker.image.rootfs.diff.tar.gzip"),
    ("zstd", C.OCI_MANIFEST, "application/vnd.oci.image.layer.v1.tar+zstd"),
])
def test_corpus_image_layers_stream_to_their_diff_ids(corpus_registry, tag, media_type,
                                                      layer_type):
    with make_client(corpus_registry.registry.host) as c:
        m = c.get_manifest("corpus/base", tag)
        assert (m.media_type, m.digest) == (media_type, corpus_registry.images[f"base-{tag}"])
        config = json.loads(c.get_blob_bytes("corpus/base", m.json["config"]["digest"],
                                             m.json["config"]["size"]))
        diff_ids = config["rootfs"]["diff_ids"]
        assert len(m.json["layers"]) == len(diff_ids) == 1
        for layer, diff_id in zip(m.json["layers"], diff_ids):
            assert layer["mediaType"] == layer_type
            with c.get_blob("corpus/base", layer["digest"], layer["size"]) as r:
                assert _diff_id(r, layer_type) == diff_id
                assert r.verified and r.bytes_received == layer["size"]
        assert c.counters.resumes == 0
