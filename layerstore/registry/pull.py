"""Pull: an image in a registry as a Source for the import pipeline (store/pipeline.py), which
does the rest as for an archive: only the layers the store lacks are read, each streams
through decompression into the C ingest as it arrives, every digest is verified, and one
index transaction commits the images.

plans() resolves the reference: a HEAD of a tag (which Docker Hub does not count as a pull)
gives the manifest digest; the manifest or index, each platform manifest and each config are
then read from the store's index when it holds those bytes (verified against their digest:
an image pulled before costs that one HEAD), else fetched by digest and verified
(client.get_manifest refuses schema 1 and artifacts, and caps sizes).  An index yields the
platform asked for (formats/manifests.py: choose_manifests), or every image.

blobs(keys) opens one verifying download per layer the pipeline asks for (the layers whose
diffID, or whose blob digest, the store has are never asked for, so never requested), read
by `jobs` threads side by side; a broken connection resumes with Range, and a server that
ignores Range is read again from the start, skipping what was handed out.

A zstd:chunked or eStargz layer (partial="auto"|"always") is read by partial pull instead
(registry/partial.py): its TOC, found from the manifest's annotations or the blob's footer
(a zstd layer without them costs one tail read; a gzip one only with "always"), says which
files the store lacks; only their frames (and the tar-split, or the frames that hold the
tar headers) are fetched, the tar stream is rebuilt from the store's objects and those
bytes, and the import checks its diffID as for any layer.  "auto" goes partial when the
store holds some of the files and the bytes and requests cost less than the blob at the
bandwidth and round-trip time the TOC's reads took, or an assumed link when they moved too
little to tell (partial.worth_it, partial.measured_link); a server that answers a range
GET with the whole blob has that answer streamed as a full pull.  The choice is in
LayerPull.partial.  The layers that may be chunked are prepared side by side (TOC, plan,
first range GET) while the store's content map is brought up to date, and handed to the
pipeline in the order they are ready, after the layers downloaded whole.

record() writes, in the import's commit: the digest the images were pulled as
("domain/path@sha256:...", as Docker's RepoDigests: an index's names the image for the
platform wanted, the others of an index pulled whole are named by their manifest's), the
index's bytes, and where each blob the store now holds was seen ("domain/path").
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Iterator

from .. import errors
from .._model import LayerPull, Progress, PullProgress
from ..formats.manifests import ImagePlan, choose_manifests, plan_manifest, sha256_digest
from ..formats.platforms import host_platform, platform_matches, platform_rank
from ..formats.reference import Reference
from ..formats.source import Blob, Reader
from ..formats import chunked
from ..store import contentmap
from . import partial as partial_
from .client import Client, Manifest, _classify


@dataclass
class _Layer:
    """One blob of the pull: what the plans say, and what its download did."""

    digest: str
    diff_id: str
    size: int | None
    action: str = "skipped"
    bytes: int = 0
    reader: object = None
    started: float = 0.0
    seconds: float = 0.0
    media_type: str | None = None
    annotations: dict | None = None
    partial: dict | None = None
    range_requests: int = 0

    def view(self) -> LayerPull:
        r = self.reader
        return LayerPull(self.digest, self.diff_id, self.size, self.action, self.bytes,
                         (r.requests if r is not None else 0) + self.range_requests,
                         r.resumes if r is not None else 0, self.seconds, self.partial)


class _Tracked(Reader):
    """A layer's download as the pipeline reads it, counted into its _Layer; the download
    is closed (its connection given back) when it ends."""

    def __init__(self, layer: _Layer):
        self.layer = layer

    def read(self, n: int = -1) -> bytes:
        layer, reader = self.layer, self.layer.reader
        if reader.closed:
            return b""
        data = reader.read(n)
        layer.bytes = reader.bytes_received
        if not data:
            reader.close()
            if reader.verified and layer.action == "downloading":
                layer.action = "downloaded"
                layer.seconds = time.monotonic() - layer.started
        return data


class RegistrySource:
    """ref in the registry client talks to, for an import into ctx's store (whose index
    may hold manifests and configs already); jobs: downloads side by side."""

    size: int | None
    readers: int

    def __init__(self, client: Client, ref: Reference, ctx, jobs: int = 3,
                 partial: str = "auto") -> None:
        if jobs < 1:
            raise ValueError("jobs must be at least 1")
        if partial not in ("auto", "never", "always"):
            raise ValueError("partial must be auto, never or always")
        self.partial = partial
        self._mapper: ThreadPoolExecutor | None = None    # the content map's fill, started
        self._mapping = None                              # by plans() (_fill_map)
        self._early: ThreadPoolExecutor | None = None     # the TOCs' first reads, started by
        self._first_reads: dict[str, tuple] = {}          # plans() (_read_early), by digest
        self.client, self.ref, self.ctx = client, ref, ctx
        self.readers = jobs
        self.size = None
        self.top: Manifest | None = None
        self.primary: ImagePlan | None = None     # the image the tag and index digest name
        self.layers: dict[str, _Layer] = {}       # by blob digest, in the plans' order
        self._open: list = []
        self._lock = threading.Lock()
        self._multi_range = threading.Event()     # see partial.fetch

    # -- the Source protocol -------------------------------------------------------------

    def bytes_read(self) -> int:
        return sum(layer.bytes for layer in list(self.layers.values()))

    def plans(self, platform: str | None, all_platforms: bool) -> list[ImagePlan]:
        ref = self.ref
        if self._uses_map():
            self._fill_map()        # meanwhile: the manifest's round trips
        if self.top is None:
            if ref.digest is not None:
                self.top = self._manifest(ref.digest, None)
            else:
                try:
                    head = self.client.head_manifest(ref.path, ref.tag)
                except errors.RegistryError as exc:
                    if type(exc) is not errors.RegistryError:
                        raise
                    # A registry whose HEAD says no digest (or refuses HEAD): GET the tag.
                    self.top = self.client.get_manifest(ref.path, ref.tag)
                else:
                    self.top = self._manifest(head.digest, head.media_type)
        top = self.top
        if top.is_index:
            chosen = [(self._manifest(desc["digest"], desc.get("mediaType")), plat)
                      for desc, plat in choose_manifests(top.json, platform, all_platforms,
                                                         str(ref))]
        else:
            chosen = [(top, None)]
        annotations = {d.get("digest"): d.get("annotations")
                       for m, _ in chosen for d in m.json.get("layers") or []
                       if isinstance(d, dict)}
        maybe = [d for m, _ in chosen for d in m.json.get("layers") or [] if isinstance(d, dict)
                 and self._may_be_partial(d.get("size"), d.get("mediaType"),
                                          d.get("annotations"))]
        if maybe:
            self._fill_map()        # meanwhile: the configs, the layers' TOCs
            self._read_early(maybe)
        plans = [plan_manifest(m.data, m.digest, m.media_type, self._config,
                               member=lambda d: d, platform=plat, source_format="registry")
                 for m, plat in chosen]
        if not top.is_index and platform is not None and plans[0].platform is not None \
                and not platform_matches(plans[0].platform, platform):
            raise errors.PlatformMismatch(f"{ref} is an image for {plans[0].platform}, not for "
                                          f"the platform asked for, {platform}")
        # A tag names one image: the one for the platform wanted.
        want = platform or host_platform()
        fits = [p for p in plans if p.platform and platform_matches(p.platform, want)]
        self.primary = min(fits, key=lambda p: platform_rank(p.platform, want)) if fits \
            else plans[0]
        if ref.tag is not None:
            self.primary.tags = [f"{ref.name}:{ref.tag}"]
        for plan in plans:
            for layer in plan.layers:
                ann = annotations.get(layer.digest)
                self.layers.setdefault(layer.digest,
                                       _Layer(layer.digest, layer.diff_id, layer.size,
                                              media_type=layer.media_type,
                                              annotations=ann if isinstance(ann, dict)
                                              else None))
        return plans

    def blobs(self, keys: list[str] | None) -> Iterator[Blob]:
        todo = [self.layers[k] for k in keys or ()]
        for layer in todo:
            layer.action = "waiting"
        self.size = sum(layer.size or 0 for layer in todo)
        # The layers that may be chunked are prepared side by side (TOC, plan, ranges), and
        # the store's content map is brought up to date meanwhile: the readers take blobs
        # one at a time, so preparing each as it is taken would queue their round trips.
        chunked_ = [layer for layer in todo
                    if self._may_be_partial(layer.size, layer.media_type, layer.annotations)]
        pool = ThreadPoolExecutor(max(1, min(self.readers, len(chunked_))),
                                  thread_name_prefix="layerstore-partial")
        try:
            for layer in chunked_:
                layer.started = time.monotonic()
            prepared = {pool.submit(self._partial, layer): layer for layer in chunked_}
            # The others download from the start; each chunked layer is read as soon as it
            # is ready (the pipeline keeps layers apart by key, in any order).
            for layer in todo:
                if layer not in chunked_:
                    layer.started = time.monotonic()
                    yield self._whole(layer, None)
            for future in as_completed(prepared):
                layer = prepared[future]
                whole = None
                try:
                    blob = future.result()
                except partial_.WholeBlob as exc:
                    blob, whole = None, exc.response
                    layer.partial = {**(layer.partial or {}), "mode": "full",
                                     "reason": "the server answered a range GET with the "
                                               "whole blob"}
                yield blob if blob is not None else self._whole(layer, whole)
        finally:
            # They read the store's index: none may outlive the pull (after a failure the
            # store may be closed at once).
            pool.shutdown(wait=True, cancel_futures=True)

    def _whole(self, layer: _Layer, whole) -> Blob:
        """The layer's blob read whole (from whole, a range GET answered 200, if given)."""
        layer.reader = self.client.get_blob(self.ref.path, layer.digest, layer.size,
                                            restart=True, response=whole)
        with self._lock:
            self._open.append(layer.reader)
        layer.action = "downloading"
        return Blob(layer.digest, _Tracked(layer), digest=layer.digest)

    def close(self) -> None:
        with self._lock:
            for reader in self._open:
                reader.close()
            self._open = []
        if self._mapper is not None:
            # The fill writes the index: it may not outlive the pull (after a failure the
            # store may be closed at once).
            self._mapper.shutdown(wait=True)
        if self._early is not None:
            self._early.shutdown(wait=True, cancel_futures=True)
            # A first read not taken that was answered with the whole blob holds its answer
            # open.
            for _, future in self._first_reads.values():
                exc = None if future.cancelled() else future.exception()
                if isinstance(exc, partial_.WholeBlob):
                    exc.response.close()
            self._first_reads = {}

    # -- partial pulls ---------------------------------------------------------------------

    @staticmethod
    def _named(annotations: dict | None, size: int) -> bool:
        """Whether a layer's annotations locate a TOC (which the manifest then vouches for).
        One over the size caps is located too: the preparation then pulls the layer whole."""
        try:
            return chunked.locate(annotations, size) is not None \
                or chunked.estargz_digest(annotations) is not None
        except errors.LimitExceeded:
            return True

    def _may_be_partial(self, size, media_type, annotations) -> bool:
        """Whether a layer of this descriptor is worth a look for a TOC."""
        if self.partial == "never" or not isinstance(size, int) or size <= 0:
            return False
        zstd = isinstance(media_type, str) and media_type.endswith("zstd")
        ann = annotations if isinstance(annotations, dict) else None
        # gzip without annotations: no tail read for nothing, unless asked (an eStargz
        # layer whose annotation a copier dropped is found by its footer then).
        return self._named(ann, size) or zstd or self.partial == "always"

    def _uses_map(self) -> bool:
        """Whether this pull will want the content map whatever the manifest says: partial
        pulls asked for, or a store that has made its map (it pulls chunked layers)."""
        if self.partial == "never":
            return False
        if self.partial == "always":
            return True
        with self.ctx.index.read() as txn:
            return self.ctx.index.has_sha256_map(txn)

    def _fill_map(self) -> None:
        """Starts bringing the store's content map up to date, once: it is what the plans
        of partial pulls look files up in, and the first time it reads every object."""
        if self._mapper is None:
            self._mapper = ThreadPoolExecutor(1, thread_name_prefix="layerstore-contentmap")
            self._mapping = self._mapper.submit(contentmap.fill, self.ctx)

    def _read_early(self, descriptors: list[dict]) -> None:
        """Starts each chunked layer's first TOC read (chunked.first_read) while the configs
        are fetched and the store is asked which layers it lacks: the preparation of each
        layer (_partial) takes the answer from there.  A layer the store turns out to hold
        cost one small range GET."""
        if self._early is not None:
            return
        reads = {}
        for d in descriptors:
            ann = d.get("annotations")
            try:
                where = chunked.first_read(ann if isinstance(ann, dict) else None, d["size"])
            except (errors.InvalidTOC, errors.LimitExceeded):
                continue        # the preparation says so, if the layer is pulled
            if where is not None and isinstance(d.get("digest"), str):
                reads[d["digest"]] = where
        if not reads:
            return
        self._early = ThreadPoolExecutor(min(self.readers, len(reads)),
                                         thread_name_prefix="layerstore-toc")
        for digest, (offset, length) in reads.items():
            self._first_reads[digest] = ((offset, length), self._early.submit(
                self._range_get, digest, offset, length))

    def _partial(self, layer: _Layer) -> Blob | None:
        """A chunked layer as a rebuilt tar of stored objects and fetched frames, or None
        for a full pull (layer.partial says why).  Raises partial.WholeBlob when a range GET
        was answered with the whole blob, to be read as the full pull."""
        ann = layer.annotations
        named = self._named(ann, layer.size)
        timing: list[tuple[int, float]] = []
        known: dict[tuple[int, int], bytes] = {}

        def fetch(offset: int, length: int) -> bytes:
            with self._lock:
                layer.range_requests += 1
                early = self._first_reads.pop(layer.digest, None)
            if early is not None and early[0] == (offset, length):
                got, seconds = early[1].result()
            else:
                got, seconds = self._range_get(layer.digest, offset, length)
            with self._lock:
                layer.bytes += len(got)
            timing.append((length, seconds))
            known[(offset, offset + length)] = got
            return got

        def full(reason: str, **more) -> None:
            layer.partial = {"mode": "full", "reason": reason, **more}

        try:
            found = chunked.read_toc(fetch, layer.size, ann)
        except partial_.Refused:
            return full("the server refuses range requests")
        except errors.LimitExceeded as exc:
            return full(str(exc))
        except errors.InvalidTOC:
            if named:
                raise           # the manifest vouches for this TOC: it lies
            return full("the blob's footer points at no valid TOC")
        if found is None:
            return full("not a chunked layer")
        loc, toc, tarsplit = found
        self._mapping.result()
        try:
            with self.ctx.index.read() as txn:
                plan = partial_.plan(loc, toc, tarsplit,
                                     lambda d, n: contentmap.lookup(self.ctx, txn, d, n),
                                     known=tuple(known))
        except partial_.Unplannable as exc:
            return full(f"a partial pull cannot rebuild this layer: {exc}")
        info = {"format": loc.format, "files": plan.files, "local": plan.local,
                "planned_bytes": plan.wire_bytes, "planned_requests": len(plan.requests)}
        if plan.wire_bytes > partial_.FETCH_LIMIT:
            return full(f"over {partial_.FETCH_LIMIT} bytes to fetch", **info)
        bandwidth, rtt, how = partial_.measured_link(timing)
        info["bandwidth"], info["rtt"], info["link"] = round(bandwidth), round(rtt, 6), how
        if self.partial == "auto" and not partial_.worth_it(plan, layer.size, bandwidth, rtt):
            return full("cheaper whole by the cost model", **info)
        layer.action = "downloading"

        def counted(requests: int, n: int) -> None:
            with self._lock:
                layer.range_requests += requests
                layer.bytes += n
        try:
            fetched, pending = partial_.fetch(self.client, self.ref.path, layer.digest,
                                              layer.size, plan.requests, counted,
                                              self._multi_range)
        except partial_.Refused:
            return full("the server refuses range requests", **info)
        layer.partial = {"mode": "partial", "reason": "fewer bytes" if self.partial == "auto"
                         else "asked for", **info}
        layer.action = "partial"
        layer.seconds = time.monotonic() - layer.started
        rebuilt = partial_.Rebuilt(plan, {**known, **fetched},
                                   f"layer {self.ref.name}@{layer.digest}", pending)
        compression = "gzip" if loc.format == chunked.ESTARGZ else "zstd"
        return Blob(layer.digest, rebuilt, stands_for=(compression, layer.digest, layer.size))

    def _range_get(self, digest: str, offset: int, length: int) -> tuple[bytes, float]:
        """The blob's bytes [offset, offset + length) and the seconds the GET took.  Raises
        partial.WholeBlob (answered 200) or partial.Refused (another status)."""
        t = time.monotonic()
        resp = self.client.get_blob_ranges(self.ref.path, digest, [(offset, offset + length)])
        if resp.status == 200:
            raise partial_.WholeBlob(resp)
        try:
            if resp.status != 206:
                raise partial_.Refused(f"answered {resp.status}")
            data = partial_.read_all(resp, length)
        finally:
            if resp.status != 200:
                resp.close()
        m = partial_.CONTENT_RANGE.match(resp.header("Content-Range") or "")
        if not m or int(m.group(1)) != offset or len(data) != length:
            raise errors.RegistryError(f"blob {digest}: a range answer that is not "
                                       f"bytes {offset}-{offset + length - 1}")
        return data, time.monotonic() - t

    # -- what a pull adds ----------------------------------------------------------------

    def progress(self, p: Progress) -> PullProgress:
        """The pipeline's progress with every layer's state and the requests sent."""
        return PullProgress(p.bytes_done, p.bytes_total, p.items_done, p.items_total,
                            tuple(layer.view() for layer in list(self.layers.values())),
                            self.client.counters.requests)

    def record(self, index, txn, plans: list[ImagePlan]) -> None:
        """In the commit: repo digests, the index's bytes (so a pull of it again needs only
        the HEAD), and the blob locations of the layers the store holds from these blobs."""
        name = self.ref.name
        # As Docker's RepoDigests: the digest pulled (an index's for the image the tag
        # names); the other images of an index pulled whole get their manifest's.
        index.add_repo_digest(txn, f"{name}@{self.top.digest}", self.primary.id)
        for plan in plans:
            if plan is not self.primary:
                index.add_repo_digest(txn, f"{name}@{plan.manifest_digest}", plan.id)
        if self.top.is_index:
            index.put_metadata(txn, self.top.digest, self.top.data)
        for plan in plans:
            for ref in plan.layers:
                layer = index.layer(txn, ref.diff_id)
                if layer is not None and any(b["digest"] == ref.digest for b in layer.blobs):
                    index.add_blob_location(txn, ref.digest, name)

    # -- metadata, from the store when it has it ------------------------------------------

    def _stored(self, digest: str) -> bytes | None:
        with self.ctx.index.read() as txn:
            data = self.ctx.index.metadata(txn, digest)
        return data if data is not None and sha256_digest(data) == digest else None

    def _manifest(self, digest: str, media_type: str | None) -> Manifest:
        data = self._stored(digest)
        if data is None:
            return self.client.get_manifest(self.ref.path, digest)
        kind, parsed = _classify(data, media_type, f"{self.ref.name}@{digest}")
        return Manifest(kind, digest, data, parsed)

    def _config(self, desc: dict) -> bytes:
        digest = desc.get("digest")
        data = self._stored(digest) if isinstance(digest, str) else None
        if data is not None:
            return data
        size = desc.get("size")
        return self.client.get_blob_bytes(self.ref.path, digest,
                                          size if isinstance(size, int) else None)
