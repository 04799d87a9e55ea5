"""A failed or interrupted import removes the objects it alone wrote: the store's files are
where they were before it (what a SIGKILLed import leaves is garbage for gc: test_crash.py)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import archives as A
from helpers import object_files, python_env
from layerstore import Store, errors

SHARED = A.layer(("f", "etc/os-release", b"NAME=test\n"), ("f", "bin/tool", b"\x7fELF" * 5000))


def _big_layer(n=300, size=200_000):
    return A.layer(*[("f", f"data/f{i}", os.urandom(size)) for i in range(n)])


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store") as s:
        s.import_archive(_write(tmp_path / "base.tar", A.docker_archive([([SHARED],
                                                                          ["base:1"])])))
        yield s


def _write(path, data):
    path.write_bytes(data)
    return path


def _files_and_usage(store):
    return object_files(store.root), store.du().inodes


def test_bad_diff_id_leaves_the_objects_where_they_were(store, tmp_path):
    new = A.layer(("f", "new/a", b"a" * 5000), ("f", "new/b", b"b" * 7000))
    cfg = json.loads(A.config([SHARED, new]))
    cfg["rootfs"]["diff_ids"][1] = "sha256:" + "0" * 64     # the layer hashes otherwise
    before = _files_and_usage(store)
    path = _write(tmp_path / "bad.tar",
                  _docker_archive([SHARED, new], json.dumps(cfg).encode(), "bad:1"))
    with pytest.raises(errors.DigestMismatch):
        store.import_archive(path)
    assert _files_and_usage(store) == before
    assert os.listdir(os.path.join(store.root, "pending")) == []
    assert store.fsck() == []


def test_layer_cut_short_leaves_nothing_of_it_or_earlier_layers(store, tmp_path):
    """The second layer ends inside a file: the objects of the first layer and those the
    second made before the cut are removed; those the store held before stay."""
    first = A.layer(("f", "one/a", os.urandom(9000)), ("f", "bin/tool", b"\x7fELF" * 5000))
    second = _big_layer(n=20, size=30_000)
    before = _files_and_usage(store)
    cut = second[:len(second) // 2]
    path = _write(tmp_path / "cut.tar",
                  _docker_archive([first, cut], A.config([first, second]), "cut:1"))
    with pytest.raises(errors.CorruptArchive):
        store.import_archive(path)
    assert _files_and_usage(store) == before
    assert store.fsck() == []


def test_import_layer_failure_removes_its_objects(store):
    import io
    before = _files_and_usage(store)
    layer = _big_layer(n=10, size=20_000)
    with pytest.raises(errors.TruncatedArchive):
        store.import_layer(io.BytesIO(layer[:len(layer) - 30_000]))
    assert _files_and_usage(store) == before


def test_sigint_during_import_leaves_the_objects_where_they_were(tmp_path):
    """The CLI reads the archive from a pipe that the test fills: half of it, then Ctrl-C
    once objects of the import have appeared."""
    root = tmp_path / "s"
    with Store(root) as s:
        s.import_archive(_write(tmp_path / "base.tar",
                                A.docker_archive([([SHARED], ["base:1"])])))
        before = _files_and_usage(s)
    data = A.docker_archive([([SHARED, _big_layer()], ["big:1"])])
    proc = subprocess.Popen([sys.executable, "-m", "layerstore", "--root", str(root),
                             "import", "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=python_env())
    proc.stdin.write(data[: len(data) // 2])
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    while len(object_files(root)) < len(before[0]) + 50:
        assert time.monotonic() < deadline and proc.poll() is None, "no objects appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.decode().strip() == "layerstore: error: interrupted"
    with Store(root) as s:
        assert _files_and_usage(s) == before
        assert s.fsck() == []
        assert [i.tags for i in s.images()] == [("docker.io/library/base:1",)]


def _docker_archive(layers, config, tag):
    """A legacy docker-archive whose layer files and config are given as they are."""
    config_name = A.digest(config)[7:] + ".json"
    names = [f"{i}/layer.tar" for i in range(len(layers))]
    files = {config_name: config,
             "manifest.json": json.dumps([{"Config": config_name, "RepoTags": [tag],
                                           "Layers": names}]).encode()}
    files.update(zip(names, layers))
    return A.tar_of(files)

