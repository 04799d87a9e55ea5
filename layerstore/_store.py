"""Store: the embedding API.  Each method takes the lock its operation needs, here and nowhere
else, and hands the work to the module that does it, with the store's Context.

On disk (see DESIGN.md): root/ (mode 0700) holds index/ (LMDB), objects/xx/... (one file per
distinct content and metadata), tmp/ (staging), pending/ (markers of imports in progress) and
lock (a flock file).

Locking (store/lock.py).  Every method is thread-safe, and several processes may use one root
at once; each method's docstring names what it takes:
  - readers of the index alone (images, image, history, inspect, walk, diff, ...) work on an
    LMDB snapshot and take no lock: they never wait;
  - index writes that touch no object file (tag, rm, add_image) are one LMDB write
    transaction, no store lock;
  - imports and readers of object files (checkout, save, export, open, du, fsck, mount,
    commit) hold the store lock shared, so imports run in parallel with each other and with
    checkouts;
  - maintenance that deletes or rewrites objects (gc, fsck --repair) takes the store lock
    exclusively, so it never deletes an object an import in progress is about to reference
    or a checkout is reading.
Atomicity: an import either commits all of its images in one transaction or leaves the index
untouched; a failed one removes the objects it alone wrote (see _importing), and what a killed
one leaves is unreferenced, which gc removes.
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterator

import lmdb

from . import errors
from ._model import (CheckoutResult, DiffResult, DuResult, Entry, GcResult, HistoryEntry, Image,
                     InspectResult, Layer, Mount, Problem, Progress, PushProgress, PushResult)
from .errors import LayerNotFound
from .formats.platforms import parse_platform
from .formats.reference import new_tag
from .store import read
from .store.context import Context, image_of, layer_of
from .store.index import commit_error
from .store.lock import StoreLock
from .store.tree import Tree

if TYPE_CHECKING:   # the methods that import load it; images, checkout and the rest need not
    from .store import pipeline


def default_root() -> str:
    """--root, else $LAYERSTORE_ROOT, else $XDG_DATA_HOME/layerstore, else
    ~/.local/share/layerstore."""
    if os.environ.get("LAYERSTORE_ROOT"):
        return os.environ["LAYERSTORE_ROOT"]
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                            "share")
    return os.path.join(data, "layerstore")


class Store:
    """A layerstore at a root directory.  Use as a context manager, or call close().

    >>> with Store("/var/lib/mystore") as store:
    ...     (image,) = store.import_archive("python.docker.tar.zst")
    ...     store.checkout(image.id, "/tmp/rootfs")
    """

    def __init__(self, root: str | os.PathLike | None = None, *,
                 lock_timeout: float = 600.0) -> None:
        self.root = os.path.abspath(os.fspath(root) if root is not None else default_root())
        try:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            self._lock_fd = os.open(os.path.join(self.root, "lock"),
                                    os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if isinstance(exc, FileExistsError):    # makedirs: a file is in the way
                exc = NotADirectoryError(errno.ENOTDIR, self.root)
            raise errors.host_path_error(exc, self.root, "open the store at") from None
        self._lock = StoreLock(self.root, lock_timeout)
        try:
            self._ctx = Context(self.root)
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._last_tree: tuple[str, Tree] | None = None

    @property
    def lock_timeout(self) -> float:
        """Seconds to wait for the store lock before StoreLocked."""
        return self._lock.timeout

    @lock_timeout.setter
    def lock_timeout(self, seconds: float) -> None:
        self._lock.timeout = seconds

    def close(self) -> None:
        if self._lock_fd >= 0:
            self._ctx.close()
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.root!r})"

    # ---- import (store/pipeline.py) -----------------------------------------------------------

    def import_archive(self, source: str | os.PathLike | BinaryIO, tags=(),
                       platform: str | None = None, all_platforms: bool = False,
                       progress: Callable[[Progress], None] | None = None) -> list[Image]:
        """Imports every image of a docker-archive or OCI layout (a directory, a tar, or a
        gzip/zstd-compressed tar; a path or a binary file object).  tags are added to the
        image (the archive must then hold exactly one).  An image index yields the image for
        platform ("os/arch[/variant]", default this machine's), or all with all_platforms.
        progress: bytes of the archive read, of its size when known, and files ingested.

        Every digest is verified; on any error nothing is committed.
        Locking: the store lock shared, from before the first object is written until the
        commit, which is one index transaction."""
        from .formats.archive import open_source
        from .store import pipeline
        user_tags = [new_tag(t) for t in tags]
        if platform is not None:
            parse_platform(platform)    # before a streamed archive's layers are read
        src = open_source(source)
        try:
            with self._importing() as job:
                return pipeline.import_archive(self._ctx, job, src, platform, all_platforms,
                                               user_tags, progress)
        finally:
            src.close()

    def import_layer(self, stream: BinaryIO) -> Layer:
        """Ingests one uncompressed, gzip or zstd layer stream, for tools that bring their own
        manifests (see add_image).  A layer no image names is removed by gc.
        Locking: the store lock shared."""
        from .store import pipeline
        with self._importing() as job:
            return pipeline.import_layer(self._ctx, job, stream)

    def add_image(self, config: bytes, tags=(), manifest: bytes | None = None,
                  manifest_media_type: str | None = None) -> Image:
        """Creates an image from a config whose rootfs.diff_ids are all stored layers (see
        import_layer).  Locking: one index write transaction."""
        from .store import pipeline
        return pipeline.add_image(self._ctx, config, tags, manifest, manifest_media_type)

    def pull(self, ref: str, platform: str | None = None, all_platforms: bool = False,
             jobs: int = 3, registry=None,
             progress: Callable[[Progress], None] | None = None,
             partial: str = "auto") -> list[Image]:
        """Pulls an image from a registry (OCI distribution, Docker Hub first): ref as Docker
        reads it ("python" is docker.io/library/python:latest; name@sha256:... pins a
        digest).  An index yields the image for platform (default this machine's), or every
        image with all_platforms; the tag names the one for the platform wanted.  Layers the
        store holds (by diffID, or by a blob digest pulled before) are not downloaded; the
        others download jobs at a time, each streamed into the store as it arrives.
        partial: for zstd:chunked layers, "auto" fetches only the files the store lacks
        when that costs less than the blob, "always" whenever it can, "never" pulls them
        whole (registry/pull.py); LayerPull.partial says what was chosen.
        registry: a registry.RegistryOptions (credentials, TLS).  progress receives
        PullProgress: blob bytes downloaded of those to download, files ingested, and each
        layer's state.

        Every digest is verified (manifest, config, blob, diffID); on any error nothing is
        committed.  The commit also records the digests the images were pulled as
        (`name@sha256:...` then names them) and where each blob was seen.
        Locking: the store lock shared, as import_archive."""
        from .formats.reference import parse_reference
        from .registry import RegistryOptions
        from .registry.pull import RegistrySource
        from .store import pipeline
        reference = parse_reference(ref)
        if platform is not None:
            platform = parse_platform(platform)
        options = registry if registry is not None else RegistryOptions()
        with options.client(reference.domain) as client:
            src = RegistrySource(client, reference, self._ctx, jobs, partial)
            last = Progress(0, None, 0)

            def report(p: Progress) -> None:
                nonlocal last
                last = p
                progress(src.progress(p))

            try:
                with self._importing() as job:
                    images = pipeline.import_archive(self._ctx, job, src, platform,
                                                     all_platforms, [],
                                                     report if progress else None,
                                                     record=src.record)
            finally:
                src.close()
            if progress is not None:     # every layer's final state
                progress(src.progress(last))
        return [self.image(i.id) for i in images]      # with the digests recorded

    @contextmanager
    def _importing(self) -> Iterator[pipeline.Job]:
        """The store lock, shared, for the length of an import, and the import's Job: a marker
        in pending/ that tells gc to look for what the import leaves if it is killed, and the
        ids of the objects it writes.  If the import fails, those that no image came to
        reference are removed, once the lock is released, under the lock taken exclusively -
        only if that is possible at once, when no other import, checkout or reader holds it
        (another import may have found one of them already stored and be about to reference
        it); otherwise the objects and the marker stay for gc.  Nothing is removed when this
        thread still holds the lock for a caller: that caller's work goes on."""
        from .store import pipeline
        job = pipeline.Job(self._ctx)
        try:
            with self._lock.shared():
                job.start()
                yield job
                job.finish()
        except BaseException:
            if job.marker is not None and not self._lock.held():
                with self._lock.exclusive_if_free() as free:
                    if free:
                        job.discard()
            raise

    # ---- images and layers (index snapshots; store/read.py) ---------------------------------

    def images(self) -> list[Image]:
        """Every image, newest import first.  Locking: a snapshot, never waits."""
        ctx = self._ctx
        with ctx.index.read() as txn:
            recs = sorted(ctx.index.images(txn), key=lambda r: -r.imported)
            pulled: dict[str, list[str]] = {}
            for k, v in ctx.index.rows(txn, "repo_digests"):
                pulled.setdefault(v.decode(), []).append(k.decode())
            return [image_of(r, ctx.platform(txn, r), sorted(pulled.get(r.id, ())))
                    for r in recs]

    def image(self, ref: str) -> Image:
        """The image a tag, an id or a unique id prefix (12+ hex digits) names.  Locking: a
        snapshot."""
        with self._ctx.index.read() as txn:
            rec = self._ctx.resolve(txn, ref)
            return image_of(rec, self._ctx.platform(txn, rec),
                            self._ctx.index.repo_digests(txn, rec.id))

    def tag(self, source: str, target: str) -> Image:
        """Tags an image, as `docker tag SOURCE TARGET`: source names it (a tag, an id or a
        unique id prefix), target is the new tag, normalized as Docker does ("app" is
        docker.io/library/app:latest); a tag another image held moves to this one.  Returns
        the image.  Locking: one index write transaction."""
        tag = new_tag(target)
        ctx = self._ctx
        try:
            with ctx.index.write() as txn:
                rec = ctx.index.add_image(txn, ctx.resolve(txn, source), [tag])
                return image_of(rec, ctx.platform(txn, rec))
        except lmdb.Error as exc:
            raise commit_error(exc, self.root) from None

    def history(self, ref: str) -> list[HistoryEntry]:
        """The image's history, newest step first, as `docker history`: the steps of its
        config's "history", those that made a layer (not empty_layer) matched in order with
        rootfs.diff_ids.  Where the counts differ the newest steps go with the newest layers
        (a tool that added a step to a base without history, as commit over such a base):
        older layers no step describes are steps of their own with nothing but the layer,
        older steps no layer is left for have none.  Locking: a snapshot, never waits."""
        return read.history(self._ctx, ref)

    def inspect(self, ref: str) -> InspectResult:
        """Everything known of an image, as `layerstore inspect` prints it: the image, its
        config and manifest, and its layers with their statistics.  Locking: a snapshot."""
        return read.inspect(self._ctx, ref)

    def config(self, ref: str) -> dict:
        """The image's config as imported.  Locking: a snapshot."""
        return self._ctx.config(ref)

    def manifest(self, ref: str) -> dict | None:
        """The image's manifest as imported (None when the archive had none).  Locking: a
        snapshot."""
        return read.manifest(self._ctx, ref)

    def layers(self) -> list[Layer]:
        """Every stored layer.  Locking: a snapshot."""
        with self._ctx.index.read() as txn:
            return [layer_of(r) for r in self._ctx.index.layers(txn)]

    def layer(self, diff_id: str) -> Layer:
        """The stored layer with this diffID.  Locking: a snapshot."""
        with self._ctx.index.read() as txn:
            rec = self._ctx.index.layer(txn, diff_id)
        if rec is None:
            raise LayerNotFound(f"no such layer: {diff_id}")
        return layer_of(rec)

    def layer_entries(self, diff_id: str) -> list[Entry]:
        """The entries of one layer, in archive order (whiteouts included).  Locking: a
        snapshot."""
        return self._ctx.layer_entries(diff_id)

    def image_entries(self, ref: str) -> Iterator[Entry]:
        """The image's merged filesystem (layers applied), parents before children.
        Locking: a snapshot."""
        return self._ctx.tree(ref).entries()

    def object_path(self, object_id: str) -> str:
        """The file of a stored object (read-only; see fsck)."""
        return self._ctx.object_path(object_id)

    # ---- checkout (store/checkout.py) ---------------------------------------------------------

    def checkout(self, ref: str, dest: str | os.PathLike, *, link: bool = False,
                 copy: bool = False, progress=None) -> CheckoutResult:
        """Makes dest (absent or empty) the image's root filesystem, dest itself with the
        image's "/" mode, owner and mtime.  Its files are safe to write: reflinks of the
        stored objects where the filesystem has them (xfs, btrfs), else copies, with their
        recorded mtimes.  copy=True: copies that share no blocks with the store even where
        reflinks exist.  link=True: hardlinks into the store, for read-only use (build roots,
        scanners), since a write through one changes every image that holds the file (mount()
        gives writable containers that share the layers).  link and copy together are a
        ValueError.  progress(Progress) is called as it goes (bytes: file content, items:
        entries).  A failed or interrupted checkout removes what it made, leaving dest absent
        or empty as it was.  Locking: the store lock shared and a snapshot of the index, so
        gc (exclusive) never deletes an object of the snapshot while it is read."""
        from .store.checkout import checkout, plan
        ctx = self._ctx
        with self._lock.shared():
            with ctx.index.read() as txn:
                image_id = ctx.resolve(txn, ref).id
                tree = ctx.index.image_tree(txn, image_id)
            if tree is None:    # not kept (older index): made on demand
                tree = plan(ctx.tree(image_id))
            return checkout(tree, os.fspath(dest), ctx.objects_dir, link=link, copy=copy,
                            progress=progress)

    # ---- reading without checkout (store/read.py) ---------------------------------------------

    def _read_tree(self, ref: str) -> Tree:
        """The image's tree, the last one kept: reading many files of one image must not
        rebuild its tree per file.  Keyed by image id, which names immutable content."""
        image_id = self._ctx.image(ref).id
        cached = self._last_tree
        if cached is not None and cached[0] == image_id:
            return cached[1]
        tree = self._ctx.tree(image_id)
        self._last_tree = (image_id, tree)
        return tree

    def walk(self, ref: str, path: str = ".") -> Iterator[Entry]:
        """The merged view under path (itself first), parents before children, names sorted;
        a hardlink shows the entry it shares an inode with, under its own path.  Locking: a
        snapshot."""
        return read.walk(self._read_tree(ref), path)

    def stat(self, ref: str, path: str, follow: bool = False) -> Entry:
        """The entry at path.  Symlinks in its parents are followed inside the image root,
        never out of it; the last component only with follow.  PathNotFound if absent.
        Locking: a snapshot."""
        return read.stat(self._read_tree(ref), path, follow)

    def listdir(self, ref: str, path: str = ".", follow: bool = True) -> tuple[Entry, list[Entry]]:
        """What `ls` shows: the entry at path and, for a directory, its children by name.
        Locking: a snapshot."""
        return read.listing(self._read_tree(ref), path, follow)

    def open(self, ref: str, path: str):
        """A read-only binary file object over a regular file of the image (symlinks
        followed inside the image root, at most 40).  Locking: the store lock is held shared
        until the object is open, so gc cannot remove it in between; the open file then
        outlives any later gc."""
        with self._lock.shared():
            return read.open_file(self._read_tree(ref), path, self._ctx.object_path)

    def diff(self, a: str, b: str) -> DiffResult:
        """Absolute paths, sorted, added, removed and changed from image a to image b.
        Changed: type, mode, owner, size, content, link target, xattrs or device differ.
        Locking: snapshots."""
        return read.diff(self._ctx.tree(a), self._ctx.tree(b))

    # ---- images leaving the store (formats/export.py) -----------------------------------------

    def save(self, refs, out, format: str = "docker", compress: str = "none",
             progress: Callable[[Progress], None] | None = None) -> None:
        """Writes images to out (a path, replaced atomically, or a binary file object): a
        docker-archive (format="docker", what `docker load` reads) or an OCI image layout tar
        ("oci"), optionally gzip- or zstd-compressed as a whole.  Layer tars are byte-identical
        to the imported ones, checked against their diffIDs while written (DigestMismatch
        otherwise); configs are written back unchanged, so image ids are too.  An image named
        by a tag is saved with that tag, one named by id with all its tags.  For "oci" the
        layers are stored uncompressed, so a manifest naming compressed blobs is replaced by a
        new one over the same config.  progress: bytes and entries of the layer tars
        written, of their totals.  A path that cannot be written is a HostPathError naming it.
        Locking: the store lock shared (gc waits)."""
        from .formats import export
        if isinstance(refs, str):
            refs = [refs]
        # The lock first: a snapshot read before it could name objects an rm + gc then frees.
        with self._lock.shared():
            with self._ctx.index.read() as txn:
                images = export.images_to_save(self._ctx, txn, refs)
            export.save(self._ctx, images, out, format, compress, progress)

    def export(self, ref: str, out,
               progress: Callable[[Progress], None] | None = None) -> None:
        """Writes the image's flattened root filesystem (layers merged) as one tar to out (a
        path, replaced atomically, or a binary file object): owners, modes, mtimes, xattrs,
        devices, symlinks and hardlinks, content from the objects.  progress: content bytes
        of the files and entries written, of their totals.  A path that cannot be written is
        a HostPathError naming it.  Locking: the store lock shared (gc waits)."""
        from .formats import export
        with self._lock.shared():
            export.export(self._ctx, self._ctx.tree(ref), out, progress)

    # ---- push to a registry (formats/push.py) -------------------------------------------------

    def push(self, image: str, ref: str | None = None, compress: str | None = None,
             format: str | None = None, registry=None,
             progress: Callable[[PushProgress], None] | None = None,
             chunk_size: int | None = None, all_platforms: bool = False) -> PushResult:
        """Pushes an image to a registry repository under a tag: ref ("host:5000/team/app:1",
        "docker.io/me/app", ...), else the tag image names it by.  Each layer's blob is
        skipped when the repository has it, mounted when another repository of the registry
        has it (where pulls and pushes saw it), else regenerated byte-exact from the store
        and uploaded, compressed with the pinned recipe (formats/compression.py), streamed.
        When every layer is the original manifest's blob, the original manifest bytes are
        pushed, so its digest survives; otherwise a new manifest over the same config.
        compress: "gzip", "zstd", "zstd:chunked" or "none" for uploads (and only blobs so compressed are
        reused; default: each layer's original compression, else gzip); format: "docker" or
        "oci" (default: the original manifest's, else docker; zstd needs oci); registry: a
        registry.RegistryOptions (credentials, TLS); chunk_size: upload in PATCHes of that
        many bytes.  progress receives a PushProgress per step of each blob.  Returns a
        PushResult; raises errors.RegistryError's classes.  all_platforms: push every image
        of the multi-platform index image came in (pulled or imported with all_platforms),
        each by digest, then the index under the tag (the original index bytes when no
        manifest changed; attestations, which the store does not keep, are left out).
        Locking: the store lock shared for the whole push (objects are read; gc waits)."""
        from .formats import push as pushing
        from .registry import RegistryOptions
        dest = pushing.resolve_destination(image, ref)
        options = registry if registry is not None else RegistryOptions()
        with self._lock.shared():
            if all_platforms:
                index = pushing.read_index(self._ctx, image)
                with options.client(dest.domain) as client:
                    return pushing.push_index(self._ctx, index, dest, client, compress,
                                              format, chunk_size, progress=progress)
            found = pushing.read_image(self._ctx, image)
            with options.client(dest.domain) as client:
                return pushing.push(self._ctx, found, dest, client, compress, format,
                                    chunk_size, progress=progress)

    # ---- containers on overlayfs (runtimes/overlay.py) ----------------------------------------

    def mount(self, ref: str, mountpoint: str | os.PathLike,
              upper: str | os.PathLike | None = None) -> Mount:
        """Mounts the image at mountpoint as overlayfs: the layers are shared read-only lower
        dirs (built once under root/layers/), the container writes to its own upper dir
        (under root/containers/<id>/, or upper).  Needs root, or fuse-overlayfs without it.
        Returns its Mount record.  Locking: the store lock shared (layer dirs are built from
        the objects)."""
        from .runtimes import overlay
        image = self._ctx.image(ref)
        with self._lock.shared():
            return overlay.mount(self._ctx, image, mountpoint, upper)

    def umount(self, mountpoint: str | os.PathLike) -> Mount:
        """Unmounts a container; its upper dir goes too unless the user gave it to mount.
        Locking: none (the records are files under root/containers/)."""
        from .runtimes import overlay
        return overlay.umount(self.root, mountpoint)

    def commit(self, mountpoint_or_upper: str | os.PathLike, tags=()) -> Image:
        """A new image: the container's image plus its upper dir as one more layer (overlay
        whiteouts and opaque dirs become .wh. entries), with a history entry, tagged.
        Locking: the store lock shared, as an import."""
        from .runtimes import overlay
        m = overlay.find(self.root, os.fspath(mountpoint_or_upper))
        if m is None:
            raise errors.LayerstoreError(f"commit: {os.path.realpath(mountpoint_or_upper)} is "
                                         "neither a layerstore mount nor the upper dir of one")
        with self._importing() as job:
            return overlay.commit(self._ctx, job, m, tags)

    def containers(self) -> list[Mount]:
        """The containers `mount` made that are mounted now, as `docker ps` lists the running
        ones (id, image id, mountpoint, upper dir, created), newest first.  Locking: none
        (the records are files under root/containers/)."""
        from .runtimes import overlay
        active = [m for m in overlay.mounts(self.root)
                  if m.mountpoint is not None and os.path.ismount(m.mountpoint)]
        return sorted(active, key=lambda m: m.created, reverse=True)

    # ---- OCI runtime bundles and containers on runc or crun (runtimes/oci.py) ---------------

    def bundle(self, ref: str, bundle: str | os.PathLike, *, rootless: bool = False,
               read_only: bool = False, command=(), env=(), workdir: str | None = None,
               user: str | None = None) -> dict:
        """Makes bundle (absent or empty) an OCI runtime bundle of the image, as `umoci
        unpack` does: rootfs/ an overlay mount over the shared layer dirs with a private
        upper dir (a checkout where overlay cannot be mounted here), config.json derived from
        the image config (args, env, cwd, user resolved in the image's /etc/passwd and
        /etc/group) over runc's default spec; rootless adds a user namespace mapping the
        caller to root.  Returns its marker {id, image, rootfs}.  ContainerError before
        anything is made when the image has no command or the user is not in it.
        Locking: the store lock shared while rootfs is made."""
        from .runtimes import oci
        return oci.make_bundle(self, ref, os.fspath(bundle), command=command, env=env,
                               workdir=workdir, user=user, read_only=read_only,
                               rootless=rootless)

    def remove_bundle(self, bundle: str | os.PathLike) -> dict:
        """Unmounts a bundle's rootfs (or deletes its checkout), its upper dir, config.json,
        and the bundle dir if nothing else is in it.  Locking: none."""
        from .runtimes import oci
        return oci.remove_bundle(self.root, os.fspath(bundle))

    def run(self, ref: str, command=(), *, name: str | None = None, remove: bool = False,
            env=(), workdir: str | None = None, user: str | None = None,
            read_only: bool = False, runtime: str | None = None, started=None) -> int:
        """Runs a container of the image in the foreground, as `docker run` without -d: a
        bundle under root/runs/<id>/, started by runtime (runc, crun or a path; default runc,
        else crun) with this process's stdio, signals forwarded; returns its exit status.
        remove: the container, its mount and upper dir go when it exits; otherwise they stay
        (status exited) until `remove_container`.  started(Run) is called once it started.
        Locking: the store lock shared while the bundle is made, none while it runs."""
        from .runtimes import oci
        return oci.run(self, ref, command, name=name, remove=remove, env=env, workdir=workdir,
                       user=user, read_only=read_only, runtime=runtime, started=started)

    def runs(self) -> list:
        """Containers `run` recorded (running, or exited and kept), newest first.
        Locking: none (records are files under root/runs/)."""
        from .runtimes import oci
        return sorted(oci.runs(self.root), key=lambda r: r.created, reverse=True)

    # ---- containerd (runtimes/snapshotter.py, runtimes/containerd.py) ------------------------

    def snapshotter(self):
        """containerd's Snapshots service over this store (runtimes/snapshotter.py; serve it
        with runtimes.snapshotter.serve).  Needs the `containerd` extra (grpcio, protobuf).
        Locking: each call takes what it needs: the store lock shared to build layer dirs,
        an import's lock to ingest a committed layer, index transactions for the records."""
        from .runtimes.snapshotter import Snapshotter
        return Snapshotter(self._ctx, self._lock.shared, self._importing)

    def containerd_load(self, ref: str, address: str, namespace: str = "default",
                        snapshotter: str = "layerstore") -> tuple[Image, list[str]]:
        """Registers the image with the containerd at address (manifest and config only) and
        has snapshotter (a `layerstore snapshotter` over this store) claim its layers.
        Returns the image and its layers' chainIDs, the names of their snapshots in
        containerd.  Locking: index snapshots (the snapshotter takes the store lock)."""
        from .runtimes import containerd
        image = self.image(ref)
        _, chains = containerd.load(self._ctx, ref, address, namespace, snapshotter)
        return image, chains
    # ---- containers-storage image store (runtimes/cstore.py) ----------------------------------

    def cstore(self, dest: str | os.PathLike, refs=(), remove=()) -> list[str]:
        """Makes dest a read-only image store of containers-storage (podman, CRI-O, buildah,
        skopeo: storage.conf `additionalimagestores`, or `--storage-opt
        overlay.imagestore=DEST`) that serves the images it already had, plus refs, less
        remove (named by id, prefix or name as the store lists them) and less those this
        store no longer has: each layer is a symlink to its layer dir (built under
        root/layers/ when missing), with containers-storage's metadata and tar-split
        alongside.  Its layers are pinned (gc keeps them) until they leave it, by remove or by
        `remove()` of their image here; with neither refs nor remove, a dest deleted by hand
        only loses its pins.  Returns the ids of the images it holds.
        Locking: the store lock shared (layer dirs are built from the objects), index write
        transactions for the pins, and containers-storage's own locks in dest."""
        from .runtimes import cstore
        with self._lock.shared():
            return cstore.update(self._ctx, dest, list(refs), list(remove))

    def _runtimes(self) -> list:
        """The runtimes whose containers rm and gc must respect (store/lifecycle.py)."""
        from .runtimes import oci, overlay
        return [overlay.Overlay(self._ctx), oci.Runs(self.root)]

    # ---- integrity (store/fsck.py) ------------------------------------------------------------

    def fsck(self, repair: bool = False,
             progress: Callable[[Progress], None] | None = None) -> list[Problem]:
        """Checks every object the layers hold (bytes and metadata against its name, in C on
        every core), the index against itself (dangling rows, reference counts) and objects/ and
        tmp/ for stray files; returns every problem found, [] for a whole store.

        With repair, fixes what it can (Problem.fixed): counts recomputed, dangling rows and
        stray files removed, object metadata restored.  An object whose bytes are wrong or
        gone is re-made from another object with the same content (other metadata) whose
        bytes are whole; without one, it is deleted and the layers holding it are marked, so
        that re-importing any image listed in Problem.images (from its original archive)
        re-creates it.

        xattrs: only those of the namespaces applied to files (user.*; as root also trusted.*
        and security.capability) are compared; the others, such as security.selinux, live in
        the records only, and a label the host gives the objects is not damage.

        Files that interrupted work left (a killed import or gc) are Problem.garbage: the
        store is whole with them, and gc removes them.

        progress, when given, is called on this thread about ten times a second while the
        objects are read and hashed, which is nearly all of fsck's time: bytes and objects
        hashed, of the totals the index names.

        Locking: without repair, the store lock shared (gc waits; imports may run, and objects
        they have written but not yet committed show as garbage) and one LMDB read snapshot.
        With repair, the store lock exclusively and one LMDB write transaction, which both
        checks and fixes, so the fixes apply to exactly the state that was checked."""
        from .store import fsck
        index = self._ctx.index
        if not repair:
            with self._lock.shared():
                with index.read() as txn:
                    return fsck.run(self._ctx, txn, False, progress)
        with self._lock.exclusive():
            with index.write() as txn:
                return fsck.run(self._ctx, txn, True, progress)

    # ---- lifecycle: rm, gc, du (store/lifecycle.py) -------------------------------------------

    def remove(self, refs, force: bool = False) -> list[tuple[str, str]]:
        """Removes images as `docker rmi` does: a tag is untagged, and its image deleted once
        no tag is left; an image named by id is deleted with all its tags, which needs force
        when it has more than one.  An image a mounted container uses is never deleted; one a
        `run` container was made from, only with force (the container runs on).
        Returns [("untagged", tag) | ("deleted", image id)] in order.  All refs or none:
        an unknown one (ImageNotFound) or a refusal changes nothing.  Deletes no file: the
        layers and objects an image held stay until gc.  A deleted image then leaves every
        containers-storage store `cstore` put it in (which unpins its layers there).
        Locking: one index write transaction, no store lock (imports and checkouts go on;
        one that already read the image finishes with it, as gc waits for it); the store
        lock shared while cstore stores are rewritten, when there are any."""
        from .runtimes import cstore
        from .store import lifecycle
        actions = lifecycle.remove(self._ctx, refs, force, self._runtimes())
        if any(a == "deleted" for a, _ in actions) and cstore.exported(self._ctx):
            with self._lock.shared():
                cstore.prune(self._ctx)
        return actions

    def gc(self, dry_run: bool = False, full: bool = False,
           progress: Callable[[Progress], None] | None = None) -> GcResult:
        """Frees what nothing references: layers no image names, objects no layer holds
        (index rows and files), object files the index does not know (left by an interrupted
        import), stale tmp/ entries, cached overlay layer dirs that no stored layer and no
        container needs.  objects/ is walked for unknown files only when root/pending/ or
        tmp/ shows an interrupted import or gc, or with full=True.  dry_run reports and changes nothing.
        Returns a GcResult.  progress, when given, is called as files are removed: bytes and
        files removed so far, of the result's bytes and files (layer dirs are not counted).
        Locking: the store lock exclusively (waits for imports, checkouts and other readers of
        object files to finish, and they wait for it), plus one index write transaction."""
        from .store import lifecycle
        with self._lock.exclusive():
            return lifecycle.gc(self._ctx, dry_run, full, progress, self._runtimes())

    def du(self) -> DuResult:
        """Disk use per image and for the store (a DuResult): logical bytes, bytes on disk of
        object files with each inode counted once, bytes shared with other images, dedup ratio.
        Locking: the store lock shared (gc waits; imports may run) and an index snapshot."""
        from .store import lifecycle
        with self._lock.shared():
            return lifecycle.du(self._ctx)
