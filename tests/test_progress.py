"""The long C calls report progress and stop when cancelled (ls_progress, _native.observed)."""

import os

import pytest

import archives as A
from helpers import context
from layerstore import Store, _native, errors

FILES = 600     # over checkout's two-thread threshold (512 entries); 5 MB, more than a pipe holds


@pytest.fixture
def stored(tmp_path):
    """A store holding one image of FILES small files, with its checkout plan and layer."""
    files = [("f", f"d{i % 7}/f{i}", os.urandom(8192) + bytes([i % 256]) * i)
             for i in range(FILES)]
    layer = A.layer(*files)
    (tmp_path / "img.tar").write_bytes(A.docker_archive([([layer], ["img:1"])]))
    with Store(tmp_path / "store") as store:
        store.import_archive(tmp_path / "img.tar")
        yield store, layer


def _plan(store):
    from layerstore.store.checkout import plan
    return plan(context(store).tree("img:1"))


def test_checkout_reports_every_entry(stored, tmp_path):
    store, _ = stored
    seen = []
    dest = tmp_path / "out"
    dest.mkdir()
    _native.checkout(os.path.join(store.root, "objects"), str(dest), _plan(store), "copy", False,
                     report=lambda b, n: seen.append((b, n)))
    entries = FILES + 7 + 1     # files, their directories and the root
    assert seen[-1] == (sum(8192 + i for i in range(FILES)), entries)
    assert seen == sorted(seen)


def test_cancelled_calls_stop_with_a_clear_code(stored, tmp_path):
    """A call whose cancel flag is set stops at once (observed sets it on Ctrl-C)."""
    store, _ = stored
    objects = os.path.join(store.root, "objects")
    progress = _native.ffi.new("ls_progress *")
    progress.cancel = 1
    err = _native.ffi.new("char[]", 256)
    dest = tmp_path / "out"
    dest.mkdir()
    stats = _native.ffi.new("ls_checkout_stats *")
    plan = _plan(store)
    rc = _native.lib.ls_tree_checkout(objects.encode(), str(dest).encode(), plan, len(plan),
                                 _native.lib.LS_CHECKOUT_COPY, stats, progress, err, 256)
    assert rc == _native.lib.LS_E_CANCELLED
    assert _native.ffi.string(err) == b"checkout cancelled"
    assert progress.items == 0

    objs = _native.ffi.new("ls_object_check[]", 1)
    rc = _native.lib.ls_objects_check(objects.encode(), objs, 1, 2, 0, progress, err, 256)
    assert rc == _native.lib.LS_E_CANCELLED and progress.items == 0


def test_interrupt_cancels_the_call_and_is_raised(stored, tmp_path):
    """Ctrl-C while observed() waits: the C call is cancelled and stops part way, and the
    KeyboardInterrupt is re-raised once it stopped.  The layer goes into a pipe nobody reads
    until the interrupt, so the call is surely still running when it comes."""
    import threading
    store, layer = stored
    records, raw = _layer_parts(store)
    r, w = os.pipe()
    interrupted = threading.Event()
    got = []

    def drain():
        interrupted.wait()
        while chunk := os.read(r, 1 << 16):
            got.append(len(chunk))

    def report(done_bytes, items):
        interrupted.set()
        raise KeyboardInterrupt

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            _native.write_layer(os.path.join(store.root, "objects"), records, raw, w,
                                report=report)
    finally:
        os.close(w)
        reader.join()
        os.close(r)
    assert 0 < sum(got) < len(layer)


def _layer_parts(store):
    diff_id = store.image("img:1").diff_ids[0]
    with context(store).index.read() as txn:
        return (bytes(context(store).index.layer_data(txn, diff_id, "records")),
                bytes(context(store).index.layer_data(txn, diff_id, "raw")))
