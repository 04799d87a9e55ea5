"""What the implementation modules share of an open store: its root, index and object store,
and the few lookups every one of them needs.  The Store facade makes one Context and hands it
to the module that does each operation, after taking the lock that operation needs (see
store/lock.py): a Context has no lock, so no implementation module takes one.
"""

from __future__ import annotations

import json
import os

from .. import _native
from .._model import Entry, Image, Layer
from ..errors import ImageNotFound, InvalidReference, LayerNotFound
from ..formats.reference import (DIGEST_RE, HEX_PREFIX_RE, MIN_PREFIX, SHORT_PREFIX_RE,
                                 normalize_tag, parse_reference)
from .index import ImageRecord, Index, LayerRecord
from .tree import Tree, build


class Context:
    """An open store: root, index (LMDB) and objects (the C object store).  Closed by its
    Store."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.objects_dir = os.path.join(root, "objects")
        self.objects = _native.ObjectStore(root)
        try:
            self.index = Index(os.path.join(root, "index"))
        except BaseException:
            self.objects.close()
            raise

    def close(self) -> None:
        self.index.close()
        self.objects.close()

    def object_path(self, object_id: str) -> str:
        return os.path.join(self.objects_dir, _native.object_path(object_id))

    def resolve(self, txn, ref: str) -> ImageRecord:
        """The image ref names: an id, a unique id prefix of 12+ hex digits, a tag, or the
        digest it was pulled as (name@sha256:...).  A
        shorter prefix is refused, with the rule, rather than read as a tag that is absent."""
        index = self.index
        if DIGEST_RE.match(ref):
            rec = index.image(txn, ref)
            if rec is not None:
                return rec
        m = HEX_PREFIX_RE.match(ref)
        if m:
            ids = index.image_ids_with_prefix(txn, "sha256:" + m.group(1))
            if len(ids) == 1:
                return index.image(txn, ids[0])
            if len(ids) > 1:
                raise ImageNotFound(f"image id prefix {ref!r} is ambiguous: it matches "
                                    f"{len(ids)} images")
        if "@" in ref:      # name@sha256:...: the digest a pull got the image by
            r = parse_reference(ref)
            image_id = index.repo_digest(txn, f"{r.name}@{r.digest}")
            rec = index.image(txn, image_id) if image_id is not None else None
            if rec is None:
                raise ImageNotFound(f"no such image: {ref} (no image was pulled as "
                                    f"{r.name}@{r.digest})")
            return rec
        image_id = index.tag(txn, normalize_tag(ref))     # InvalidReference, as Docker
        if image_id is not None:
            rec = index.image(txn, image_id)
            if rec is not None:
                return rec
        if SHORT_PREFIX_RE.match(ref):
            rule = f"an image id prefix needs at least {MIN_PREFIX} hex digits"
            if ref.startswith("sha256:"):
                raise InvalidReference(f"image id prefix {ref!r} is too short: {rule}")
            raise ImageNotFound(f"no such image: {ref} (no such tag, and {rule})")
        raise ImageNotFound(f"no such image: {ref}")

    def image(self, ref: str) -> ImageRecord:
        with self.index.read() as txn:
            return self.resolve(txn, ref)

    def config(self, ref: str) -> dict:
        with self.index.read() as txn:
            return json.loads(self.index.metadata(txn, self.resolve(txn, ref).id))

    def layer_entries(self, diff_id: str) -> list[Entry]:
        """The entries of one layer, in archive order (whiteouts included)."""
        with self.index.read() as txn:
            if self.index.layer(txn, diff_id) is None:
                raise LayerNotFound(f"no such layer: {diff_id}")
            records = self.index.layer_data(txn, diff_id, "records")
        return [r.entry for r in _native.decode_records(records)]

    def tree(self, ref: str) -> Tree:
        """The image's merged tree, built from its layers' records."""
        with self.index.read() as txn:
            rec = self.resolve(txn, ref)
            blobs = [self.index.layer_data(txn, d, "records") for d in rec.diff_ids]
        return build([r.entry for r in _native.decode_records(b)] for b in blobs)

    def platform(self, txn, rec: ImageRecord) -> str | None:
        """os/arch[/variant] as the image's config states it."""
        config = json.loads(self.index.metadata(txn, rec.id) or b"{}")
        if "os" not in config or "architecture" not in config:
            return None
        p = f"{config['os']}/{config['architecture']}"
        return f"{p}/{config['variant']}" if config.get("variant") else p


def image_of(rec: ImageRecord, platform: str | None, repo_digests=()) -> Image:
    """The public view of an image record."""
    return Image(rec.id, tuple(rec.tags), tuple(rec.diff_ids), rec.created, rec.size, platform,
                 rec.source_format, tuple(repo_digests))


def layer_of(rec: LayerRecord) -> Layer:
    """The public view of a layer record."""
    return Layer(rec.diff_id, rec.stream_bytes, rec.entries, rec.files, rec.file_bytes,
                 rec.new_objects, rec.new_bytes, tuple(b["digest"] for b in rec.blobs), rec.refs)
