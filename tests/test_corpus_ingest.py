"""Real layers from ../shared/corpus: every entry record matches tarfile's listing, the diffID
matches the image config, and a second ingest of a layer writes nothing."""

import os


from helpers import entry_dict, oracle
from layerstore import _native


def unique_layers(images):
    seen = {}
    for image in images:
        for diff_id, path in zip(image.diff_ids, image.layers):
            seen.setdefault(diff_id, path)
    return sorted(seen.items())


def test_corpus_layers_match_tarfile(corpus_images, tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    store = _native.ObjectStore(root)
    layers = unique_layers(corpus_images)
    assert len(layers) >= 3
    for diff_id, path in layers:
        with open(path, "rb") as f:
            result = _native.ingest_stream(f, store)
        assert result.stats.diff_id == diff_id
        assert result.stats.stream_bytes == os.path.getsize(path)
        data = path.read_bytes()
        assert [entry_dict(e) for e in result.entries()] == oracle(data)
        with open(path, "rb") as f:
            again = _native.ingest_stream(f, store)
        assert again.stats.new_objects == 0 and again.stats.new_bytes == 0
        assert [r.entry for r in _native.decode_records(again.records)] == result.entries()
