"""The whole command line tried as a new user would, through `python -m layerstore` in a
subprocess: every verb in the order a first day takes them (import, look around, tag, read
files, check out, save and import again, export, a container, clean up), each followed by the
ways a newcomer gets it wrong (missing arguments, bad references, files that are not there).

Every step is a row of STEPS: the arguments, the exact exit status, and a pattern that
stderr (and, where given, stdout) must match; {name} in them is a value of the context (the
archive, the work directory, the image id once imported).  Whatever a step prints, no output may hold a
Python traceback or an "internal error".  A new verb or flag is one more row.

It runs on an image built here (tests/archives.py) and, when the corpus is present, again on
the corpus's smallest image."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

import archives as A
from helpers import CORPUS, overlay_available, python_env
from layerstore import Store

BUG = re.compile(r"Traceback \(most recent call last\)|internal error")


@dataclass
class Step:
    argv: str                   # split on spaces after {name} substitution from the context
    status: int = 0
    stderr: str | None = ""     # regex that stderr must match (search); "" means empty
    stdout: str | None = None   # regex that stdout must match, when given
    keep: dict = field(default_factory=dict)    # context name -> function of stdout
    root: bool = False          # needs root and overlayfs (the container verbs)


MISSING = r"^layerstore: error: Missing argument"
USAGE = r"^layerstore: error: (No such option|Got unexpected extra argument|Invalid value)"
NO_IMAGE = r"^layerstore: error: no such image: "
BAD_REF = r"^layerstore: error: invalid reference format"
SHORT = r"at least 12 hex digits"

STEPS = [
    # First contact.
    Step("--help", stdout=r"Usage: layerstore"),
    Step("--version", stdout=r"layerstore, version \d"),
    Step("frobnicate", 2, r"No such command 'frobnicate'"),
    Step("images", stdout=r"^REPOSITORY +TAG +IMAGE ID +CREATED +SIZE\n$"),
    # Import.
    Step("import {archive} --tag first:1", stdout=r"^sha256:[0-9a-f]{64} ",
         keep={"id": lambda out: out.split()[0]}),
    Step("import", 2, MISSING),
    Step("import {tmp}/no-such-image.tar", 1, r"No such file or directory"),
    Step("import {tmp}", 1, r"not an image archive"),
    Step("import {archive} --platform linux/nonsense", 2, r"Invalid value for '--platform'"),
    Step("import {archive} --platform windows/amd64", 1,
         r"for linux/amd64, not for the platform asked for, windows/amd64"),
    Step("import {archive} --tag Bad/Name", 1, BAD_REF),
    Step("import {archive} --frobnicate", 2, USAGE),
    # Look around.
    Step("images", stdout=r"docker\.io/library/first +1 "),
    Step("images -q", stdout=r"^[0-9a-f]{12}\n"),
    Step("images first", stdout=r"first"),
    Step("images --no-trunc --json", stdout=r'"id": "sha256:'),
    Step("images first:1 extra", 2, USAGE),
    Step("inspect first:1", stdout=r'^\[\n  \{\n    "Id": "sha256:'),
    Step("inspect {id} {id12}", stdout=r'"Id"'),
    Step("inspect", 2, MISSING),
    Step("inspect nothing:here", 1, NO_IMAGE, stdout=r"^\[\]\n$"),
    Step("inspect first:1 nothing:here", 1, NO_IMAGE, stdout=r'"Id"'),
    Step("inspect {id11}", 1, SHORT),
    Step("history first:1", stdout=r"^IMAGE +CREATED +CREATED BY +SIZE +COMMENT\n"),
    Step("history -H=false --no-trunc first:1", stdout=r"CREATED AT"),
    Step("history -q first:1", stdout=r"^[0-9a-f]{12}\n"),
    Step("history", 2, MISSING),
    Step("history Bad/Name", 1, BAD_REF),
    # Tags.
    Step("tag first:1 mine", stdout=r"^$"),
    Step("tag {id12} mine:2"),
    Step("images mine", stdout=r"mine +latest .*\n.*mine +2 "),
    Step("tag first:1", 2, MISSING),
    Step("tag nothing:here mine", 1, NO_IMAGE),
    Step("tag first:1 sha256:beef", 1, r"ambiguous tag"),
    Step("tag first:1 Bad/Name", 1, BAD_REF),
    # Read without a checkout.
    Step("ls first:1", stdout=r"(?m)^etc$"),
    Step("ls --json first:1 /etc", stdout=r'"type": "file"',
         keep={"file": lambda out: next(e["path"] for e in json.loads(out)
                                        if e["type"] == "file" and e["size"])}),
    Step("ls -l first:1 {file}", stdout=r"^-"),
    Step("cat first:1 {file}", stdout=r"."),
    Step("ls first:1 /no/such/path", 1, r"no such file or directory in the image"),
    Step("cat first:1", 2, MISSING),
    Step("cat first:1 /etc", 1, r"is a directory"),
    Step("diff first:1 mine", stdout=r"^$"),
    Step("diff first:1", 2, MISSING),
    Step("diff first:1 nothing:here", 1, NO_IMAGE),
    # Check out.
    Step("checkout first:1 {tmp}/rootfs", stdout=r"files"),
    Step("checkout first:1 {tmp}/rootfs", 1, r"not empty"),
    Step("checkout first:1", 2, MISSING),
    Step("checkout first:1 {tmp}/afile", 2, r"is a file"),
    Step("checkout first:1 {tmp}/afile/sub", 1,
         r"^layerstore: error: cannot make the checkout destination .*/afile/sub: Not a dir"),
    Step("checkout first:1 {tmp}/rootfs3 --link --copy", 2, r"exclude each other"),
    Step("checkout first:1 {tmp}/rootfs3 --link", stdout=r"hardlinked"),
    Step("checkout {id11} {tmp}/rootfs2", 1, SHORT),
    # Save, and import again.
    Step("save first:1 -o {tmp}/saved.tar"),
    Step("import {tmp}/saved.tar", stdout=r"^{id} .*docker\.io/library/first:1"),
    Step("save first:1 mine:2 --format oci --compress zstd -o {tmp}/saved.oci.tar.zst"),
    Step("import {tmp}/saved.oci.tar.zst", stdout=r"^{id} "),
    Step("save -o {tmp}/x.tar", 2, MISSING),
    Step("save first:1 -o {tmp}/no-such-dir/x.tar", 1,
         r"^layerstore: error: cannot write {tmp}/no-such-dir/x.tar: No such file or directory"),
    Step("save first:1 -o {tmp}", 1, r"cannot write {tmp}: Is a directory"),
    Step("save first:1 --format zip -o {tmp}/x.tar", 2, r"Invalid value for '--format'"),
    Step("save nothing:here -o {tmp}/x.tar", 1, NO_IMAGE),
    # Export.
    Step("export first:1 -o {tmp}/rootfs.tar"),
    Step("export first:1 -o {tmp}/no-such-dir/rootfs.tar", 1,
         r"cannot write {tmp}/no-such-dir/rootfs.tar: No such file or directory"),
    Step("export", 2, MISSING),
    # A container (root: overlayfs).
    Step("ps", stdout=r"^CONTAINER ID +IMAGE +MOUNTPOINT +UPPER DIR +CREATED +NAMES\n$"),
    Step("mount first:1 {tmp}/mnt", stdout=r"^[0-9a-f]{32} {tmp}/mnt\n$", root=True),
    Step("ps", stdout=r"\n[0-9a-f]{12} +\S+ +{tmp}/mnt +\S+/upper ", root=True),
    Step("ps -q --no-trunc", stdout=r"^[0-9a-f]{32}\n$", root=True),
    Step("mount first:1 {tmp}/mnt", 1, r"already a mount point", root=True),
    Step("commit {tmp}/mnt --tag mine:3", stdout=r"^sha256:[0-9a-f]{64} docker\.io/library/mine:3",
         root=True),
    Step("history mine:3", stdout=r"\n[0-9a-f]{12} .* layerstore commit ", root=True),
    Step("umount {tmp}/mnt", root=True),
    Step("ps -q", stdout=r"^$"),
    Step("mount first:1 {tmp}/afile", 2, r"is a file"),
    Step("mount first:1 {tmp}/afile/sub", 1, r"cannot make the mount point .*: Not a dir",
         root=True),
    Step("mount first:1 {tmp}/mnt3 --upper {tmp}/afile/up", 1,
         r"cannot make the upper dir .*/afile/up: Not a directory", root=True),
    Step("mount nothing:here {tmp}/mnt2", 1, NO_IMAGE),
    Step("umount {tmp}", 1, r"is not a layerstore mount"),
    Step("commit {tmp} --tag x:1", 1, r"neither a layerstore mount nor the upper dir"),
    Step("ps extra", 2, USAGE),
    # Clean up.
    Step("rm mine", stdout=r"^Untagged: docker\.io/library/mine:latest\n$"),
    Step("rm", 2, MISSING),
    Step("rm nothing:here", 1, NO_IMAGE),
    Step("rm {id11}", 1, SHORT),
    Step("du", stdout=r"dedup ratio"),
    Step("du --json", stdout=r'"objects"'),
    Step("gc --dry-run", stdout=r"^would free"),
    Step("gc", stdout=r"^freed"),
    Step("fsck"),
    Step("fsck --json", stdout=r"^\[\]\n$"),
    Step("fsck --verbose"),
    Step("fsck --repair"),
    Step("gc --frobnicate", 2, USAGE),
    Step("fsck extra", 2, USAGE),
    Step("du extra", 2, USAGE),
    Step("rm mine:3", stdout=r"Deleted: sha256:", root=True),
    Step("rm -f {id}", stdout=r"Deleted: {id}"),
    Step("gc", stdout=r"^freed [1-9]"),
    Step("images -q", stdout=r"^$"),
    Step("fsck"),
]


def _built_archive(tmp_path) -> str:
    base = A.layer(("d", "etc"), ("f", "etc/os-release", b"NAME=e2e\n"),
                   ("f", "etc/hostname", b"e2e\n"), ("f", "bin/sh", b"\x7fELF" * 300, 0o755),
                   ("l", "bin/bash", "sh"))
    top = A.layer(("f", "app/main.py", b"print('hi')\n"), ("wh", "etc/hostname"))
    path = tmp_path / "built.tar"
    path.write_bytes(A.docker_archive([([base, top], ["e2e:1"])]))
    return str(path)


def _corpus_archive() -> str:
    """The corpus's smallest image archive (found by size, not by name)."""
    archives = sorted(CORPUS.glob("*.tar.zst"), key=lambda p: p.stat().st_size) \
        if CORPUS.is_dir() else []
    if not archives:
        pytest.skip(f"no image corpus at {CORPUS}")
    return str(archives[0])


def _fill(text: str, ctx: dict, quote=lambda v: v) -> str:
    """{name} replaced by ctx[name] (quoted for a regex); other braces ({12}) left alone."""
    return re.sub(r"\{(\w+)\}", lambda m: quote(ctx[m[1]]) if m[1] in ctx else m[0], text)


def _run(root, argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "layerstore", "--root", str(root), *argv],
                          capture_output=True, text=True, env=python_env(), timeout=600)


@pytest.mark.parametrize("source", ["built", "corpus"])
def test_a_first_day_with_every_verb(source, tmp_path):
    archive = _built_archive(tmp_path) if source == "built" else _corpus_archive()
    work = tmp_path / "work"
    work.mkdir()
    (work / "afile").write_text("not a directory\n")
    ctx = {"archive": archive, "tmp": str(work)}
    root_ok = overlay_available()
    try:
        ran = _walk(tmp_path / "store", ctx, root_ok)
    finally:
        with Store(tmp_path / "store") as store:     # a failed step leaves no mount behind
            for m in store.containers():
                store.umount(m.mountpoint)
    assert ran == len([s for s in STEPS if root_ok or not s.root])


def _walk(root, ctx: dict, root_ok: bool) -> int:
    ran = 0
    for step in STEPS:
        if step.root and not root_ok:
            continue
        _check(step, root, ctx)
        ran += 1
    return ran


def _check(step: Step, root, ctx: dict) -> None:
    argv = [_fill(a, ctx) for a in step.argv.split(" ")]
    proc = _run(root, argv)
    where = f"layerstore {' '.join(argv)}\nstdout: {proc.stdout[-2000:]}\n" \
            f"stderr: {proc.stderr[-2000:]}"
    assert not BUG.search(proc.stdout) and not BUG.search(proc.stderr), where
    assert proc.returncode == step.status, where
    if step.stderr == "":
        assert proc.stderr == "", where
    elif step.stderr is not None:
        assert re.search(_fill(step.stderr, ctx, re.escape), proc.stderr), where
    if step.status != 0:
        assert proc.stderr.startswith("layerstore: error: "), where
        assert proc.stderr.count("\n") == 1, where
    if step.stdout is not None:
        assert re.search(_fill(step.stdout, ctx, re.escape), proc.stdout), where
    for name, value in step.keep.items():
        ctx[name] = value(proc.stdout)
    if "id" in ctx:
        ctx["id12"], ctx["id11"] = ctx["id"][7:19], ctx["id"][7:18]
