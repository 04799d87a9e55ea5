"""A hypothesis state machine over import, rm, gc, fsck and checkout (issue 5).  After every
step fsck finds nothing and every remaining image checks out exactly as a model says it should:
the model applies the image's layers with their whiteouts independently of layerstore/_tree.py.
Images are drawn from a pool of layers that share files and from generated layers whose files
share content, so rm and gc keep meeting layers and objects that other images still hold."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile

from hypothesis import settings, strategies as st
from hypothesis.stateful import (Bundle, RuleBasedStateMachine, consumes, invariant,
                                 precondition, rule)

import archives as A
from helpers import context
from layerstore import Store, errors

# (kind, path, ...) as archives.layer() takes them.  Whiteouts and opaque markers only hide
# what lower layers made, never entries of their own layer (the model relies on that).
POOL = [
    [("d", "etc"), ("f", "etc/a", b"alpha\n"), ("f", "etc/b", b"beta\n"),
     ("f", "bin/x", b"\x7fELF" * 100, 0o755), ("l", "bin/y", "x"), ("f", "etc/empty", b"")],
    [("wh", "etc/b"), ("f", "etc/a", b"alpha 2\n"), ("f", "usr/share/c", b"c" * 3000),
     ("h", "usr/share/c2", "usr/share/c")],
    [("opq", "etc"), ("f", "etc/new", b"alpha\n"), ("d", "var", 0o700)],
    [("wh", "bin"), ("f", "usr/share/c", b"c" * 3000), ("f", "data", b"x" * 5000, 0o600)],
    [("d", "etc", 0o750), ("f", "etc/a", b"beta\n"), ("l", "etc/link", "/etc/a")],
]
CONTENTS = [b"", b"alpha\n", b"beta\n", b"shared " * 50, b"c" * 3000]

generated_layer = st.lists(
    st.tuples(st.sampled_from(["g/f1", "g/f2", "g/sub/f3", "etc/a", "data"]),
              st.sampled_from(CONTENTS), st.sampled_from([0o644, 0o755, 0o600])),
    min_size=1, max_size=4, unique_by=lambda t: t[0],
).map(lambda files: [("f", p, c, m) for p, c, m in files])

image_spec = st.lists(st.one_of(st.sampled_from(range(len(POOL))).map(lambda i: POOL[i]),
                                generated_layer), min_size=1, max_size=4)


# ---- the model: layers applied with whiteouts, independently of layerstore ----------------

def _parents(tree: dict, path: str) -> None:
    parts = path.split("/")[:-1]
    for i in range(len(parts)):
        p = "/".join(parts[:i + 1])
        if p not in tree or tree[p][0] != "d":
            _delete(tree, p)
            tree[p] = ("d", 0o755)


def _delete(tree: dict, path: str) -> None:
    for p in [p for p in tree if p == path or p.startswith(path + "/")]:
        del tree[p]


def expected(layers: list[list[tuple]]) -> dict:
    """{path: ("d", mode) | ("f", mode, sha256) | ("l", target)} of the merged image."""
    tree: dict[str, tuple] = {}
    for items in layers:
        for item in items:      # hiding applies to lower layers: all of it first
            if item[0] == "wh":
                _delete(tree, item[1])
                _parents(tree, item[1])     # the marker's own directory exists from here on
            elif item[0] == "opq":
                for p in [p for p in tree if p.startswith(item[1] + "/")]:
                    del tree[p]
                _parents(tree, item[1] + "/.wh..wh..opq")
        for item in items:
            kind, path = item[0], item[1]
            if kind in ("wh", "opq"):
                continue
            _parents(tree, path)
            if kind == "d":
                mode = item[2] if len(item) > 2 else 0o755
                if path in tree and tree[path][0] != "d":
                    _delete(tree, path)
                tree[path] = ("d", mode)
                continue
            _delete(tree, path)
            if kind == "f":
                mode = item[3] if len(item) > 3 else 0o644
                tree[path] = ("f", mode, hashlib.sha256(item[2]).hexdigest())
            elif kind == "l":
                tree[path] = ("l", item[2])
            elif kind == "h":
                tree[path] = tree[item[2]]
    return tree


def actual(dest: str) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(dest):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st_ = os.lstat(p)
            rel = os.path.relpath(p, dest)
            if stat.S_ISDIR(st_.st_mode):
                out[rel] = ("d", stat.S_IMODE(st_.st_mode))
            elif stat.S_ISLNK(st_.st_mode):
                out[rel] = ("l", os.readlink(p))
            else:
                with open(p, "rb") as f:
                    out[rel] = ("f", stat.S_IMODE(st_.st_mode),
                                hashlib.sha256(f.read()).hexdigest())
    return out


def archive(layers: list[bytes], tag: str, form: str, where: str) -> str:
    if form == "docker":
        path = os.path.join(where, f"{tag.replace(':', '-')}.tar")
        with open(path, "wb") as f:
            f.write(A.docker_archive([(layers, [tag])]))
    elif form == "oci-dir":
        path = os.path.join(where, f"{tag.replace(':', '-')}-oci")
        A.write_dir(A.oci_layout(layers, [f"docker.io/library/{tag}"]), path)
    else:
        path = os.path.join(where, f"{tag.replace(':', '-')}.oci.tar.gz")
        blobs, desc = A.oci_blobs(layers, [f"docker.io/library/{tag}"], compress="zstd")
        with open(path, "wb") as f:
            f.write(A.compress(A.tar_of(A.oci_layout_files([desc], blobs)), "gzip"))
    return path


class StoreMachine(RuleBasedStateMachine):
    images = Bundle("images")

    def __init__(self) -> None:
        super().__init__()
        self.top = tempfile.mkdtemp(prefix="layerstore-sm-")
        self.store = Store(os.path.join(self.top, "store"))
        self.model: dict[str, dict] = {}        # image id -> expected tree
        self.tags: dict[str, set[str]] = {}     # image id -> tags (normalized)
        self.n = 0

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.top)

    def _dest(self) -> str:
        self.n += 1
        return os.path.join(self.top, f"dest{self.n}")

    @rule(target=images, spec=image_spec, form=st.sampled_from(["docker", "oci-dir", "oci-gz"]))
    def import_image(self, spec, form):
        self.n += 1
        tag = f"sm{self.n}:1"
        layers = [A.layer(*items) for items in spec]
        (img,) = self.store.import_archive(archive(layers, tag, form, self.top))
        self.model[img.id] = expected(spec)
        self.tags.setdefault(img.id, set()).add(f"docker.io/library/{tag}")
        assert set(img.tags) == self.tags[img.id]
        return img.id

    @rule(image=consumes(images))
    def rm_by_id(self, image):
        if image not in self.model:
            return      # already gone through another copy of the id in the bundle
        self.store.remove([image], force=True)
        del self.model[image], self.tags[image]

    @precondition(lambda self: any(self.tags.values()))
    @rule(data=st.data())
    def rm_tag(self, data):
        tag = data.draw(st.sampled_from(sorted(t for ts in self.tags.values() for t in ts)))
        image = next(i for i, ts in self.tags.items() if tag in ts)
        self.store.remove([tag])
        self.tags[image].discard(tag)
        if not self.tags[image]:
            del self.model[image], self.tags[image]

    @rule(full=st.booleans())
    def gc(self, full):
        self.store.gc(full=full)
        with context(self.store).index.read() as txn:
            assert not context(self.store).index.unreferenced_layers(txn)

    @rule()
    def fsck(self):
        assert self.store.fsck() == []

    @rule(image=images, how=st.sampled_from([{"link": True}, {}, {"copy": True}]))
    def checkout(self, image, how):
        if image not in self.model:
            try:
                self.store.checkout(image, self._dest())
            except errors.ImageNotFound:
                return
            raise AssertionError(f"{image} was removed but still checks out")
        dest = self._dest()
        self.store.checkout(image, dest, **how)
        assert actual(dest) == self.model[image]
        shutil.rmtree(dest)

    @invariant()
    def whole(self):
        assert self.store.fsck() == []
        assert {i.id for i in self.store.images()} == set(self.model)
        for image, tree in self.model.items():
            assert set(self.store.image(image).tags) == self.tags[image]
            dest = self._dest()
            self.store.checkout(image, dest)
            got = actual(dest)
            shutil.rmtree(dest)
            assert got == tree, (sorted(set(got.items()) ^ set(tree.items())))


TestStoreMachine = StoreMachine.TestCase
# Small enough for CI (and for the ASan run's "sanitize" profile, which only lowers
# max_examples further); the conftest profile's deadline=None still applies.
TestStoreMachine.settings = settings(
    settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "default")),
    max_examples=min(20, settings.default.max_examples), stateful_step_count=16)


def test_model_agrees_on_a_known_image(tmp_path):
    """The model itself, on a hand-checked stack (a wrong model would pass vacuously only if
    layerstore shared its mistake)."""
    tree = expected(POOL[:3])
    assert tree["etc/new"][0] == "f" and "etc/a" not in tree and "etc/b" not in tree
    assert tree["usr/share/c2"] == tree["usr/share/c"]
    assert tree["bin/y"] == ("l", "x") and tree["var"] == ("d", 0o700)
