"""A containers-storage read-only image store over the store's layer dirs: podman, buildah,
CRI-O and skopeo's containers-storage: transport run and read images layerstore holds, with
no layer copied.

The layout is what containers/storage's overlay driver reads as an additional image store
(storage.conf `additionalimagestores`, or `--storage-opt overlay.imagestore=DIR`), checked
against c/storage v1.43 (podman 4.3) and a store `podman load` wrote:

    DIR/overlay/<layer id>/diff        symlink to the layer dir (runtimes/overlay.py layer_dirs:
                                       whiteouts as 0/0 char devices, opaque dirs by xattr)
    DIR/overlay/<layer id>/link        its short name, 26 chars [A-Z2-7]
    DIR/overlay/<layer id>/lower       "l/<parent link>:l/<grandparent link>..." (not the bottom)
    DIR/overlay/l/<link>               -> ../<layer id>/diff
    DIR/overlay-layers/layers.json     the layers: id, parent, diff digest and size, ...
    DIR/overlay-layers/<id>.tar-split.gz   tar-split of the layer (formats/tarsplit.py)
    DIR/overlay-images/images.json     the images: id, names, top layer, big-data names ...
    DIR/overlay-images/<image id>/     big data: the manifest ("manifest", "manifest-<digest>")
                                       and the config ("sha256:<image id>"), file names as
                                       c/storage's makeBigDataBaseName makes them
    DIR/overlay-{layers,images}/{layers,images}.lock   c/storage's lock files

Layer ids are containers/image's: the bottom layer's is its diffID's hex, each next one
sha256(<parent id> + "+" + <diffID hex>), so a `podman pull` of the same image finds its layers
here and stores none.  Image ids are config digests, as c/image makes them.

An export is explicit (`layerstore cstore DIR IMAGE...`), not a store kept under the root on
every import: the user picks which images a runtime sees and where (CRI-O's storage.conf, a
read-only bind mount for a pod), several stores can exist, and imports pay nothing for it.
`layerstore rm` keeps them current the other way: an image rm deletes goes from every store
that serves it.

Writing.  Under c/storage's own locks (fcntl write locks on both lock files, which readers
take shared), new layer dirs and per-layer files are made first (each overlay/<id> built
beside its place and renamed in), then layers.json and images.json are replaced by rename,
then the lock files get a new last-writer id, which is how a running podman notices and
reloads; files of layers and images no longer listed go last.  Pins: every layer listed holds
the pin "cstore/<DIR>/<layer id>" (its chain of diffIDs), taken before any file names it and
dropped only after no file does, so gc never frees a layer dir a runtime may read.

tar-split.  c/storage rebuilds a layer's tar for `podman save`/`push` from its tar-split
(formats/tarsplit.py), gzip'd beside the layer, file contents read from diff/<name> and
checked against the CRC.  The rebuilt tar is the imported one, so `podman save` gives back the
same diffIDs.  A layer with sparse files, or with two regular files at one path, gets none
(tar-split cannot say it); save of its images then fails in podman as it would without.
"""

from __future__ import annotations

import base64
import fcntl
import gzip
import hashlib
import json
import os
import secrets
import shutil
import tempfile
import threading
from contextlib import contextmanager

from .. import _native, errors
from ..formats import tarsplit
from ..formats.reference import DIGEST_RE, normalize_tag
from ..store.context import Context
from ..store.index import ImageRecord
from .overlay import _hex, _kernel_mode, _now, layer_dirs

DRIVER = "overlay"
PIN_PREFIX = "cstore/"
MARK = "layerstore-cstore"      # a file in DIR: layerstore made it, and may rewrite it
_LINK_LEN = 26
# c/storage's fcntl locks order processes; threads of one process (which share those locks)
# take turns here.
_writing = threading.Lock()


def layer_ids(diff_ids) -> list[str]:
    """containers/image's layer ids for a chain of diffIDs, bottom first."""
    out: list[str] = []
    for d in diff_ids:
        out.append(_hex(d) if not out else
                   hashlib.sha256(f"{out[-1]}+{_hex(d)}".encode()).hexdigest())
    return out


def _link_name(layer_id: str) -> str:
    # c/storage draws 26 random base32 characters; one derived from the id is as unique and
    # makes a rewrite of the store idempotent.
    digest = hashlib.sha256(b"layerstore-cstore-link\0" + layer_id.encode()).digest()
    return base64.b32encode(digest).decode()[:_LINK_LEN]


def _big_data_name(key: str) -> str:
    """c/storage's makeBigDataBaseName."""
    if all(c == "." or "0" <= c <= "9" or "a" <= c <= "z" for c in key):
        return key
    return "=" + base64.b64encode(key.encode()).decode()


def _pin(dest: str, layer_id: str) -> str:
    return f"{PIN_PREFIX}{dest}/{layer_id}"


def stores(index, txn) -> dict[str, set[str]]:
    """Every exported store (its directory) -> the layer ids pinned for it."""
    out: dict[str, set[str]] = {}
    for name in index.pins(txn):
        if name.startswith(PIN_PREFIX):
            dest, _, lid = name[len(PIN_PREFIX):].rpartition("/")
            out.setdefault(dest, set()).add(lid)
    return out


# ---- files ------------------------------------------------------------------------------------

def _write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    tmp = f"{path}.tmp-{secrets.token_hex(4)}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def _rm(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


@contextmanager
def _locked(dest: str):
    """c/storage's layer and image store locks (fcntl, which podman takes shared to read),
    held for writing; on release each gets a new last-writer id, so readers reload."""
    fds = []
    try:
        for sub, name in (("overlay-layers", "layers.lock"), ("overlay-images", "images.lock")):
            fd = os.open(os.path.join(dest, f"{sub}", name),
                         os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            fds.append(fd)
            fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        for fd in fds:
            try:
                os.pwrite(fd, secrets.token_bytes(64), 0)   # lastWriterIDSize
            finally:
                os.close(fd)    # closing drops the fcntl lock


def _read_json(path: str) -> list:
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        return []
    except ValueError as exc:
        raise errors.LayerstoreError(f"{path} is not JSON ({exc}): not a store layerstore "
                                     "wrote") from None
    return data if isinstance(data, list) else []


# ---- the store --------------------------------------------------------------------------------

def _resolve_in(images: list[dict], ref: str) -> dict:
    """An image of the store by id (with or without "sha256:"), 12+ hex prefix, or name."""
    h = ref.removeprefix("sha256:")
    hits = [i for i in images if i["id"] == h]
    if not hits and len(h) >= 12 and all(c in "0123456789abcdef" for c in h):
        hits = [i for i in images if i["id"].startswith(h)]
    if not hits and not DIGEST_RE.match(ref):
        try:
            name = normalize_tag(ref)
        except errors.InvalidReference:
            name = None
        hits = [i for i in images if name in i.get("names", [])]
    if len(hits) != 1:
        raise errors.ImageNotFound(f"no such image in the containers-storage store: {ref}"
                                   if not hits else f"image {ref!r} is ambiguous")
    return hits[0]


def _manifest(ctx: Context, txn, rec: ImageRecord, config: bytes) -> tuple[bytes, str]:
    """The image's manifest bytes and digest: the one it came with, else an OCI manifest of
    its uncompressed layers over the same config (as `save --format oci` writes)."""
    from ..formats.export import SaveImage, oci_manifest
    if rec.manifest_digest:
        data = ctx.index.metadata(txn, rec.manifest_digest)
        try:
            doc = json.loads(data) if data is not None else {}
            # Not an index, nor a manifest of another config: c/image reads it as this one's.
            if (len(doc.get("layers") or []) == len(rec.diff_ids) and
                    doc.get("config", {}).get("digest") == rec.id):
                return bytes(data), rec.manifest_digest
        except (ValueError, AttributeError):
            pass
    sizes = {d: ctx.index.layer(txn, d).stream_bytes for d in rec.diff_ids}
    data, _ = oci_manifest(SaveImage(rec.id, list(rec.tags), list(rec.diff_ids), config,
                                     None, None), sizes)
    return data, "sha256:" + hashlib.sha256(data).hexdigest()


def _layer_entry(ctx: Context, txn, lid: str, parent: str | None, diff_id: str,
                 blob: tuple[str, int] | None) -> dict:
    index = ctx.index
    rec = index.layer(txn, diff_id)
    uids, gids = set(), set()
    for typ, _, _, uid, gid, *_ in _native.scan_records(index.layer_data(txn, diff_id,
                                                                          "records")):
        uids.add(uid)
        gids.add(gid)
    d = {"id": lid}
    if parent:
        d["parent"] = parent
    digest, size = blob if blob else (diff_id, rec.stream_bytes)
    d.update({"created": _now(), "compressed-diff-digest": digest, "compressed-size": size,
              "diff-digest": diff_id, "diff-size": rec.stream_bytes,
              "uidset": sorted(uids), "gidset": sorted(gids)})
    return d


def exported(ctx: Context) -> bool:
    """Whether any store was exported (and so an rm may have to update one)."""
    with ctx.index.read() as txn:
        return bool(stores(ctx.index, txn))


def _manifest_blobs(manifest: bytes, n: int) -> list[tuple[str, int] | None]:
    """The compressed layer digests and sizes the manifest names, when it names n layers: a
    `podman pull` of the same image finds the layers by them and downloads nothing."""
    try:
        layers = json.loads(manifest).get("layers") or []
        if len(layers) == n:
            return [(l["digest"], int(l["size"])) for l in layers]
    except (ValueError, AttributeError, KeyError, TypeError):
        pass
    return [None] * n


def update(ctx: Context, dest, add=(), remove=()) -> list[str]:
    """Makes dest a containers-storage read-only store of its images plus those add names,
    less those remove names (by id, prefix or name as listed there) and those layerstore no
    longer has.  Returns the ids of the images it now holds.  The caller holds the store lock
    shared (layer dirs are built from the objects)."""
    dest = os.path.realpath(os.fspath(dest))
    index = ctx.index
    with index.read() as txn:
        adding = [ctx.resolve(txn, ref) for ref in add]
    if not adding and not remove and not os.path.isdir(os.path.join(dest, "overlay-images")):
        _forget(ctx, dest)      # deleted by hand: nothing reads its layers any more
        return []
    _claim_dir(ctx, dest)
    try:
        for sub in ("overlay/l", "overlay-layers", "overlay-images"):
            os.makedirs(os.path.join(dest, sub), mode=0o755, exist_ok=True)
        _write_atomic(os.path.join(dest, MARK), b"")
    except OSError as exc:
        raise errors.host_path_error(exc, dest, "make the containers-storage store at") \
            from None
    try:
        with _writing:
            _update(ctx, dest, adding, remove)
    except errors.LayerstoreError:
        raise
    except OSError as exc:
        raise errors.host_path_error(exc, dest, "write the containers-storage store at") \
            from None
    return ["sha256:" + i for i in _image_ids(dest)]


def _claim_dir(ctx: Context, dest: str) -> None:
    """Refuses a containers-storage store layerstore did not make (podman's own, named by
    mistake): a rewrite deletes every layer its lists do not name.  Stores made before MARK
    existed are known by their pins."""
    if os.path.exists(os.path.join(dest, MARK)) or not any(
            os.path.isfile(os.path.join(dest, sub, name)) for sub, name in (
                ("overlay-images", "images.json"), ("overlay-layers", "layers.json"))):
        return
    with ctx.index.read() as txn:
        if dest in stores(ctx.index, txn):
            return
    raise errors.LayerstoreError(f"{dest} is a containers-storage store not made by "
                                 "layerstore: it is left alone (name a new or empty directory)")


def _image_ids(dest: str) -> list[str]:
    return [i["id"] for i in _read_json(os.path.join(dest, "overlay-images", "images.json"))]


def _update(ctx: Context, dest: str, adding: list[ImageRecord], remove) -> None:
    """Rewrites dest under its locks and drops the pins of the layers it no longer lists."""
    index = ctx.index
    kernel = _kernel_mode()
    with _locked(dest):
        images_path = os.path.join(dest, "overlay-images", "images.json")
        layers_path = os.path.join(dest, "overlay-layers", "layers.json")
        listed = _read_json(images_path)
        dropped = {_resolve_in(listed, ref)["id"] for ref in remove}
        with index.read() as txn:
            want: dict[str, ImageRecord] = {}
            for old in listed:
                rec = index.image(txn, "sha256:" + old["id"])
                if rec is not None and old["id"] not in dropped:
                    want[old["id"]] = rec
            for rec in adding:
                # Named before DIR's locks were taken: an rm since then has already made
                # its pass over DIR, so serving the image now would outlive it.
                if index.image(txn, rec.id) is None:
                    raise errors.ImageNotFound(f"image {rec.id} was removed while cstore ran")
                want[_hex(rec.id)] = rec
            chains: dict[str, list[str]] = {}
            for rec in want.values():
                for i, lid in enumerate(layer_ids(rec.diff_ids)):
                    chains[lid] = list(rec.diff_ids[:i + 1])
        with index.write() as txn:      # pinned before any file names them
            for lid, chain in chains.items():
                index.pin(txn, _pin(dest, lid), chain)
        layers: dict[str, dict] = {}
        images = []
        for rec in want.values():
            dirs = layer_dirs(ctx, rec.diff_ids, kernel)
            lids = layer_ids(rec.diff_ids)
            with index.read() as txn:
                config = bytes(index.metadata(txn, rec.id))
                manifest, mdigest = _manifest(ctx, txn, rec, config)
                blobs = _manifest_blobs(manifest, len(lids))
                for i, lid in enumerate(lids):
                    if lid in layers:
                        continue
                    parent = lids[i - 1] if i else None
                    _make_layer(dest, lid, dirs[i], lids[:i])
                    layers[lid] = _layer_entry(ctx, txn, lid, parent, rec.diff_ids[i],
                                               blobs[i])
                    _make_tar_split(ctx, txn, dest, lid, rec.diff_ids[i])
            images.append(_make_image(dest, rec, config, manifest, mdigest,
                                      lids[-1] if lids else None))
        _write_atomic(layers_path, json.dumps(list(layers.values())).encode(), 0o600)
        _write_atomic(images_path, json.dumps(images).encode(), 0o600)
        _remove_stale(dest, set(layers), {i["id"] for i in images})
        # Still under the locks: once they are released another writer (another process) may
        # list and pin a layer again, and this one's unpinning would then drop its pin.
        with index.write() as txn:
            for lid in stores(index, txn).get(dest, set()) - set(layers):
                index.unpin(txn, _pin(dest, lid))


def _make_layer(dest: str, lid: str, layer_dir: str, lower_ids: list[str]) -> None:
    base = os.path.join(dest, DRIVER)
    final = os.path.join(base, lid)
    link = _link_name(lid)
    lower = ":".join(f"l/{_link_name(p)}" for p in reversed(lower_ids))
    diff = os.path.join(final, "diff")
    if (os.path.islink(diff) and os.readlink(diff) == layer_dir and
            os.path.exists(os.path.join(final, "link"))):
        pass
    else:
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=base)
        os.chmod(tmp, 0o700)
        os.symlink(layer_dir, os.path.join(tmp, "diff"))
        with open(os.path.join(tmp, "link"), "w") as f:
            f.write(link)
        if lower:
            with open(os.path.join(tmp, "lower"), "w") as f:
                f.write(lower)
        _rm(final)
        os.rename(tmp, final)
    short = os.path.join(base, "l", link)
    target = f"../{lid}/diff"
    if not (os.path.islink(short) and os.readlink(short) == target):
        _rm(short)
        os.symlink(target, short)


def _make_tar_split(ctx: Context, txn, dest: str, lid: str, diff_id: str) -> None:
    path = os.path.join(dest, "overlay-layers", f"{lid}.tar-split.gz")
    if os.path.exists(path):
        return      # a layer's tar-split never changes
    data = tarsplit.build(ctx, txn, diff_id)
    if data is not None:
        _write_atomic(path, gzip.compress(data, compresslevel=1, mtime=0), 0o600)


def _make_image(dest: str, rec: ImageRecord, config: bytes, manifest: bytes, mdigest: str,
                top: str | None) -> dict:
    iid = _hex(rec.id)
    d = os.path.join(dest, "overlay-images", iid)
    os.makedirs(d, mode=0o700, exist_ok=True)
    big = {f"manifest-{mdigest}": (manifest, mdigest), "manifest": (manifest, mdigest),
           rec.id: (config, rec.id)}
    for key, (data, _) in big.items():
        _write_atomic(os.path.join(d, _big_data_name(key)), data, 0o600)
    image = {"id": iid, "digest": mdigest, "names": list(rec.tags)}
    if top:
        image["layer"] = top
    image.update({"big-data-names": list(big),
                  "big-data-sizes": {k: len(v[0]) for k, v in big.items()},
                  "big-data-digests": {k: v[1] for k, v in big.items()},
                  "created": rec.created or _now()})
    return image


def _remove_stale(dest: str, layers: set[str], images: set[str]) -> None:
    base = os.path.join(dest, DRIVER)
    links = {_link_name(lid) for lid in layers}
    for name in os.listdir(base):
        if name != "l" and name not in layers:
            _rm(os.path.join(base, name))
    for name in os.listdir(os.path.join(base, "l")):
        if name not in links:
            _rm(os.path.join(base, "l", name))
    ldir = os.path.join(dest, "overlay-layers")
    for name in os.listdir(ldir):
        if name.endswith(".tar-split.gz") and name[:-len(".tar-split.gz")] not in layers:
            _rm(os.path.join(ldir, name))
    idir = os.path.join(dest, "overlay-images")
    for name in os.listdir(idir):
        if os.path.isdir(os.path.join(idir, name)) and name not in images:
            _rm(os.path.join(idir, name))


def _forget(ctx: Context, dest: str) -> None:
    with ctx.index.write() as txn:
        for lid in stores(ctx.index, txn).get(dest, set()):
            ctx.index.unpin(txn, _pin(dest, lid))


def prune(ctx: Context) -> list[str]:
    """After rm: every exported store drops the images layerstore no longer has (a store
    whose directory is gone just loses its pins).  Returns the stores rewritten."""
    with ctx.index.read() as txn:
        dests = stores(ctx.index, txn)
    done = []
    for dest in sorted(dests):
        if not os.path.isdir(os.path.join(dest, "overlay-images")):
            _forget(ctx, dest)
            continue
        listed = _read_json(os.path.join(dest, "overlay-images", "images.json"))
        with ctx.index.read() as txn:
            gone = [i for i in listed if ctx.index.image(txn, "sha256:" + i["id"]) is None]
        if gone:
            try:
                update(ctx, dest)
            except errors.HostPathError as exc:
                raise errors.host_error(exc.errno, f"{exc} (the image is removed; its layers "
                                        f"stay pinned until `layerstore cstore {dest}` "
                                        "succeeds)") from None
            done.append(dest)
    return done
