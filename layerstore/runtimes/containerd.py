"""`layerstore containerd-load IMAGE`: an image of the store registered with containerd, its
layers claimed by layerstore's snapshotter, nothing fetched or unpacked.

containerd's own unpacker (Go client Pull with unpack, CRI, nerdctl; `ctr` from 2.0) asks
the snapshotter for each layer with the label containerd.io/snapshot.ref, which the
snapshotter claims from the store (runtimes/snapshotter.py).  containerd 1.6's `ctr pull` and
`ctr images import` send no such label, so for them this makes the same calls the unpacker
makes, against containerd's socket:
  1. a lease, so containerd's gc leaves what follows alone until the image holds it;
  2. per layer, bottom first, Prepare("extract-<random> <chainID>", parent chainID, labels
     snapshot.ref=<chainID>, snapshot/diff-id=<diffID>) through containerd's Snapshots
     service: the snapshotter answers ALREADY_EXISTS and containerd records the snapshot
     under the chainID, as an unpacked layer (`ctr snapshots ls` shows chainIDs);
  3. `ctr images import --no-unpack` of an OCI archive that holds only the index, the manifest
     and the config (containerd's content store gets those two blobs, no layer);
  4. the label containerd.io/gc.ref.snapshot.<snapshotter>=<top chainID> on the config, as
     containerd's unpacker sets it, so the image keeps its snapshots from containerd's gc;
  5. the lease deleted.
"""

from __future__ import annotations

import io
import secrets
import shutil
import subprocess
import tarfile

from .. import errors
from ..formats import export
from ..store.context import Context
from . import containerd_api as api
from .containerd_api import grpc
from .overlay import chain_ids
from .snapshotter import LABEL_DIFF_ID, LABEL_REF


class _TarOut:
    """What formats/export.py's OCI metadata writer needs of its output: blob(name, data)."""

    def __init__(self, tf: tarfile.TarFile) -> None:
        self.tf = tf

    def blob(self, name: str, data: bytes) -> None:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode = len(data), 0o644
        self.tf.addfile(ti, io.BytesIO(data))


def meta_archive(ctx: Context, ref: str) -> tuple[bytes, export.SaveImage]:
    """An OCI archive of the image without its layer blobs: index.json, manifest, config."""
    with ctx.index.read() as txn:
        (image,) = export.images_to_save(ctx, txn, [ref])
        sizes = {d: ctx.index.layer(txn, d).stream_bytes for d in image.diff_ids}
    if not image.tags:
        raise errors.LayerstoreError(f"containerd-load: image {image.id} has no tag, and "
                                     "containerd names images; tag it first")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        export._oci_metadata(_TarOut(tf), [image], sizes)
    return buf.getvalue(), image


def _ctr(address: str, namespace: str, *args: str, data: bytes | None = None) -> str:
    tool = shutil.which("ctr")
    if tool is None:
        raise errors.LayerstoreError("containerd-load needs containerd's `ctr` on PATH")
    r = subprocess.run([tool, "-a", address, "-n", namespace, *args], input=data,
                       capture_output=True)
    if r.returncode != 0:
        msg = (r.stderr.decode(errors="replace").strip().splitlines() or ["failed"])[-1]
        raise errors.LayerstoreError(f"ctr {args[0]} {args[1]}: {msg}")
    return r.stdout.decode(errors="replace")


def load(ctx: Context, ref: str, address: str, namespace: str = "default",
         snapshotter: str = "layerstore") -> tuple[export.SaveImage, list[str]]:
    """See the module docstring.  Returns the image and its chainIDs (its snapshots' names in
    containerd)."""
    data, image = meta_archive(ctx, ref)
    chains = chain_ids(image.diff_ids)
    lease = "layerstore-load-" + secrets.token_hex(6)
    _ctr(address, namespace, "leases", "create", "--id", lease, "--expires", "1h")
    client = api.Client(address)
    try:
        meta = (("containerd-namespace", namespace), ("containerd-lease", lease))
        for i, chain in enumerate(chains):
            req = api.M["PrepareSnapshotRequest"](
                snapshotter=snapshotter, key=f"extract-{secrets.token_hex(6)} {chain}",
                parent=chains[i - 1] if i else "",
                labels={LABEL_REF: chain, LABEL_DIFF_ID: image.diff_ids[i]})
            try:
                client.call("Prepare", req, meta)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                    continue        # claimed (or claimed before, in this namespace)
                raise errors.LayerstoreError(
                    f"containerd-load: preparing layer {i} ({image.diff_ids[i]}) with "
                    f"snapshotter {snapshotter!r}: {exc.details()}") from None
            try:        # the snapshotter made an active snapshot: not ours to keep
                client.call("Remove", api.M["RemoveSnapshotRequest"](snapshotter=snapshotter,
                                                                     key=req.key), meta)
            except grpc.RpcError:
                pass        # left for containerd's gc, as any unclaimed snapshot of a lease
            raise errors.LayerstoreError(
                f"containerd-load: snapshotter {snapshotter!r} did not claim layer {i} "
                f"({image.diff_ids[i]}): is it `layerstore snapshotter` serving this store "
                f"({ctx.root})?")
        _ctr(address, namespace, "images", "import", "--no-unpack", "-", data=data)
        if chains:
            _ctr(address, namespace, "content", "label", image.id,
                 f"containerd.io/gc.ref.snapshot.{snapshotter}={chains[-1]}")
    finally:
        client.close()
        try:
            _ctr(address, namespace, "leases", "delete", lease)
        except errors.LayerstoreError:
            pass    # it expires by itself
    return image, chains

