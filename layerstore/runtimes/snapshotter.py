"""A containerd proxy snapshotter over the store: `layerstore snapshotter --address SOCK`.

containerd keeps its own metadata of every snapshot (bolt, per namespace) and hands its
backend, this process, namespaced keys ("<ns>/<seq>/<key>").  Each key's record is a JSON row
of the index's `snapshots` db: kind (active, view, committed), parent key, labels, times and,
for a committed snapshot, the chain of diffIDs it is (bottom first).

Committed snapshots are always layerstore layers, mounted from the store's per-layer
directories (runtimes/overlay.py: layer_dirs), so a container's lower dirs are the same
inodes as the store's objects:
  - claimed: a Prepare labelled containerd.io/snapshot.ref=<chainID> (and, from containerd
    2.4, containerd.io/snapshot/diff-id) for a chain an image of the store has, over a parent
    that is that chain's parent, becomes a committed snapshot at once and is answered
    ALREADY_EXISTS: containerd's metadata layer then finds it by listing (label and parent) and
    neither fetches nor applies the layer.  One snapshot per (chain, parent key), named by the
    Prepare's own key, so each namespace (each with its own parent keys) gets its own;
  - applied by containerd: an active snapshot is an overlay upper dir (or, with no parent, a
    plain dir) that containerd's differ writes the layer into; on Commit it is read as a layer
    tar (overlay.write_changeset) and ingested, so its files become the store's objects (a file
    already stored costs nothing), and the copy containerd wrote is deleted.
Each committed snapshot pins its chain ("snapshot/<key>"), so gc keeps those layers and their
layer dirs while containerd uses them; Remove drops the pin and never deletes store data (a
layer no image names and no pin holds is then gc's, as any other).  Active and view snapshots
live in root/snapshotter/<id>/{fs,work}.

Mounts are those of containerd's overlayfs snapshotter: an active snapshot without parent is a
bind mount of its dir; with parents an overlay (upperdir, workdir, lowerdir nearest first); a
view a read-only bind of its single lower dir or an overlay of lower dirs only.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import threading
import time

from .. import errors
from ..store.checkout import remove_tree
from ..store.context import Context
from . import containerd_api as api
from .containerd_api import grpc
from .overlay import _escape, _extra_options, chain_ids, import_changeset, layer_dirs

LABEL_REF = "containerd.io/snapshot.ref"
LABEL_DIFF_ID = "containerd.io/snapshot/diff-id"
PIN = "snapshot/"
_CHAIN_NAME = re.compile(r"/(sha256:[0-9a-f]{64})$")
_KINDS = {"view": api.KINDS["VIEW"], "active": api.KINDS["ACTIVE"],
          "committed": api.KINDS["COMMITTED"]}

log = logging.getLogger("layerstore.snapshotter")


class _Status(Exception):
    """An answer other than OK, with its gRPC code (containerd maps them through errdefs)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _chain_id(rec: dict) -> str:
    """A committed snapshot's chainID as containerd knows it: the claimed chain, or the
    chainID containerd committed an applied layer under (its diffID is containerd's, which
    the layer ingested from the snapshot's files does not share), else the chain's own."""
    return rec.get("chain_id") or chain_ids(rec["diff_ids"])[-1]


def _remove(path: str) -> None:
    if os.path.lexists(path):
        remove_tree(path)


def _not_found(key: str) -> _Status:
    return _Status(grpc.StatusCode.NOT_FOUND, f"snapshot {key!r} does not exist")


class Snapshotter:
    """The Snapshots service.  ctx is the store's Context; shared() the store lock taken
    shared (layer dirs are built from objects), importing() an import's lock and Job (the
    Store facade hands both in, as it does to the other runtimes)."""

    def __init__(self, ctx: Context, shared, importing) -> None:
        self.ctx = ctx
        self.index = ctx.index
        self._shared = shared
        self._importing = importing
        if os.geteuid() != 0:
            raise errors.LayerstoreError(
                "the snapshotter needs root (as containerd has it): its layer dirs hold "
                "whiteouts as 0/0 devices; rootless containerd is not supported yet")
        self.dir = os.path.join(ctx.root, "snapshotter")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        # Held from a new snapshot's record to its dir, and by Cleanup: a dir made between
        # Cleanup's reading the records and its listing would otherwise look orphaned.
        self._dirs = threading.Lock()

    # ---- records ------------------------------------------------------------------------------

    def _get(self, txn, key: str) -> dict | None:
        return self.index.snapshot(txn, key)

    def _need(self, txn, key: str) -> dict:
        rec = self._get(txn, key)
        if rec is None:
            raise _not_found(key)
        return rec

    def _info(self, key: str, rec: dict):
        info = api.M["Info"](name=key, parent=rec["parent"], kind=_KINDS[rec["kind"]],
                             labels=rec["labels"])
        info.created_at.FromNanoseconds(rec["created"])
        info.updated_at.FromNanoseconds(rec["updated"])
        return info

    def _new(self, kind: str, parent: str, labels, diff_ids=None) -> dict:
        now = time.time_ns()
        return {"kind": kind, "parent": parent, "labels": dict(labels), "created": now,
                "updated": now, "id": None if kind == "committed" else secrets.token_hex(8),
                "diff_ids": diff_ids}

    def _parent_chain(self, txn, parent: str) -> list[str]:
        if not parent:
            return []
        rec = self._need(txn, parent)
        if rec["kind"] != "committed":
            raise _Status(grpc.StatusCode.FAILED_PRECONDITION,
                          f"parent {parent!r} is not a committed snapshot")
        return rec["diff_ids"]

    # ---- mounts -------------------------------------------------------------------------------

    def _lowers(self, diff_ids: list[str]) -> list[str]:
        """The layer dirs of a chain, bottom first (built from the objects where missing)."""
        if not diff_ids:
            return []
        with self._shared():
            return layer_dirs(self.ctx, diff_ids)

    def _mounts(self, rec: dict) -> list:
        Mount = api.M["Mount"]
        if rec["kind"] == "committed":
            lowers, own = self._lowers(rec["diff_ids"]), None
        else:
            with self.index.read() as txn:
                lowers = self._lowers(self._parent_chain(txn, rec["parent"]))
            own = os.path.join(self.dir, rec["id"])
        if rec["kind"] == "active":
            fs, work = os.path.join(own, "fs"), os.path.join(own, "work")
            if not lowers:
                return [Mount(type="bind", source=fs, options=["rbind", "rw"])]
            return [Mount(type="overlay", source="overlay", options=[
                f"workdir={_escape(work)}", f"upperdir={_escape(fs)}",
                "lowerdir=" + ":".join(_escape(p) for p in reversed(lowers)),
                *_extra_options()])]
        if not lowers:
            return [Mount(type="bind", source=os.path.join(own, "fs"), options=["rbind", "ro"])]
        if len(lowers) == 1:
            return [Mount(type="bind", source=lowers[0], options=["rbind", "ro"])]
        return [Mount(type="overlay", source="overlay", options=[
            "lowerdir=" + ":".join(_escape(p) for p in reversed(lowers))])]

    # ---- claims -------------------------------------------------------------------------------

    def _chain_of(self, txn, target: str) -> list[str] | None:
        """The diffIDs (bottom first) of a chain some stored image has, by its chainID."""
        for rec in self.index.images(txn):
            for i, chain in enumerate(chain_ids(rec.diff_ids)):
                if chain == target:
                    return list(rec.diff_ids[:i + 1])
        return None

    def _claim(self, key: str, parent: str, labels) -> bool:
        """Makes key a committed snapshot of the stored chain labels name, when the store has
        it over this parent; False when it cannot (containerd then applies the layer).  The
        parent may be a layer containerd applied itself: its chainID is containerd's, from
        the name it was committed under, so the claimed layer goes on top of it."""
        target = labels.get(LABEL_REF)
        with self.index.read() as txn:
            stored = self._chain_of(txn, target)
            if stored is None or labels.get(LABEL_DIFF_ID, stored[-1]) != stored[-1]:
                return False
            below = chain_ids(stored)[-2] if len(stored) > 1 else None
            if parent:
                prec = self._need(txn, parent)
                if prec["kind"] != "committed" or _chain_id(prec) != below:
                    return False
                diff_ids = prec["diff_ids"] + stored[-1:]
            elif below is not None:
                return False
            else:
                diff_ids = stored
            for rec in self.index.snapshots(txn).values():
                if rec["kind"] == "committed" and rec["parent"] == parent and \
                        rec["labels"].get(LABEL_REF) == target:
                    return True     # claimed already under another key: containerd finds it
        with self._shared():
            layer_dirs(self.ctx, diff_ids)
            with self.index.write() as txn:
                if self._get(txn, key) is not None:
                    raise _Status(grpc.StatusCode.ALREADY_EXISTS, f"snapshot {key!r} exists")
                self.index.pin(txn, PIN + key, diff_ids)
                rec = self._new("committed", parent, labels, diff_ids)
                rec["chain_id"] = target
                self.index.put_snapshot(txn, key, rec)
        log.info("claimed %s as %s (%d layers)", target, key, len(diff_ids))
        return True

    # ---- the RPCs -----------------------------------------------------------------------------

    def _create(self, kind: str, key: str, parent: str, labels):
        if kind == "active" and labels.get(LABEL_REF) and self._claim(key, parent, labels):
            raise _Status(grpc.StatusCode.ALREADY_EXISTS,
                          f"target snapshot {labels[LABEL_REF]!r} exists in layerstore")
        rec = self._new(kind, parent, labels)
        own = os.path.join(self.dir, rec["id"])
        fs = os.path.join(own, "fs")
        written = False
        try:
            # The record first, then the dirs: Cleanup removes dirs no record names.
            with self._dirs:
                with self.index.write() as txn:
                    if self._get(txn, key) is not None:
                        raise _Status(grpc.StatusCode.ALREADY_EXISTS,
                                      f"snapshot {key!r} exists")
                    lowers_chain = self._parent_chain(txn, parent)
                    self.index.put_snapshot(txn, key, rec)
                written = True
                os.makedirs(fs, mode=0o755)
                if kind == "active":
                    os.mkdir(os.path.join(own, "work"), 0o700)
            if lowers_chain:
                # The merged root shows the upper dir's metadata: make it the image's.
                st = os.stat(self._lowers(lowers_chain)[-1])
                os.chown(fs, st.st_uid, st.st_gid)
                os.chmod(fs, st.st_mode & 0o7777)
            return self._mounts(rec)
        except BaseException:
            if written:
                with self.index.write() as txn:
                    self.index.delete_snapshot(txn, key)
                _remove(own)
            raise

    def Prepare(self, req, context):
        return api.M["PrepareSnapshotResponse"](
            mounts=self._create("active", req.key, req.parent, req.labels))

    def View(self, req, context):
        return api.M["ViewSnapshotResponse"](
            mounts=self._create("view", req.key, req.parent, req.labels))

    def Mounts(self, req, context):
        with self.index.read() as txn:
            rec = self._need(txn, req.key)
        return api.M["MountsResponse"](mounts=self._mounts(rec))

    def Commit(self, req, context):
        with self.index.read() as txn:
            rec = self._need(txn, req.key)
            if rec["kind"] != "active":
                raise _Status(grpc.StatusCode.FAILED_PRECONDITION,
                              f"snapshot {req.key!r} is not active")
            if self._get(txn, req.name) is not None:
                raise _Status(grpc.StatusCode.ALREADY_EXISTS, f"snapshot {req.name!r} exists")
            chain = self._parent_chain(txn, rec["parent"])
        own = os.path.join(self.dir, rec["id"])
        with self._importing() as job:
            layer = import_changeset(self.ctx, job, os.path.join(own, "fs"))
            diff_ids = chain + [layer.diff_id]
            labels = dict(rec["labels"])
            labels.update(req.labels)
            done = self._new("committed", rec["parent"], labels, diff_ids)
            done["created"] = rec["created"]
            named = _CHAIN_NAME.search(req.name)     # the unpacker commits under the chainID
            if named:
                done["chain_id"] = named.group(1)
            with self.index.write() as txn:
                if self._get(txn, req.name) is not None:
                    raise _Status(grpc.StatusCode.ALREADY_EXISTS,
                                  f"snapshot {req.name!r} exists")
                if self._get(txn, req.key) != rec:
                    raise _Status(grpc.StatusCode.FAILED_PRECONDITION,
                                  f"snapshot {req.key!r} changed while it was committed")
                self.index.pin(txn, PIN + req.name, diff_ids)
                self.index.put_snapshot(txn, req.name, done)
                self.index.delete_snapshot(txn, req.key)
        _remove(own)    # its files are the store's objects now
        log.info("committed %s as %s: layer %s (%d new objects)", req.key, req.name,
                 layer.diff_id, layer.new_objects)
        return api.M["Empty"]()

    def Remove(self, req, context):
        with self.index.write() as txn:
            rec = self._need(txn, req.key)
            if any(r["parent"] == req.key for r in self.index.snapshots(txn).values()):
                raise _Status(grpc.StatusCode.FAILED_PRECONDITION,
                              f"snapshot {req.key!r} has children")
            self.index.delete_snapshot(txn, req.key)
            if rec["kind"] == "committed":
                self.index.unpin(txn, PIN + req.key)
        if rec["id"]:
            _remove(os.path.join(self.dir, rec["id"]))
        return api.M["Empty"]()

    def Stat(self, req, context):
        with self.index.read() as txn:
            rec = self._need(txn, req.key)
        return api.M["StatSnapshotResponse"](info=self._info(req.key, rec))

    def Update(self, req, context):
        """Labels are the only mutable field (as in containerd): the whole map when the mask
        is empty or names "labels", else each "labels.<key>" named."""
        key = req.info.name
        paths = list(req.update_mask.paths)
        with self.index.write() as txn:
            rec = self._need(txn, key)
            labels = dict(rec["labels"])
            if not paths or "labels" in paths:
                labels = dict(req.info.labels)
            for p in paths:
                if p.startswith("labels."):
                    name = p[len("labels."):]
                    if name in req.info.labels:
                        labels[name] = req.info.labels[name]
                    else:
                        labels.pop(name, None)
                elif p != "labels":
                    raise _Status(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"cannot update {p!r} of snapshot {key!r}")
            rec["labels"], rec["updated"] = labels, time.time_ns()
            self.index.put_snapshot(txn, key, rec)
        return api.M["UpdateSnapshotResponse"](info=self._info(key, rec))

    def List(self, req, context):
        """Every snapshot (filters are not applied: containerd checks what it asked for)."""
        with self.index.read() as txn:
            infos = [self._info(k, r) for k, r in self.index.snapshots(txn).items()]
        for i in range(0, len(infos), 100):
            yield api.M["ListSnapshotsResponse"](info=infos[i:i + 100])

    def Usage(self, req, context):
        with self.index.read() as txn:
            rec = self._need(txn, req.key)
        if rec["kind"] == "committed":
            top = self._lowers(rec["diff_ids"])[-1]
        else:
            top = os.path.join(self.dir, rec["id"], "fs")
        size, inodes, seen = 0, 0, set()
        for dirpath, dirnames, filenames in os.walk(top):
            for name in [*dirnames, *filenames]:
                st = os.lstat(os.path.join(dirpath, name))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    size += st.st_blocks * 512
                    inodes += 1
        return api.M["UsageResponse"](size=size, inodes=inodes)

    def Cleanup(self, req, context):
        """Removes snapshot dirs no record names (left by a crash between the two)."""
        with self._dirs:
            with self.index.read() as txn:
                ids = {r["id"] for r in self.index.snapshots(txn).values()}
            for name in os.listdir(self.dir):
                if name not in ids:
                    _remove(os.path.join(self.dir, name))
        return api.M["Empty"]()


class _Handlers:
    """Each RPC of a Snapshotter, with its errors turned into gRPC status codes."""

    def __init__(self, impl: Snapshotter) -> None:
        self._impl = impl

    def __getattr__(self, rpc: str):
        method = getattr(self._impl, rpc)

        def call(req, context):
            log.debug("%s %s", rpc, str(req).replace("\n", " "))
            try:
                result = method(req, context)
                if rpc == "List":
                    result = iter(list(result))
                return result
            except _Status as exc:
                log.debug("%s -> %s: %s", rpc, exc.code.name, exc)
                context.abort(exc.code, str(exc))
            except errors.LayerstoreError as exc:
                log.error("%s: %s", rpc, exc)
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            except Exception as exc:
                log.exception("%s failed", rpc)
                context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        return call


def _take_address(address: str) -> None:
    """Removes a socket a previous run left at address.  Anything else there stays: a file
    (this runs as root, and a mistyped path must not be lost) or the socket of a
    snapshotter still serving (containerd would lose it)."""
    import socket
    import stat
    try:
        st = os.lstat(address)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise errors.LayerstoreError(f"snapshotter: {address} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(address)
        except ConnectionRefusedError:
            os.unlink(address)
            return
    raise errors.LayerstoreError(f"snapshotter: another process serves on {address}")


def serve(snapshotter: Snapshotter, address: str, ready=None, workers: int = 8) -> None:
    """Serves snapshotter on the unix socket address until SIGTERM or SIGINT."""
    import signal
    import threading
    from concurrent.futures import ThreadPoolExecutor

    os.makedirs(os.path.dirname(os.path.abspath(address)), mode=0o711, exist_ok=True)
    _take_address(address)
    server = grpc.server(ThreadPoolExecutor(max_workers=workers))
    server.add_generic_rpc_handlers((api.server_handler(_Handlers(snapshotter)),))
    if not server.add_insecure_port(f"unix:{os.path.abspath(address)}"):
        raise errors.LayerstoreError(f"snapshotter: cannot listen on {address}")
    server.start()
    os.chmod(address, 0o600)
    stop = threading.Event()
    # An embedding program gets its own handlers back when serve() returns.
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if ready is not None:
            ready()
        stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop(5).wait()
        try:
            os.unlink(address)
        except FileNotFoundError:
            pass
