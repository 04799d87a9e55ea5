"""The content SHA-256 map (store/contentmap.py, index schema 3): made on first use by hashing
every object in C (the fsck reading path), brought up to date afterwards by hashing only the
objects imported since and dropping those gc removed; absent (and free) for stores that never
use it."""

from __future__ import annotations

import hashlib

import lmdb

import archives as A
from helpers import context
from layerstore import Store, _native
from layerstore.store import contentmap
from layerstore.store.index import SCHEMA_VERSION


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _import(store: Store, tmp_path, name: str, files: dict[str, bytes]):
    path = tmp_path / f"{name}.tar"
    layer = A.layer(*[("f", k, v) for k, v in files.items()])
    path.write_bytes(A.docker_archive([([layer], [f"{name}:1"])]))
    (image,) = store.import_archive(path)
    return image


def _content(store: Store, oid: bytes) -> bytes:
    with open(context(store).object_path(oid.hex()), "rb") as f:
        return f.read()


def test_map_made_on_first_use_then_kept_current(tmp_path, monkeypatch):
    big = bytes(range(256)) * 5000
    first = {"a": b"alpha\n", "b": big, "c": b"alpha\n"}
    with Store(tmp_path / "s") as s:
        _import(s, tmp_path, "one", first)
        ctx = context(s)
        with ctx.index.read() as txn:
            assert not ctx.index.has_sha256_map(txn)     # imports never make it
        hashed: list[int] = []
        real = _native.objects_sha256

        def counting(objects_dir, ids, report=None):
            hashed.append(len(ids))
            return real(objects_dir, ids, report)

        monkeypatch.setattr(_native, "objects_sha256", counting)
        assert contentmap.fill(ctx) == 2                    # "a" and "c" are one object
        with ctx.index.read() as txn:
            assert ctx.index.has_sha256_map(txn)
            for data in (b"alpha\n", big):
                oid = contentmap.lookup(ctx, txn, _sha(data), len(data))
                assert oid is not None and _content(s, oid) == data
                # A TOC giving the content another size lies: not served from the store.
                assert contentmap.lookup(ctx, txn, _sha(data), len(data) + 1) is None
            assert contentmap.lookup(ctx, txn, _sha(b"nothing"), 7) is None
            assert contentmap.lookup(ctx, txn, "sha256:zz", 1) is None
        assert contentmap.fill(ctx) == 0 and hashed == [2]  # nothing new: nothing read
        _import(s, tmp_path, "two", {"d": b"delta\n", "b": big})
        assert contentmap.fill(ctx) == 1 and hashed == [2, 1]   # only the new object
        s.remove(["one:1"])
        s.gc()
        contentmap.fill(ctx)
        with ctx.index.read() as txn:
            assert contentmap.lookup(ctx, txn, _sha(b"alpha\n"), 6) is None    # gc'd
            assert _content(s, contentmap.lookup(ctx, txn, _sha(big), len(big))) == big
            assert contentmap.lookup(ctx, txn, _sha(b"delta\n"), 6) is not None
            dead = ctx.index.sha256_todo(txn)[1]
        assert dead == []
        assert s.fsck() == []


def test_two_objects_with_one_content_both_found(tmp_path):
    """Objects differ by metadata too: one content under two modes is two objects, both
    listed under its SHA-256, and the map keeps serving the one that survives gc."""
    with Store(tmp_path / "s") as s:
        for name, mode in (("x", 0o644), ("y", 0o755)):
            path = tmp_path / f"{name}.tar"
            path.write_bytes(A.docker_archive([([A.layer(("f", "f", b"same", mode))],
                                                [f"{name}:1"])]))
            s.import_archive(path)
        ctx = context(s)
        contentmap.fill(ctx)
        with ctx.index.read() as txn:
            assert len(ctx.index.sha256_objects(txn, hashlib.sha256(b"same").digest())) == 2
        s.remove(["x:1"])
        s.gc()
        with ctx.index.read() as txn:       # before the next fill: only the live one
            (oid,) = ctx.index.sha256_objects(txn, hashlib.sha256(b"same").digest())
        assert _content(s, oid) == b"same"


def test_a_schema_2_index_is_migrated_to_3(tmp_path):
    with Store(tmp_path / "s") as s:
        image = _import(s, tmp_path, "old", {"f": b"a"})
    env = lmdb.open(str(tmp_path / "s" / "index"), max_dbs=16)
    with env.begin(write=True) as txn:
        txn.put(b"schema", b"2", db=env.open_db(b"meta", txn=txn))
    env.close()
    with Store(tmp_path / "s") as s:
        assert s.image("old:1") == image and s.fsck() == []
        ctx = context(s)
        with ctx.index.read() as txn:
            assert txn.get(b"schema", db=ctx.index.db["meta"]) == str(SCHEMA_VERSION).encode()
            assert not ctx.index.has_sha256_map(txn)
        assert contentmap.fill(ctx) == 1
