"""The LMDB index: images, tags, layers and objects, with a versioned schema.

Named databases (keys and values are bytes):
    meta        b"schema" -> decimal schema version; b"reimport/<diffID>" -> b"": a layer
                whose objects fsck --repair found damaged, ingested again by the next import
    images      image id ("sha256:<config digest>") -> JSON image record
    tags        normalized "domain/path:tag" -> image id
    metadata    digest -> raw bytes of a config or manifest, exactly as imported
    layers      diffID -> JSON layer record (sizes, counts, blob digests, reference count)
    layer_data  diffID + b"/records" | b"/raw" -> zstd-compressed entry records / tar metadata
    image_trees image id -> zstd-compressed checkout plan: the merged tree as entry records
                (computed once, at import; see store/checkout.py)
    blobs       compressed blob digest -> diffID it decompresses to
    objects     32-byte object id -> struct <QI: content size, reference count
    blob_locations  blob digest -> JSON list of "registry/repository" where that blob was
                seen (pulled from or pushed to), most recent first: a push mounts or skips it
                there instead of uploading it again (schema 2)
    repo_digests    "domain/path@sha256:..." -> image id: the manifest (or index) digest a
                pull got the image by, as Docker's RepoDigests (schema 2)
    pins        a runtime's name for what it serves ("cstore/<dir>/<layer id>",
                "snapshot/<key>") -> JSON list of diffIDs, bottom first: the layers a
                container runtime reads in place, which gc keeps (with their layer dirs)
                whether or not an image still names them (schema 2)
    snapshots   a containerd snapshot key -> JSON record of the snapshotter (schema 2)
    sha256      32-byte SHA-256 of an object's content -> 32-byte object ids (sorted
                duplicates): what zstd:chunked and eStargz TOCs name files by (schema 3)
    object_sha256   32-byte object id -> the SHA-256 of its content: which objects the sha256
                map holds.  Both stay empty until a store first meets a chunked layer
                (store/contentmap.py fills them); meta b"sha256-map" -> b"" says it did

Reference counts: a layer counts the image slots that name it; an object counts the layers that
contain it (once per layer).  The empty file is never an object.

Locking: LMDB allows one write transaction at a time across all processes and threads and gives
every reader a consistent snapshot.  Writes here are short: objects are written to disk before
the transaction that references them begins.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import threading
from dataclasses import dataclass, field

import lmdb
import zstandard

from .. import errors

SCHEMA_VERSION = 3
_OBJ = struct.Struct("<QI")
_DBS = ("meta", "images", "tags", "metadata", "layers", "layer_data", "image_trees", "blobs",
        "objects", "blob_locations", "repo_digests", "pins", "snapshots", "sha256",
        "object_sha256")
_DUPSORT = ("sha256",)
LOCATIONS_KEPT = 16     # per blob: enough to find one to mount from, bounded
MAP_SIZE = 1 << 40      # address space, not disk: the file grows as data is written

# py-lmdb requires one Environment per database per process.
_envs: dict[tuple[int, int, int], list] = {}
_envs_lock = threading.Lock()


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


@dataclass
class LayerRecord:
    diff_id: str
    stream_bytes: int
    entries: int
    files: int
    file_bytes: int
    new_objects: int        # objects this layer added to the store when first imported
    new_bytes: int
    blobs: list = field(default_factory=list)   # [{"digest", "media_type", "size"}]
    refs: int = 0

    def to_json(self) -> bytes:
        return _dumps(self.__dict__)

    @classmethod
    def from_json(cls, raw: bytes) -> "LayerRecord":
        return cls(**json.loads(raw))


@dataclass
class ImageRecord:
    id: str
    diff_ids: list
    tags: list
    manifest_digest: str | None     # None when the archive had no manifest blob (docker-archive)
    manifest_media_type: str | None
    source_format: str              # "docker-archive", "oci", ...
    created: str | None
    size: int                       # logical bytes of regular files over all layers
    imported: float

    def to_json(self) -> bytes:
        return _dumps(self.__dict__)

    @classmethod
    def from_json(cls, raw: bytes) -> "ImageRecord":
        return cls(**json.loads(raw))


class Index:
    """The store's index.  Thread-safe: each method runs in its own transaction."""

    def __init__(self, path: str) -> None:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path)
        # LMDB environments must not cross fork(): a child opens its own.
        self._key = (os.getpid(), st.st_dev, st.st_ino)
        with _envs_lock:
            entry = _envs.get(self._key)
            if entry is None:
                try:
                    env = lmdb.open(path, map_size=MAP_SIZE, max_dbs=len(_DBS), mode=0o600,
                                    subdir=True, max_readers=512)
                except lmdb.Error as exc:
                    raise errors.StoreIOError(0, f"cannot open the index at {path}: {exc}") \
                        from exc
                # A process killed inside a read transaction keeps its reader slot while any
                # other process holds the environment open: its snapshot pins old pages (the
                # file only grows) and, once max_readers are stale, every read fails.
                env.reader_check()
                dbs = {name: env.open_db(name.encode(), dupsort=name in _DUPSORT)
                       for name in _DBS}
                entry = _envs[self._key] = [env, dbs, 0]
            entry[2] += 1
        self.env, self.db = entry[0], entry[1]
        self._check_schema()

    def close(self) -> None:
        with _envs_lock:
            entry = _envs.get(self._key)
            if entry is None or entry[0] is not self.env:
                return
            entry[2] -= 1
            if entry[2] == 0:
                del _envs[self._key]
                self.env.close()

    def _check_schema(self) -> None:
        with self.env.begin(write=True) as txn:
            raw = txn.get(b"schema", db=self.db["meta"])
            if raw is None:
                txn.put(b"schema", str(SCHEMA_VERSION).encode(), db=self.db["meta"])
                return
            version = int(raw)
            if version > SCHEMA_VERSION:
                raise errors.LayerstoreError(
                    f"the store's index has schema {version}, newer than this layerstore "
                    f"understands ({SCHEMA_VERSION}): upgrade layerstore")
            if version < SCHEMA_VERSION:
                for step in range(version, SCHEMA_VERSION):
                    _MIGRATIONS[step](self, txn)
                txn.put(b"schema", str(SCHEMA_VERSION).encode(), db=self.db["meta"])

    def read(self):
        """A read-only transaction: a consistent snapshot of the whole index."""
        return self.env.begin(write=False)

    def write(self):
        """The write transaction (one at a time across processes)."""
        return self.env.begin(write=True)

    # ---- reads --------------------------------------------------------------------------------

    def image(self, txn, image_id: str) -> ImageRecord | None:
        raw = txn.get(image_id.encode(), db=self.db["images"])
        return ImageRecord.from_json(raw) if raw is not None else None

    def images(self, txn) -> list[ImageRecord]:
        return [ImageRecord.from_json(v) for _, v in txn.cursor(db=self.db["images"])]

    def image_ids_with_prefix(self, txn, prefix: str) -> list[str]:
        cur = txn.cursor(db=self.db["images"])
        out = []
        if cur.set_range(prefix.encode()):
            for key in cur.iternext(values=False):
                if not key.startswith(prefix.encode()):
                    break
                out.append(key.decode())
        return out

    def tag(self, txn, name: str) -> str | None:
        raw = txn.get(name.encode(), db=self.db["tags"])
        return raw.decode() if raw is not None else None

    def metadata(self, txn, digest: str) -> bytes | None:
        return txn.get(digest.encode(), db=self.db["metadata"])

    def layer(self, txn, diff_id: str) -> LayerRecord | None:
        raw = txn.get(diff_id.encode(), db=self.db["layers"])
        return LayerRecord.from_json(raw) if raw is not None else None

    def layers(self, txn) -> list[LayerRecord]:
        return [LayerRecord.from_json(v) for _, v in txn.cursor(db=self.db["layers"])]

    def layer_data(self, txn, diff_id: str, part: str, compressed: bool = False) -> bytes:
        """A layer's "records" or "raw" tar metadata; with compressed, as stored (zstd)."""
        raw = txn.get(f"{diff_id}/{part}".encode(), db=self.db["layer_data"])
        if raw is None:
            raise errors.LayerstoreError(f"the index has no {part} for layer {diff_id}")
        return raw if compressed else zstandard.ZstdDecompressor().decompress(raw)

    def image_tree(self, txn, image_id: str) -> bytes | None:
        raw = txn.get(image_id.encode(), db=self.db["image_trees"])
        return zstandard.ZstdDecompressor().decompress(raw) if raw is not None else None

    def blob_layer(self, txn, blob_digest: str) -> str | None:
        raw = txn.get(blob_digest.encode(), db=self.db["blobs"])
        return raw.decode() if raw is not None else None

    def object(self, txn, oid: bytes) -> tuple[int, int] | None:
        raw = txn.get(oid, db=self.db["objects"])
        return _OBJ.unpack(raw) if raw is not None else None

    def blob_locations(self, txn, digest: str) -> list[str]:
        """Where a blob was seen: "registry/repository", most recent first."""
        raw = txn.get(digest.encode(), db=self.db["blob_locations"])
        return json.loads(raw) if raw is not None else []

    def repo_digest(self, txn, ref: str) -> str | None:
        """The image a "domain/path@sha256:..." reference was pulled as."""
        raw = txn.get(ref.encode(), db=self.db["repo_digests"])
        return raw.decode() if raw is not None else None

    def pins(self, txn) -> dict[str, list[str]]:
        """Every pin: its name -> the diffIDs it holds, bottom first."""
        return {k.decode(): json.loads(v) for k, v in txn.cursor(db=self.db["pins"])}

    def snapshot(self, txn, key: str) -> dict | None:
        """A containerd snapshot's record (runtimes/snapshotter.py), by its backend key."""
        raw = txn.get(key.encode(), db=self.db["snapshots"])
        return json.loads(raw) if raw is not None else None

    def snapshots(self, txn) -> dict[str, dict]:
        return {k.decode(): json.loads(v) for k, v in txn.cursor(db=self.db["snapshots"])}

    def repo_digests(self, txn, image_id: str) -> list[str]:
        """Every "domain/path@sha256:..." an image was pulled as, sorted."""
        want = image_id.encode()
        return sorted(k.decode() for k, v in txn.cursor(db=self.db["repo_digests"]) if v == want)

    # ---- writes (inside a write transaction) --------------------------------------------------

    def add_layer(self, txn, rec: LayerRecord, records: bytes, raw: bytes,
                  objects: dict[bytes, int]) -> bool:
        """Adds a layer with refs 0 and counts a reference to each of its objects.  Returns
        False (and only records blob digests) when the layer is already indexed, as when
        another process imported it meanwhile."""
        key = rec.diff_id.encode()
        self.clear_reimport(txn, rec.diff_id)   # ingested again: its objects exist again
        existing = txn.get(key, db=self.db["layers"])
        if existing is not None:
            old = LayerRecord.from_json(existing)
            known = {b["digest"] for b in old.blobs}
            new = [b for b in rec.blobs if b["digest"] not in known]
            if new:
                old.blobs.extend(new)
                txn.put(key, old.to_json(), db=self.db["layers"])
            self._map_blobs(txn, rec)
            return False
        cctx = zstandard.ZstdCompressor(level=3)
        txn.put(key, rec.to_json(), db=self.db["layers"])
        txn.put(key + b"/records", cctx.compress(records), db=self.db["layer_data"])
        txn.put(key + b"/raw", cctx.compress(raw), db=self.db["layer_data"])
        self._map_blobs(txn, rec)
        odb = self.db["objects"]
        for oid, size in objects.items():
            cur = txn.get(oid, db=odb)
            refs = _OBJ.unpack(cur)[1] if cur is not None else 0
            txn.put(oid, _OBJ.pack(size, refs + 1), db=odb)
        return True

    def _map_blobs(self, txn, rec: LayerRecord) -> None:
        for b in rec.blobs:
            if b["digest"] != rec.diff_id:
                txn.put(b["digest"].encode(), rec.diff_id.encode(), db=self.db["blobs"])

    def add_blob_location(self, txn, digest: str, location: str) -> None:
        """Records that a blob is at location ("registry/repository"): only once a pull has
        verified it or a push has had the registry accept it."""
        seen = [loc for loc in self.blob_locations(txn, digest) if loc != location]
        txn.put(digest.encode(), _dumps([location, *seen][:LOCATIONS_KEPT]),
                db=self.db["blob_locations"])

    def add_layer_blob(self, txn, diff_id: str, blob: dict) -> bool:
        """Records one more compressed blob of a stored layer ({"digest", "media_type",
        "size", ...}: a push made it, with its recipe) and maps its digest to the layer.
        False when the layer is gone or already has it."""
        key = diff_id.encode()
        raw = txn.get(key, db=self.db["layers"])
        if raw is None:
            return False
        rec = LayerRecord.from_json(raw)
        if any(b["digest"] == blob["digest"] for b in rec.blobs):
            return False
        rec.blobs.append(dict(blob))
        txn.put(key, rec.to_json(), db=self.db["layers"])
        self._map_blobs(txn, rec)
        return True

    def pin(self, txn, name: str, diff_ids: list[str]) -> None:
        """Keeps diff_ids (a chain, bottom first) and their layer dirs from gc under name
        until unpin(name).  Each must be a stored layer."""
        for d in diff_ids:
            if self.layer(txn, d) is None:
                raise errors.LayerNotFound(f"cannot pin layer {d}: it is not in the store")
        txn.put(name.encode(), _dumps(list(diff_ids)), db=self.db["pins"])

    def unpin(self, txn, name: str) -> bool:
        """Drops a pin; False when there was none."""
        return txn.delete(name.encode(), db=self.db["pins"])

    def put_snapshot(self, txn, key: str, rec: dict) -> None:
        txn.put(key.encode(), _dumps(rec), db=self.db["snapshots"])

    def delete_snapshot(self, txn, key: str) -> None:
        txn.delete(key.encode(), db=self.db["snapshots"])

    def add_repo_digest(self, txn, ref: str, image_id: str) -> None:
        """ref ("domain/path@sha256:...") names image_id from now on (a later pull of the same
        digest may bring another platform's image: the last one pulled wins, as in Docker)."""
        txn.put(ref.encode(), image_id.encode(), db=self.db["repo_digests"])

    def put_image_tree(self, txn, image_id: str, plan: bytes) -> None:
        txn.put(image_id.encode(), zstandard.ZstdCompressor(level=3).compress(plan),
                db=self.db["image_trees"])

    def put_metadata(self, txn, digest: str, data: bytes) -> None:
        txn.put(digest.encode(), data, db=self.db["metadata"], overwrite=False)

    def add_image(self, txn, rec: ImageRecord, tags: list[str]) -> ImageRecord:
        """Adds an image (counting a reference to each of its layers) or, when it exists,
        adds the tags to it.  Tags move from any image that held them.  Returns the record."""
        key = rec.id.encode()
        existing = txn.get(key, db=self.db["images"])
        if existing is not None:
            stored = ImageRecord.from_json(existing)
        else:
            stored = rec
            rec.tags = []
            ldb = self.db["layers"]
            for diff_id in rec.diff_ids:
                raw = txn.get(diff_id.encode(), db=ldb)
                if raw is None:
                    raise errors.LayerstoreError(f"layer {diff_id} vanished from the index "
                                                 f"while importing {rec.id}")
                layer = LayerRecord.from_json(raw)
                layer.refs += 1
                txn.put(diff_id.encode(), layer.to_json(), db=ldb)
        for tag in dict.fromkeys(tags):
            self.set_tag(txn, tag, stored)
        txn.put(key, stored.to_json(), db=self.db["images"])
        return stored

    def set_tag(self, txn, tag: str, image: ImageRecord) -> None:
        """Points tag at image (whose record the caller writes), taking it from its holder."""
        tdb, idb = self.db["tags"], self.db["images"]
        old = txn.get(tag.encode(), db=tdb)
        if old is not None and old.decode() != image.id:
            holder_raw = txn.get(old, db=idb)
            if holder_raw is not None:
                holder = ImageRecord.from_json(holder_raw)
                holder.tags = [t for t in holder.tags if t != tag]
                txn.put(old, holder.to_json(), db=idb)
        txn.put(tag.encode(), image.id.encode(), db=tdb)
        if tag not in image.tags:
            image.tags.append(tag)

    # ---- lifecycle: rm and gc (logic in store/lifecycle.py) ------------------------------------

    def remove_tag(self, txn, tag: str) -> str | None:
        """Deletes tag and takes it from its image's record.  Returns the image id it named."""
        raw = txn.pop(tag.encode(), db=self.db["tags"])
        if raw is None:
            return None
        holder = self.image(txn, raw.decode())
        if holder is not None and tag in holder.tags:
            holder.tags = [t for t in holder.tags if t != tag]
            txn.put(raw, holder.to_json(), db=self.db["images"])
        return raw.decode()

    def delete_image(self, txn, image_id: str) -> ImageRecord | None:
        """Deletes an image record, its tags, config, manifest and checkout plan, and takes
        one reference from each of its layers (per slot, as add_image counted them).  Layers
        and objects stay until gc."""
        rec = self.image(txn, image_id)
        if rec is None:
            return None
        for tag in rec.tags:
            if self.tag(txn, tag) == image_id:
                txn.delete(tag.encode(), db=self.db["tags"])
        key = image_id.encode()
        txn.delete(key, db=self.db["images"])
        txn.delete(key, db=self.db["image_trees"])
        for ref in self.repo_digests(txn, image_id):
            txn.delete(ref.encode(), db=self.db["repo_digests"])
            # An index a pull kept (its bytes, for the next pull of it) goes with the last
            # image pulled through it.
            digest = ref.rpartition("@")[2]
            if digest != rec.manifest_digest and not any(
                    k.decode().endswith("@" + digest)
                    for k, _ in txn.cursor(db=self.db["repo_digests"])):
                txn.delete(digest.encode(), db=self.db["metadata"])
        # A config is named by the image id, so it is this image's alone.  A manifest names
        # its config, so no other image can share it either; checked all the same, since a
        # row deleted wrongly is an image that cannot be saved.
        txn.delete(key, db=self.db["metadata"])
        if rec.manifest_digest is not None and \
                not any(r.manifest_digest == rec.manifest_digest for r in self.images(txn)):
            txn.delete(rec.manifest_digest.encode(), db=self.db["metadata"])
        ldb = self.db["layers"]
        for diff_id in rec.diff_ids:
            raw = txn.get(diff_id.encode(), db=ldb)
            if raw is None:
                continue        # fsck's business: a dangling slot frees nothing
            layer = LayerRecord.from_json(raw)
            layer.refs = max(0, layer.refs - 1)
            txn.put(diff_id.encode(), layer.to_json(), db=ldb)
        return rec

    def unreferenced_layers(self, txn) -> list[LayerRecord]:
        """Layers no image names and no pin holds: what gc frees."""
        pinned = {d for chain in self.pins(txn).values() for d in chain}
        return [r for r in self.layers(txn) if r.refs <= 0 and r.diff_id not in pinned]

    def delete_layer(self, txn, rec: LayerRecord) -> dict[bytes, int]:
        """Deletes a layer's record, data and blob mappings, and takes its reference from
        each of its objects.  Object rows that reach zero are deleted too (a zero row is never
        stored, so gc need not scan the objects db for them): returns those {id: size}; the
        caller unlinks their files after the transaction commits."""
        key = rec.diff_id.encode()
        raw = txn.get(key + b"/records", db=self.db["layer_data"])
        objects = {} if raw is None else _records_objects(
            zstandard.ZstdDecompressor().decompress(raw))
        txn.delete(key, db=self.db["layers"])
        txn.delete(key + b"/records", db=self.db["layer_data"])
        txn.delete(key + b"/raw", db=self.db["layer_data"])
        self.clear_reimport(txn, rec.diff_id)   # nothing left to re-import it for
        bdb = self.db["blobs"]
        for b in rec.blobs:
            if txn.get(b["digest"].encode(), db=bdb) == key:
                txn.delete(b["digest"].encode(), db=bdb)
            txn.delete(b["digest"].encode(), db=self.db["blob_locations"])
        odb = self.db["objects"]
        freed = {}
        for oid in objects:
            cur = txn.get(oid, db=odb)
            if cur is None:
                continue
            size, refs = _OBJ.unpack(cur)
            if refs <= 1:
                txn.delete(oid, db=odb)
                freed[oid] = size
            else:
                txn.put(oid, _OBJ.pack(size, refs - 1), db=odb)
        return freed

    def object_count(self, txn) -> int:
        return txn.stat(self.db["objects"])["entries"]

    # ---- the content SHA-256 map (store/contentmap.py) ------------------------------------------

    _SHA256_MAP = b"sha256-map"

    def has_sha256_map(self, txn) -> bool:
        return txn.get(self._SHA256_MAP, db=self.db["meta"]) is not None

    def sha256_objects(self, txn, sha: bytes) -> list[bytes]:
        """The ids of live objects whose content has SHA-256 sha (none if the map lacks it)."""
        cur = txn.cursor(db=self.db["sha256"])
        if not cur.set_key(sha):
            return []
        odb = self.db["objects"]
        return [oid for oid in cur.iternext_dup() if txn.get(oid, db=odb) is not None]

    def sha256_object(self, txn, sha: bytes, size: int) -> bytes | None:
        """A live object of size bytes whose content has SHA-256 sha, or None.  A partial
        pull asks for each file of a layer: the first of the content's objects, which is
        nearly always the one, costs two gets and no cursor."""
        first = txn.get(sha, db=self.db["sha256"])
        if first is None:
            return None
        odb = self.db["objects"]
        raw = txn.get(first, db=odb)
        if raw is not None and _OBJ.unpack(raw)[0] == size:
            return first
        return next((oid for oid in self.sha256_objects(txn, sha)
                     if _OBJ.unpack(txn.get(oid, db=odb))[0] == size), None)

    def sha256_todo(self, txn) -> tuple[list[tuple[bytes, int]], list[bytes]]:
        """(objects the map lacks, with their sizes; ids the map holds that gc removed)."""
        mapped = self.db["object_sha256"]
        missing = [(oid, _OBJ.unpack(v)[0]) for oid, v in txn.cursor(db=self.db["objects"])
                   if txn.get(oid, db=mapped) is None]
        odb = self.db["objects"]
        dead = [oid for oid in txn.cursor(db=mapped).iternext(values=False)
                if txn.get(oid, db=odb) is None]
        return missing, dead

    def put_sha256(self, txn, found: list[tuple[bytes, bytes]], dead: list[bytes]) -> None:
        """Adds (object id, content SHA-256) pairs, drops dead ids, and marks the map made."""
        mapped, by_sha = self.db["object_sha256"], self.db["sha256"]
        for oid in dead:
            sha = txn.get(oid, db=mapped)
            if sha is not None:
                txn.delete(sha, oid, db=by_sha)
                txn.delete(oid, db=mapped)
        for oid, sha in found:
            txn.put(oid, sha, db=mapped)
            txn.put(sha, oid, db=by_sha)
        txn.put(self._SHA256_MAP, b"", db=self.db["meta"])

    # ---- fsck (store/fsck.py): raw rows and re-import marks -----------------------------------
    # A layer whose objects fsck found missing or damaged gets a mark in meta,
    # b"reimport/<diffID>": import treats a marked layer as unknown and ingests it again, which
    # re-creates its objects, and add_layer drops the mark.  The layer's records, its objects'
    # reference counts and the images naming it stay as they were, so nothing else changes.

    _REIMPORT = b"reimport/"

    def rows(self, txn, name: str):
        """Every (key, value) of one named database, raw."""
        return txn.cursor(db=self.db[name]).iternext()

    def put_row(self, txn, name: str, key: bytes, value: bytes) -> None:
        txn.put(key, value, db=self.db[name])

    def delete_row(self, txn, name: str, key: bytes) -> None:
        txn.delete(key, db=self.db[name])

    @staticmethod
    def pack_object(size: int, refs: int) -> bytes:
        return _OBJ.pack(size, refs)

    @staticmethod
    def unpack_object(raw: bytes) -> tuple[int, int]:
        return _OBJ.unpack(raw)

    def reimport_marks(self, txn) -> set[str]:
        cur = txn.cursor(db=self.db["meta"])
        out = set()
        if cur.set_range(self._REIMPORT):
            for key in cur.iternext(values=False):
                if not key.startswith(self._REIMPORT):
                    break
                out.add(key[len(self._REIMPORT):].decode())
        return out

    def needs_reimport(self, txn, diff_id: str) -> bool:
        return txn.get(self._REIMPORT + diff_id.encode(), db=self.db["meta"]) is not None

    def mark_reimport(self, txn, diff_id: str) -> None:
        txn.put(self._REIMPORT + diff_id.encode(), b"", db=self.db["meta"])

    def clear_reimport(self, txn, diff_id: str) -> None:
        txn.delete(self._REIMPORT + diff_id.encode(), db=self.db["meta"])


def _records_objects(records: bytes) -> dict[bytes, int]:
    from .._native import record_objects     # the index stays importable without the C core
    return record_objects(records)


def commit_error(exc: Exception, root: str) -> errors.StoreIOError:
    """A failed index commit as a StoreIOError.  LMDB reports a write cut short by a full disk
    as EIO, so a nearly full filesystem is taken for what it is."""
    err = errno.EIO
    try:
        st = os.statvfs(root)
        if st.f_bavail * st.f_frsize < (1 << 20) or "No space" in str(exc):
            err = errno.ENOSPC
    except OSError:
        pass
    return errors.StoreIOError(err, f"cannot commit to the index: {os.strerror(err)} ({exc})")


def _from_1(index: Index, txn) -> None:
    """Schema 1 -> 2: blob_locations, repo_digests, pins and snapshots appear, empty (LMDB
    makes a named database when it is first opened): nothing to convert."""


def _from_2(index: Index, txn) -> None:
    """Schema 2 -> 3: the content SHA-256 map (sha256, object_sha256) appears, empty: it is
    filled when the store first meets a chunked layer."""


# version -> the function that brings an index of that version to the next, run in order
# inside the write transaction that then records SCHEMA_VERSION.
_MIGRATIONS = {1: _from_1, 2: _from_2}
