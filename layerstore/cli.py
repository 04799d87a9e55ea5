"""The layerstore command line: parse, call the Store, print.

Errors end the program with one line on stderr, "layerstore: error: ...", and a non-zero exit
status (1 for a failed operation, 2 for a usage error, 130 when interrupted); never a
traceback unless LAYERSTORE_DEBUG=1.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import gc as _gc       # the gc command is cli.gc
import json
import os
import re
import sys
import time
from typing import TYPE_CHECKING, NoReturn

import click

from . import errors

if TYPE_CHECKING:   # the store is imported when a command opens it
    from ._model import Progress
    from ._store import Store


def _human_size(n: float) -> str:
    """Bytes as Docker prints them (go-units HumanSizeWithPrecision(n, 3)): three significant
    digits of decimal units, "1.23MB", "0B"."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        text = f"{n:.3g}"
        if float(text) < 1000 or unit == "PB":    # 999.7 is "1kB", not "1e+03B"
            return text + unit
        n /= 1000
    return f"{n}"


_TIME = re.compile(r"(\d{4}-\d\d-\d\d)[Tt ](\d\d:\d\d:\d\d)(?:\.(\d+))?([Zz]|[+-]\d\d:\d\d)?\Z")


def _when(created: str | None) -> _dt.datetime | None:
    """An RFC 3339 time as configs write it (nanoseconds, "Z"), None if it is not one."""
    m = _TIME.match(created or "")
    if not m:
        return None
    zone = "+00:00" if m[4] in (None, "Z", "z") else m[4]
    return _dt.datetime.fromisoformat(f"{m[1]}T{m[2]}.{(m[3] or '')[:6]:0<6}{zone}")


def _duration(secs: float) -> str:
    """A duration as Docker prints it before "ago" (go-units HumanDuration)."""
    if int(secs) < 1:
        return "Less than a second"
    if int(secs) < 60:
        return "1 second" if int(secs) == 1 else f"{int(secs)} seconds"
    minutes = int(secs / 60)
    if minutes < 60:
        return "About a minute" if minutes == 1 else f"{minutes} minutes"
    hours = int(secs / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(secs / 3600) // 24 // 365} years"


def _ago(created: str | None) -> str:
    t = _when(created)
    if t is None:
        return "N/A"
    return _duration((_dt.datetime.now(_dt.timezone.utc) - t).total_seconds()) + " ago"


def _table(rows: list[tuple[str, ...]]) -> None:
    """Columns three spaces apart, as docker's tables."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _short(image_id: str, no_trunc: bool) -> str:
    """An id as docker shows it: 12 hex digits, or whole (sha256:...) with --no-trunc."""
    return image_id if no_trunc else image_id.split(":")[-1][:12]


class _Progress:
    """A one-line progress display on a terminal's stderr: bytes, items, rate and, when the
    totals are known, a bar and the time left.  Nothing at all when stderr is not a terminal
    or when the output is JSON for a script."""

    def __init__(self, label: str, unit: str, enabled: bool = True) -> None:
        self.label, self.unit = label, unit
        self.enabled = enabled and sys.stderr.isatty()
        self.last = 0.0
        self.start = time.monotonic()

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < 0.1:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-6)
        frac = (p.bytes_done / p.bytes_total if p.bytes_total else
                p.items_done / p.items_total if p.items_total else None)
        parts = [self.label]
        if frac is not None:
            frac = min(frac, 1.0)
            parts.append(f"[{'#' * int(frac * 30):<30}]")
        done = _human_size(p.bytes_done)
        parts.append(f"{done}/{_human_size(p.bytes_total)}" if p.bytes_total else done)
        total = f"/{p.items_total}" if p.items_total else ""
        parts.append(f"{p.items_done}{total} {self.unit}")
        parts.append(f"{_human_size(p.bytes_done / elapsed)}/s")
        if frac:
            left = int(elapsed * (1 - frac) / frac)
            parts.append(f"ETA {left // 60}:{left % 60:02d}")
        sys.stderr.write("\r" + "  ".join(parts) + "\x1b[K")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self.last:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def _image_json(image) -> dict:
    return {"id": image.id, "tags": list(image.tags), "layers": list(image.diff_ids),
            "size": image.size, "created": image.created}


def _inspect_json(r) -> dict:
    """An InspectResult as `inspect` prints it (Docker's field names where Docker has them)."""
    image = r.image
    return {
        "Id": image.id, "RepoTags": list(image.tags), "RepoDigests": list(image.repo_digests),
        "Created": image.created,
        "Platform": image.platform, "Size": image.size, "SourceFormat": image.source_format,
        "Config": r.config, "Manifest": r.manifest,
        "Layers": [{"DiffID": l.diff_id, "Entries": l.entries, "Files": l.files,
                    "Bytes": l.file_bytes, "TarBytes": l.stream_bytes,
                    "NewBytes": l.new_bytes, "DedupBytes": l.file_bytes - l.new_bytes,
                    "NewObjects": l.new_objects, "BlobDigests": list(l.blob_digests)}
                   for l in r.layers],
    }


def _problems_json(problems) -> str:
    return json.dumps([{"kind": p.kind, "subject": p.subject, "detail": p.detail,
                        "repairable": p.repairable, "images": list(p.images), "fixed": p.fixed,
                        "garbage": p.garbage}
                       for p in problems], indent=2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", envvar="LAYERSTORE_ROOT", type=click.Path(file_okay=False),
              help="Store directory (default: $XDG_DATA_HOME/layerstore).")
@click.version_option(package_name="layerstore", prog_name="layerstore")
@click.pass_context
def cli(ctx: click.Context, root: str | None) -> None:
    """A content-addressed store for container image layers: every distinct file once."""

    def open_store() -> Store:
        from ._store import Store, default_root
        store = Store(root or default_root())
        ctx.call_on_close(store.close)
        return store

    ctx.obj = open_store


def _platform(ctx, param, value: str | None) -> str | None:
    from .formats.platforms import parse_platform
    try:
        return None if value is None else parse_platform(value)
    except errors.InvalidPlatform as exc:
        raise click.BadParameter(str(exc)) from None


def registry_options(command):
    """The options of every command that talks to a registry (pull, push), as podman and
    skopeo spell them, handed to the command as one parameter, registry: a
    registry.RegistryOptions (its client(name) makes the Client).  Credentials come from
    --creds, else from --authfile and the files podman and Docker keep them in; they never
    appear in output or errors."""
    import functools

    @click.option("--authfile", type=click.Path(dir_okay=False), metavar="FILE",
                  help="Credentials file (auth.json, or Docker's config.json) to look in "
                       "first (default: $REGISTRY_AUTH_FILE, podman's and Docker's files).")
    @click.option("--creds", metavar="USER:PASSWORD",
                  help="Credentials for the registry, instead of looking them up.")
    @click.option("--tls-verify", type=click.BOOL, default=True, show_default=True,
                  metavar="BOOL",
                  help="Require HTTPS with a verified certificate; --tls-verify=false also "
                       "allows plain HTTP, for every registry (loopback registries always "
                       "are allowed it).")
    @click.option("--insecure-registry", "insecure_registries", multiple=True,
                  metavar="HOST[:PORT]",
                  help="A registry (or a CIDR of addresses) reached without TLS "
                       "verification or over plain HTTP (repeatable).")
    @functools.wraps(command)
    def with_registry(*args, authfile, creds, tls_verify, insecure_registries, **kwargs):
        from .registry import RegistryOptions, parse_creds
        registry = RegistryOptions(authfile=authfile,
                                   credentials=parse_creds(creds) if creds else None,
                                   tls_verify=tls_verify,
                                   insecure_registries=tuple(insecure_registries))
        return command(*args, registry=registry, **kwargs)

    return with_registry


@cli.command("import")
@click.argument("path", type=click.Path(allow_dash=True))
@click.option("--tag", "tags", multiple=True, metavar="NAME:TAG",
              help="Tag the imported image (repeatable).")
@click.option("--platform", metavar="OS/ARCH[/VARIANT]", callback=_platform,
              help="Image of a multi-platform index to import (default: this machine's); "
                   "a single-platform archive for another platform is refused.")
@click.option("--all-platforms", is_flag=True, help="Import every image of an index.")
@click.option("--json", "as_json", is_flag=True, help="Print the images as JSON.")
@click.pass_obj
def import_(open_store, path, tags, platform, all_platforms, as_json):
    """Import a docker-archive or OCI image layout (directory, tar, .tar.gz or .tar.zst;
    - reads standard input)."""
    store = open_store()
    progress = _Progress("importing", "files", enabled=not as_json)
    source = sys.stdin.buffer if path == "-" else path
    try:
        images = store.import_archive(source, tags=tags, platform=platform,
                                      all_platforms=all_platforms, progress=progress)
    finally:
        progress.done()
    if as_json:
        click.echo(json.dumps([_image_json(i) for i in images], indent=2))
    else:
        for image in images:
            click.echo(" ".join([image.id, *image.tags]))


class _PullDisplay:
    """Pull progress on a terminal's stderr, one line per layer as skopeo shows it (already
    stored, or bytes, rate and a bar), redrawn in place; nothing when stderr is not a
    terminal or with --quiet or --json.  last keeps the latest report (for --json)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.last = None
        self.drawn = 0
        self.when = 0.0

    def __call__(self, p) -> None:
        self.last = p
        now = time.monotonic()
        if not self.enabled or now - self.when < 0.1:
            return
        self.when = now
        self._draw(p)

    def _draw(self, p) -> None:
        lines = []
        for layer in p.layers:
            head = f"blob {layer.digest.split(':')[-1][:12]}"
            if layer.action == "skipped":
                lines.append(f"{head}  skipped: already stored")
                continue
            size = layer.size or 0
            frac = min(layer.bytes / size, 1.0) if size else 0.0
            bar = f"[{'=' * int(frac * 30):<30}]"
            amount = f"{_human_size(layer.bytes)} / {_human_size(size)}"
            if layer.action == "downloaded":
                rate = layer.bytes / layer.seconds if layer.seconds else 0
                lines.append(f"{head}  {bar} {amount}  {_human_size(rate)}/s  done")
            else:
                lines.append(f"{head}  {bar} {amount}  {layer.action}")
        out = ("\x1b[{}A".format(self.drawn) if self.drawn else "") + \
            "".join(f"\r{line}\x1b[K\n" for line in lines)
        self.drawn = len(lines)
        sys.stderr.write(out)
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self.last is not None:
            self._draw(self.last)


@cli.command()
@click.argument("reference", metavar="REF")
@click.option("--platform", metavar="OS/ARCH[/VARIANT]", callback=_platform,
              help="Image of a multi-platform index to pull (default: this machine's).")
@click.option("--all-platforms", is_flag=True, help="Pull every image of an index.")
@click.option("-j", "--jobs", type=click.IntRange(1, 8), default=3, show_default=True,
              help="Layers downloaded side by side.")
@registry_options
@click.option("-q", "--quiet", is_flag=True, help="No progress; print only the image IDs.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the images and, per layer, what was done (skipped, downloaded), "
                   "bytes and requests, as JSON.")
@click.option("--partial", type=click.Choice(["auto", "never", "always"]), default="auto",
              show_default=True,
              help="zstd:chunked and eStargz layers: fetch only the files the store lacks "
                   "(always), when that costs less than the whole blob (auto), or never.")
@click.pass_obj
def pull(open_store, reference, platform, all_platforms, jobs, registry, quiet, as_json,
         partial):
    """Pull an image from a registry (Docker Hub unless REF names another: python,
    quay.io/org/app:1, localhost:5000/app@sha256:...).  Layers the store holds are not
    downloaded; the others stream into the store as they arrive, every digest verified."""
    store = open_store()
    display = _PullDisplay(enabled=not (quiet or as_json))
    try:
        images = store.pull(reference, platform=platform, all_platforms=all_platforms,
                            jobs=jobs, registry=registry, progress=display, partial=partial)
    finally:
        display.done()
    if as_json:
        p = display.last
        click.echo(json.dumps({
            "images": [_image_json(i) for i in images],
            "layers": [{"digest": layer.digest, "diffID": layer.diff_id, "size": layer.size,
                        "action": layer.action, "bytes": layer.bytes,
                        "requests": layer.requests, "resumes": layer.resumes,
                        "seconds": round(layer.seconds, 3), "partial": layer.partial}
                       for layer in p.layers],
            "requests": p.requests}, indent=2))
    elif quiet:
        for image in images:
            click.echo(image.id)
    else:
        for image in images:
            click.echo(" ".join([image.id, *image.tags]))


@cli.command()
@click.argument("reference", metavar="[REPOSITORY[:TAG]]", required=False)
@click.option("-q", "--quiet", is_flag=True, help="Only show image IDs.")
@click.option("--no-trunc", is_flag=True, help="Show whole image IDs (sha256:...).")
@click.option("--digests", is_flag=True,
              help="Show the digest each image was pulled as (name@sha256:...).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def images(open_store, reference, quiet, no_trunc, digests, as_json):
    """List the images in the store, one row per tag; with REPOSITORY[:TAG], only the tags
    that match it, as docker images ("app", "app:1", "docker.io/library/app"; * ? [...]
    match within one path component)."""
    from .formats.reference import tag_matches
    found = open_store().images()
    if reference is not None:
        found = [dataclasses.replace(i, tags=tuple(t for t in i.tags
                                                   if tag_matches(reference, t)))
                 for i in found]
        found = [i for i in found if i.tags]
    if as_json:
        click.echo(json.dumps([{**_image_json(i), "digests": list(i.repo_digests)}
                               if digests else _image_json(i) for i in found], indent=2))
        return
    rows = [("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE")]
    for image in found:
        for tag in image.tags or ("<none>:<none>",):
            repo, _, name = tag.rpartition(":")
            rows.append((repo, name, _short(image.id, no_trunc), _ago(image.created),
                         _human_size(image.size)))
    if quiet:
        for r in rows[1:]:
            click.echo(r[2])
        return
    if digests:     # as docker images --digests: the digest pulled for the row's repository
        by_id = {i.id: i for i in found}
        ids = [i.id for i in found for _ in (i.tags or (None,))]
        rows = [rows[0][:2] + ("DIGEST",) + rows[0][2:]] + [
            r[:2] + (_repo_digest(by_id[i], r[0]),) + r[2:] for r, i in zip(rows[1:], ids)]
    _table(rows)


def _repo_digest(image, repo: str) -> str:
    """The digest image was pulled as from repo (the newest recorded), else <none>."""
    mine = [d.rpartition("@")[2] for d in image.repo_digests if d.rpartition("@")[0] == repo]
    return mine[-1] if mine else "<none>"


@cli.command()
@click.argument("refs", metavar="IMAGE...", nargs=-1, required=True)
@click.pass_obj
def inspect(open_store, refs):
    """Show images as a JSON array, as docker inspect: config, manifest and per-layer
    statistics.  An image not found is an error line (exit status 1); the others are still
    shown."""
    store = open_store()
    found, failed = [], []
    for ref in refs:
        try:
            found.append(_inspect_json(store.inspect(ref)))
        except (errors.ImageNotFound, errors.InvalidReference) as exc:
            failed.append(exc)
    click.echo(json.dumps(found, indent=2))
    for exc in failed:
        click.echo(f"layerstore: error: {exc}", err=True)
    return 1 if failed else 0


@cli.command()
@click.argument("source")
@click.argument("target")
@click.pass_obj
def tag(open_store, source, target):
    """Tag the image SOURCE (a tag, an id or an id prefix) as TARGET (NAME[:TAG], normalized
    as Docker does: "app" is docker.io/library/app:latest), as docker tag; a TARGET that
    named another image now names this one."""
    open_store().tag(source, target)


_BOOLS = {"1": True, "t": True, "true": True, "0": False, "f": False, "false": False}


class _BoolFlags(click.Command):
    """Reads Docker's -H=false / --human=false (a flag that is on by default, turned off
    with a value, as Go's pflag allows) as --no-human."""

    def parse_args(self, ctx, args):
        out = []
        for i, arg in enumerate(args):
            if arg == "--":
                out += args[i:]
                break
            name, eq, value = arg.partition("=")
            if eq and name in ("-H", "--human"):
                if value.lower() not in _BOOLS:
                    raise click.BadParameter(f"{value!r} is not a boolean (true or false)",
                                             ctx=ctx, param_hint="'-H' / '--human'")
                arg = "--human" if _BOOLS[value.lower()] else "--no-human"
            out.append(arg)
        return super().parse_args(ctx, out)


def _step_created(created: str | None, human: bool) -> str:
    """A history step's time as docker history shows it: "3 weeks ago" (nothing before
    2000, where build tools put a fixed 1970 for reproducible images) or, not human, RFC 3339."""
    t = _when(created)
    if t is None:
        return ""
    if not human:
        return t.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return _ago(created) if t > _dt.datetime(2000, 1, 1, tzinfo=_dt.timezone.utc) else ""


def _ellipsis(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "\u2026"


@cli.command(cls=_BoolFlags)
@click.argument("image")
@click.option("-H", "--human/--no-human", default=True,
              help="Sizes and dates for people, the default; -H=false (or --no-human): "
                   "bytes and RFC 3339 times.")
@click.option("--no-trunc", is_flag=True, help="Whole image IDs and commands.")
@click.option("-q", "--quiet", is_flag=True, help="Only show image IDs.")
@click.option("--json", "as_json", is_flag=True, help="Print the steps as JSON.")
@click.pass_obj
def history(open_store, image, human, no_trunc, quiet, as_json):
    """Show how an image was made, newest step first, as docker history: each step of its
    config's history with the layer it made and that layer's size (steps that made no layer
    show 0B; IMAGE is <missing> below the image itself, as for a pulled image)."""
    steps = open_store().history(image)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(h) for h in steps], indent=2))
        return
    ids = [_short(h.image_id, no_trunc) if h.image_id else "<missing>" for h in steps]
    if quiet:
        for i in ids:
            click.echo(i)
        return
    rows = [("IMAGE", "CREATED" if human else "CREATED AT", "CREATED BY", "SIZE", "COMMENT")]
    for i, h in zip(ids, steps):
        by = h.created_by.replace("\t", " ")
        rows.append((i, _step_created(h.created, human), by if no_trunc else _ellipsis(by, 45),
                     _human_size(h.size) if human else str(h.size), h.comment))
    _table(rows)


@cli.command()
@click.option("-q", "--quiet", is_flag=True, help="Only show container IDs.")
@click.option("--no-trunc", is_flag=True, help="Whole container and image IDs.")
@click.option("--json", "as_json", is_flag=True, help="Print the mount records as JSON.")
@click.pass_obj
def ps(open_store, quiet, no_trunc, as_json):
    """List the running containers, newest first, as docker ps: those `layerstore run`
    started and the mounts `layerstore mount` made: container ID, image (a tag, or its ID),
    root filesystem, upper dir, created, name."""
    store = open_store()
    runs = store.runs()
    running = {r.id: r for r in runs if r.status == "running"}
    exited = {r.id for r in runs if r.status != "running"}
    mounts = [m for m in store.containers() if m.id not in exited]
    rows_of = [(m.id, m.image, m.mountpoint, m.upper, m.created,
                running[m.id].name if m.id in running else "") for m in mounts]
    # A run container whose rootfs is a checkout has no mount: it is listed from its record.
    mounted = {m.id for m in mounts}
    rows_of += [(r.id, r.image, os.path.join(r.bundle, "rootfs"), "-", r.created, r.name)
                for r in running.values() if r.id not in mounted]
    rows_of.sort(key=lambda r: r[4], reverse=True)
    if as_json:
        records = {m.id: dataclasses.asdict(m) for m in mounts}
        click.echo(json.dumps([{**records.get(row[0], {"id": row[0]}),
                                **({"run": dataclasses.asdict(running[row[0]])}
                                   if row[0] in running else {})}
                               for row in rows_of], indent=2))
        return
    cids = [row[0] if no_trunc else row[0][:12] for row in rows_of]
    if quiet:
        for cid in cids:
            click.echo(cid)
        return
    tags = {i.id: i.tags for i in store.images()}
    rows = [("CONTAINER ID", "IMAGE", "MOUNTPOINT", "UPPER DIR", "CREATED", "NAMES")]
    for cid, (_, image_id, point, upper, created, name) in zip(cids, rows_of):
        image = (tags.get(image_id) or (_short(image_id, no_trunc),))[0]
        rows.append((cid, image, point, upper, _ago(created), name))
    _table(rows)


@cli.command()
@click.argument("image")
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--link", is_flag=True,
              help="Hardlink the store's files, for read-only use (build roots, scanners): "
                   "fastest, but a write through one changes the store and every image "
                   "holding that file.  For writable containers that share the layers, use "
                   "`layerstore mount`.")
@click.option("--copy", is_flag=True,
              help="Independent copies that share no blocks with the store, even where the "
                   "filesystem could reflink.")
@click.option("--json", "as_json", is_flag=True, help="Print what was made as JSON.")
@click.pass_obj
def checkout(open_store, image, dest, link, copy, as_json):
    """Make DEST (absent or empty) the image's root filesystem.

    By default its files are safe to write: reflinks of the store's files where the
    filesystem has them (xfs, btrfs), otherwise copies, with their recorded times."""
    if link and copy:
        raise click.UsageError("--link and --copy exclude each other")
    progress = _Progress("checking out", "entries", enabled=not as_json)
    try:
        r = open_store().checkout(image, dest, link=link, copy=copy, progress=progress)
    finally:
        progress.done()
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(r), indent=2))
        return
    how = ", ".join(f"{n} {what}" for n, what in ((r.reflinked, "reflinked"),
                                                  (r.copied, "copied"),
                                                  (r.hardlinked, "hardlinked")) if n)
    click.echo(f"{dest}: {r.files} files{f' ({how})' if how else ''}, {r.dirs} directories, "
               f"{r.symlinks} symlinks, {r.specials} special files")
    skipped = []
    if r.skipped_specials:
        skipped.append(f"{r.skipped_specials} device nodes")
    if r.skipped_owners:
        skipped.append(f"owners of {r.skipped_owners} entries")
    if r.skipped_xattrs:
        skipped.append(f"{r.skipped_xattrs} xattrs")
    if skipped:
        click.echo(f"layerstore: not root, so skipped: {', '.join(skipped)}", err=True)


def _entry_json(e) -> dict:
    from .store.read import display
    return {"path": display(e.path), "type": e.type.value, "mode": e.mode & 0o7777,
            "uid": e.uid, "gid": e.gid, "size": e.size, "mtime": e.mtime_ns // 1_000_000_000,
            "link": e.link}


@cli.command("ls")
@click.argument("image")
@click.argument("path", default="/")
@click.option("-l", "--long", "long_", is_flag=True,
              help="Mode, owner uid/gid, size and mtime of each entry.")
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
@click.pass_obj
def ls(open_store, image, path, long_, as_json):
    """List a directory of an image (or show one entry), without checking it out."""
    from ._model import EntryType
    from .store.read import mode_string
    # As GNU ls: a symlink named on the command line is followed unless -l asks about it
    # (--json is -l for scripts); a trailing "/" always follows it.
    top, children = open_store().listdir(image, path, follow=not (long_ or as_json))
    rows = children if top.type is EntryType.DIR else [top]
    if as_json:
        click.echo(json.dumps([_entry_json(e) for e in rows], indent=2))
        return
    names = [e.path.rpartition("/")[2] if top.type is EntryType.DIR else path for e in rows]
    if not long_:
        for name in names:
            click.echo(name)
        return
    cols = []
    for e, name in zip(rows, names):
        size = (f"{e.devmajor}, {e.devminor}" if e.type in (EntryType.CHAR, EntryType.BLOCK)
                else str(e.size))
        when = _dt.datetime.fromtimestamp(e.mtime_ns // 1_000_000_000, _dt.timezone.utc)
        link = f" -> {e.link}" if e.type is EntryType.SYMLINK else ""
        cols.append((mode_string(e), f"{e.uid}/{e.gid}", size,
                     when.strftime("%Y-%m-%d %H:%M"), name + link))
    width = [max((len(c[i]) for c in cols), default=0) for i in range(4)]
    for c in cols:
        click.echo(f"{c[0]} {c[1]:<{width[1]}} {c[2]:>{width[2]}} {c[3]} {c[4]}")


@cli.command()
@click.argument("image")
@click.argument("path")
@click.pass_obj
def cat(open_store, image, path):
    """Write a file of an image to standard output (symlinks followed inside the image)."""
    import shutil
    out = sys.stdout.buffer
    with open_store().open(image, path) as f:
        try:
            shutil.copyfileobj(f, out, 1 << 20)
            out.flush()
        except BrokenPipeError:
            # As cat under `| head`: the reader left; stop quietly, as SIGPIPE would.
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
            sys.exit(141)


@cli.command()
@click.argument("image1")
@click.argument("image2")
@click.option("--json", "as_json", is_flag=True, help="Print {added, removed, changed} as JSON.")
@click.pass_obj
def diff(open_store, image1, image2, as_json):
    """Paths added (A), removed (D) and changed (C) from IMAGE1 to IMAGE2."""
    d = open_store().diff(image1, image2)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(d), indent=2))
        return
    lines = sorted([(p, "A") for p in d.added] + [(p, "D") for p in d.removed] +
                   [(p, "C") for p in d.changed])
    for p, mark in lines:
        click.echo(f"{mark} {p}")


@cli.command()
@click.argument("image")
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--upper", type=click.Path(file_okay=False),
              help="The container's writable dir (kept on umount; default: in the store).")
@click.option("--json", "as_json", is_flag=True, help="Print the mount record as JSON.")
@click.pass_obj
def mount(open_store, image, mountpoint, upper, as_json):
    """Mount IMAGE at MOUNTPOINT as a container (overlayfs over shared layer dirs)."""
    m = open_store().mount(image, mountpoint, upper=upper)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(m), indent=2))
    else:
        click.echo(f"{m.id} {m.mountpoint}")


@cli.command()
@click.argument("mountpoint", type=click.Path())
@click.pass_obj
def umount(open_store, mountpoint):
    """Unmount a container mounted by `layerstore mount`."""
    open_store().umount(mountpoint)


@cli.command()
@click.argument("path", metavar="MOUNTPOINT|UPPERDIR", type=click.Path())
@click.option("--tag", "tags", multiple=True, metavar="NAME:TAG",
              help="Tag the new image (repeatable).")
@click.pass_obj
def commit(open_store, path, tags):
    """Make a container's changes a new layer and image on top of its image."""
    image = open_store().commit(path, tags=tags)
    click.echo(" ".join([image.id, *image.tags]))

# ---- OCI bundles and containers on runc or crun (runtimes/oci.py) ------------------------------

@cli.command()
@click.argument("image", required=False)
@click.argument("bundle_dir", metavar="DIR", required=False, type=click.Path(file_okay=False))
@click.option("--remove", "remove_dir", metavar="DIR", type=click.Path(file_okay=False),
              help="Unmount a bundle layerstore made and remove it.")
@click.option("--rootless", is_flag=True,
              help="A user namespace mapping your uid and gid to root (runc spec --rootless).")
@click.option("--read-only", is_flag=True, help="Mount the container's root read-only.")
@click.option("--json", "as_json", is_flag=True, help="Print the bundle's marker as JSON.")
@click.pass_obj
def bundle(open_store, image, bundle_dir, remove_dir, rootless, read_only, as_json):
    """Make DIR an OCI runtime bundle of IMAGE (rootfs + config.json, as umoci unpack), for
    runc run or crun run; --remove DIR unmounts and removes one."""
    store = open_store()
    if remove_dir is not None:
        if image is not None:
            raise click.UsageError("--remove takes the bundle DIR alone")
        store.remove_bundle(remove_dir)
        return
    if image is None or bundle_dir is None:
        raise click.UsageError("give IMAGE and DIR (or --remove DIR)")
    marker = store.bundle(image, bundle_dir, rootless=rootless, read_only=read_only)
    if as_json:
        click.echo(json.dumps(marker, indent=2))
    else:
        click.echo(f"{marker['id']} {os.path.abspath(bundle_dir)} ({marker['rootfs']})")


@cli.command(context_settings={"allow_interspersed_args": False})
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--rm", "remove", is_flag=True,
              help="Remove the container, its mount and upper dir when it exits.")
@click.option("--name", help="The container's name (default: its short id).")
@click.option("-e", "--env", "env", multiple=True, metavar="K=V", help="Set a variable.")
@click.option("-w", "--workdir", metavar="DIR", help="Working directory in the container.")
@click.option("-u", "--user", metavar="USER[:GROUP]",
              help="Name or uid (and group or gid) in the image's /etc/passwd and /etc/group.")
@click.option("--read-only", is_flag=True, help="Mount the container's root read-only.")
@click.option("--runtime", metavar="runc|crun|PATH",
              help="The OCI runtime (default: runc, else crun, on PATH).")
@click.pass_obj
def run(open_store, image, command, remove, name, env, workdir, user, read_only, runtime):
    """Run COMMAND (default: the image's Entrypoint + Cmd) in a new container of IMAGE, in
    the foreground; exits with the container's status."""
    for item in env:
        if "=" not in item:
            raise click.BadParameter(f"{item!r} is not K=V", param_hint="'-e'")
    return open_store().run(image, command, name=name, remove=remove, env=env,
                            workdir=workdir, user=user, read_only=read_only, runtime=runtime)


# ---- containerd: the snapshotter and containerd-load (runtimes/snapshotter.py, containerd.py) ---

@cli.command()
@click.option("--address", default="/run/layerstore/snapshotter.sock", show_default=True,
              metavar="SOCK", help="The unix socket containerd's [proxy_plugins] entry names.")
@click.option("-v", "--verbose", count=True, help="Log claims and commits (-vv: every call).")
@click.pass_obj
def snapshotter(open_store, address, verbose):
    """Serve containerd's snapshots API from the store (a proxy snapshotter plugin)."""
    import logging
    from .runtimes.snapshotter import serve
    logging.basicConfig(format="layerstore snapshotter: %(levelname)s %(message)s",
                        level={0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG))
    store = open_store()
    serve(store.snapshotter(), address,
          ready=lambda: click.echo(f"layerstore snapshotter: serving {store.root} on {address}",
                                   err=True))


@cli.command("containerd-load")
@click.argument("image")
@click.option("--address", "-a", envvar="CONTAINERD_ADDRESS",
              default="/run/containerd/containerd.sock", show_default=True, metavar="SOCK",
              help="containerd's socket.")
@click.option("--namespace", "-n", envvar="CONTAINERD_NAMESPACE", default="default",
              show_default=True, help="containerd namespace.")
@click.option("--snapshotter", default="layerstore", show_default=True,
              help="The proxy plugin's name in containerd's config.")
@click.pass_obj
def containerd_load(open_store, image, address, namespace, snapshotter):
    """Register an image with containerd (manifest and config only); the snapshotter serves
    its layers from the store."""
    img, chains = open_store().containerd_load(image, address, namespace, snapshotter)
    click.echo(" ".join([img.id, *img.tags]))


# ---- podman, CRI-O: a containers-storage image store (runtimes/cstore.py) ---------------------

@cli.command()
@click.argument("dest", metavar="DIR", type=click.Path(file_okay=False))
@click.argument("images", metavar="[IMAGE...]", nargs=-1)
@click.option("--remove", "remove", multiple=True, metavar="IMAGE",
              help="Take IMAGE out of the store (repeatable); its layers are unpinned.")
@click.option("--json", "as_json", is_flag=True, help="Print the image ids as JSON.")
@click.pass_obj
def cstore(open_store, dest, images, remove, as_json):
    """Serve images to podman, CRI-O, buildah and skopeo from DIR, a containers-storage
    read-only image store over the layer dirs (storage.conf additionalimagestores, or
    --storage-opt overlay.imagestore=DIR).  Without IMAGE, brings DIR up to date (a DIR
    deleted by hand: drops its pins)."""
    ids = open_store().cstore(dest, images, remove)
    if as_json:
        click.echo(json.dumps(ids))
    else:
        for i in ids:
            click.echo(i)


def _output(out: str):
    """A path, or standard output for "-" (never a terminal: an archive would garble it)."""
    if out != "-":
        return out
    if sys.stdout.isatty():
        raise click.UsageError("refusing to write an archive to a terminal: use -o FILE or "
                               "redirect standard output")
    return sys.stdout.buffer


@cli.command()
@click.argument("images", metavar="IMAGE...", nargs=-1, required=True)
@click.option("-o", "--output", "out", default="-", metavar="FILE",
              help="Write to FILE (default: standard output).")
@click.option("--format", "fmt", type=click.Choice(["docker", "oci"]), default="docker",
              show_default=True, help="docker-archive (docker load) or OCI image layout tar.")
@click.option("--compress", type=click.Choice(["none", "gzip", "zstd"]), default="none",
              show_default=True, help="Compress the whole archive.")
@click.pass_obj
def save(open_store, images, out, fmt, compress):
    """Write images to an archive whose layer tars are byte-identical to the imported ones."""
    store = open_store()
    progress = _Progress("saving", "entries")
    try:
        store.save(list(images), _output(out), format=fmt, compress=compress,
                   progress=progress)
    finally:
        progress.done()


class _PushDisplay:
    """skopeo-like lines on a terminal's stderr: one per blob when it is done (skipped,
    mounted, uploaded), and a transient line for the uploads under way (named by the
    layer's diffID: the blob digest is known at the end)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.active: dict[str, tuple[int, int | None, float]] = {}
        self.last = 0.0

    def __call__(self, p) -> None:
        if not self.enabled:
            return
        if p.state == "uploading":
            name = p.layer.split(":")[-1][:12]
            started = self.active.get(name, (0, None, time.monotonic()))[2]
            self.active[name] = (p.bytes_done, p.bytes_total, started)
            if time.monotonic() - self.last >= 0.1:
                self.last = time.monotonic()
                parts = []
                for n, (done, total, t0) in self.active.items():
                    rate = done / max(time.monotonic() - t0, 1e-6)
                    of = f"/{_human_size(total)}" if total else ""
                    parts.append(f"{n} {_human_size(done)}{of} {_human_size(rate)}/s")
                self._line("uploading " + "  ".join(parts), final=False)
            return
        if p.state in ("checking", "writing"):
            return
        if p.what == "manifest":
            self._line(f"Writing manifest {p.digest}")
            return
        if p.layer:
            self.active.pop(p.layer.split(":")[-1][:12], None)
        label = f"Copying {p.what} {(p.digest or '').split(':')[-1][:12]}"
        if p.state == "skipped":
            self._line(f"{label} skipped: already exists")
        elif p.state == "mounted":
            self._line(f"{label} mounted from {p.detail}")
        else:
            self._line(f"{label} done {_human_size(p.bytes_done)} ({p.detail})")

    def _line(self, text: str, final: bool = True) -> None:
        sys.stderr.write("\r" + text + "\x1b[K" + ("\n" if final else ""))
        sys.stderr.flush()


def _pushed_json(b) -> dict:
    return {"kind": b.kind, "digest": b.digest, "diff_id": b.diff_id, "action": b.action,
            "compression": b.compression, "size": b.size, "bytes_sent": b.bytes_sent,
            "requests": b.requests, "mounted_from": b.source, "original": b.original,
            "upload": b.upload}


@cli.command()
@click.argument("image")
@click.argument("ref", metavar="[REF]", required=False)
@click.option("--compress", type=click.Choice(["gzip", "zstd", "zstd:chunked", "none"]),
              default=None,
              help="Compression of the layers uploaded, and the only one reused (default: "
                   "each layer's original, else gzip).  zstd:chunked lets a pull fetch only "
                   "the files it lacks (needs --format oci, the default for it).")
@click.option("--format", "fmt", type=click.Choice(["docker", "oci"]), default=None,
              help="Manifest format (default: the image's original, else docker).")
@click.option("--digestfile", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write the pushed manifest's digest to FILE.")
@click.option("--chunk-size", type=click.IntRange(min=1), metavar="BYTES",
              help="Upload in PATCHes of BYTES (default: one request per blob).")
@click.option("--all-platforms", is_flag=True,
              help="Push every image of the multi-platform index IMAGE came in, and the index.")
@click.option("-q", "--quiet", is_flag=True, help="No progress, no output.")
@click.option("--json", "as_json", is_flag=True,
              help="Print what was done per blob (skipped, mounted, uploaded) as JSON.")
@registry_options
@click.pass_obj
def push(open_store, image, ref, compress, fmt, digestfile, chunk_size, all_platforms, quiet,
         as_json, registry):
    """Push IMAGE to a registry as REF (default: the tag IMAGE names).  Blobs the registry
    has are skipped, blobs of another of its repositories mounted, the rest uploaded;
    the original manifest is pushed unchanged when every layer is its original blob."""
    display = _PushDisplay(enabled=not (quiet or as_json))
    result = open_store().push(image, ref, compress=compress, format=fmt, registry=registry,
                               progress=display, chunk_size=chunk_size,
                               all_platforms=all_platforms)
    if digestfile:
        try:
            with open(digestfile, "w") as f:
                f.write(result.digest)
        except OSError as exc:
            raise errors.host_path_error(exc, digestfile, "write") from None
    if as_json:
        click.echo(json.dumps({
            "reference": result.reference, "digest": result.digest,
            "media_type": result.media_type, "original_manifest": result.original_manifest,
            "bytes_sent": result.bytes_sent, "requests": result.requests,
            "seconds": round(result.seconds, 3), "config": _pushed_json(result.config),
            "layers": [_pushed_json(b) for b in result.layers],
            "images": [{"reference": i.reference, "digest": i.digest,
                        "media_type": i.media_type, "original_manifest": i.original_manifest}
                       for i in result.images]}, indent=2))
    elif not quiet:
        click.echo(f"{result.reference}@{result.digest}")


@cli.command()
@click.argument("image")
@click.option("-o", "--output", "out", default="-", metavar="FILE",
              help="Write to FILE (default: standard output).")
@click.pass_obj
def export(open_store, image, out):
    """Write the image's flattened root filesystem as one tar."""
    store = open_store()
    progress = _Progress("exporting", "entries")
    try:
        store.export(image, _output(out), progress=progress)
    finally:
        progress.done()


@cli.command()
@click.option("--repair", is_flag=True,
              help="Fix what can be fixed; list the images to re-import for the rest.")
@click.option("-v", "--verbose", is_flag=True,
              help="List each file that interrupted work left, not only how many.")
@click.option("--json", "as_json", is_flag=True,
              help="Print every problem, garbage included, as a JSON list.")
@click.pass_obj
def fsck(open_store, repair, verbose, as_json):
    """Check every object and the index; exit status 0 when the store is whole (garbage that
    interrupted work left aside: gc removes it), 1 when problems were found (even if --repair
    fixed them all)."""
    store = open_store()
    progress = _Progress("checking", "objects", enabled=not as_json)
    try:
        problems = store.fsck(repair=repair, progress=progress)
    finally:
        progress.done()
    status = 1 if any(not p.garbage for p in problems) else 0
    if as_json:
        click.echo(_problems_json(problems))
        return status
    garbage = [p for p in problems if p.garbage]
    for p in problems:
        if verbose or not p.garbage:
            mark = "fixed: " if p.fixed else ""
            click.echo(f"{mark}{p.kind} {p.subject}: {p.detail}")
    if garbage:
        n = len(garbage)
        files = f"{n} file{'s' if n != 1 else ''} left by interrupted work"
        if all(p.fixed for p in garbage):
            click.echo(f"fixed: {files}, removed")
        else:
            click.echo(f"{files}; `layerstore gc` removes {'them' if n != 1 else 'it'}")
    if repair and problems:
        fixed = sum(p.fixed for p in problems)
        left = [p for p in problems if not p.fixed]
        click.echo(f"repaired {fixed} of {len(problems)} problem(s)")
        reimport = sorted({i for p in left for i in p.images})
        for image_id in reimport:
            try:
                tags = " ".join(store.image(image_id).tags)
            except errors.ImageNotFound:
                tags = "(removed from the store)"
            click.echo(f"re-import: {image_id} {tags}".rstrip())
        if left and not reimport:
            click.echo(f"{len(left)} problem(s) need attention by hand")
    return status


@cli.command("rm")
@click.argument("images", metavar="IMAGE...", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True,
              help="Delete an image named by id even when it has several tags.")
@click.pass_obj
def rm(open_store, images, force):
    """Untag images, and delete those left without a tag (layers and objects go in gc)."""
    for action, what in open_store().remove(list(images), force=force):
        click.echo(f"{action.capitalize()}: {what}")


@cli.command()
@click.option("--dry-run", is_flag=True, help="Report what would be freed; change nothing.")
@click.option("--full", is_flag=True,
              help="Walk objects/ for files the index does not know even without a sign of "
                   "an interrupted import.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def gc(open_store, dry_run, full, as_json):
    """Free layers no image uses, objects no layer uses, and leftovers of interrupted work."""
    progress = _Progress("freeing", "files", enabled=not as_json)
    try:
        r = open_store().gc(dry_run=dry_run, full=full, progress=progress)
    finally:
        progress.done()
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(r), indent=2))
        return
    verb = "would free" if dry_run else "freed"
    click.echo(f"{verb} {r.layers} layers, {r.objects} objects ({_human_size(r.object_bytes)}), "
               f"{r.garbage_objects} unreferenced object files "
               f"({_human_size(r.garbage_bytes)}), {r.tmp_files} tmp files "
               f"({_human_size(r.tmp_bytes)}), {r.layer_dirs} layer dirs: "
               f"{r.files} files, {_human_size(r.bytes)}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.pass_obj
def du(open_store, as_json):
    """Disk use per image and for the store: logical, on disk (each inode once), shared."""
    r = open_store().du()
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(r), indent=2))
        return
    rows = [("IMAGE ID", "TAGS", "LOGICAL", "ON DISK", "SHARED", "UNIQUE")]
    for u in r.images:
        rows.append((u.id.split(":")[-1][:12], ",".join(u.tags) or "<none>",
                     _human_size(u.logical_bytes), _human_size(u.disk_bytes),
                     _human_size(u.shared_bytes), _human_size(u.unique_bytes)))
    _table(rows)
    click.echo(f"store: {_human_size(r.logical_bytes)} logical ({_human_size(r.layer_bytes)} "
               f"in distinct layers), {_human_size(r.disk_bytes)} on disk "
               f"({_human_size(r.object_bytes)} objects + {_human_size(r.index_bytes)} index), "
               f"dedup ratio {r.dedup_ratio:.2f}, {r.objects} objects, {r.inodes} inodes")

# ---- layerstore bench (layerstore/bench/): the storage-driver harness ------------------------
from .bench.cli import bench  # noqa: E402

cli.add_command(bench)


def _message(exc: Exception) -> str:
    """The error line's text: an OSError's own words, without Python's "[Errno N]" prefix."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc)


def run() -> NoReturn:
    """The command line as a process (the console script, python -m layerstore): main(), then
    exit at once.  Tearing the interpreter down frees every object and module one by one,
    30-70 ms after a pull; by then the store is closed and the output flushed, and
    layerstore leaves nothing to run at exit (mypy's hard_exit does the same)."""
    # A command makes objects by the hundred thousand that live until it is nearly done
    # (TOC and tar-split entries, records, tree nodes): collecting every 700 allocations
    # went over them again and again, 55-65 ms of a 0.9 s partial pull (10-25 ms now).
    # Only the command line's process: a program that embeds Store keeps its own.
    _gc.set_threshold(20_000, 100, 100)
    code = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:     # the reader left (`| head`): as SIGPIPE would end it
        code = code or 141
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    try:
        rv = cli.main(args=argv, prog_name="layerstore", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("layerstore: error: interrupted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("layerstore: error: interrupted", err=True)
        return 130
    except click.ClickException as exc:
        click.echo(f"layerstore: error: {exc.format_message()}", err=True)
        return exc.exit_code
    except (errors.LayerstoreError, OSError) as exc:
        if os.environ.get("LAYERSTORE_DEBUG") == "1":
            raise
        click.echo(f"layerstore: error: {_message(exc)}", err=True)
        return 1
    except Exception as exc:    # noqa: BLE001 - a bug: still one line, unless debugging
        if os.environ.get("LAYERSTORE_DEBUG") == "1":
            raise
        click.echo(f"layerstore: error: internal error: {type(exc).__name__}: {exc} "
                   "(LAYERSTORE_DEBUG=1 shows the traceback)", err=True)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
