"""The real images of ../shared/corpus through the Store: every form imports to the same image,
checkouts equal umoci's unpack, shared layers are stored once, and an image whose files mostly
equal another's adds only the bytes of the files that differ."""

import hashlib
import json
import os
import shutil
import subprocess
import tarfile

import pytest

import archives as A
from helpers import differences, groups_within, snapshot
from layerstore import Store


def _name(image) -> str:
    return image.archive.name.split(".")[0]


def _require(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"needs {tool} on PATH (apt-get install {tool})")


def _run(*argv) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture(scope="session")
def plain_archives(corpus_images, tmp_path_factory):
    """Each corpus archive decompressed: a seekable docker-archive tar."""
    import zstandard

    out = {}
    root = tmp_path_factory.mktemp("plain")
    for image in corpus_images:
        dest = root / f"{_name(image)}.docker.tar"
        with open(image.archive, "rb") as f, open(dest, "wb") as o:
            zstandard.ZstdDecompressor().copy_stream(f, o)
        out[_name(image)] = dest
    return out


@pytest.fixture(scope="session")
def oci_layouts(plain_archives, tmp_path_factory):
    """Each image copied by skopeo into an OCI layout directory with gzip layers (and umoci's
    unpack of it, the reference for checkouts)."""
    _require("skopeo")
    root = tmp_path_factory.mktemp("oci")
    out = {}
    for name, tar in plain_archives.items():
        layout = root / name
        _run("skopeo", "copy", "-q", "--dest-compress", f"docker-archive:{tar}",
             f"oci:{layout}:latest")
        out[name] = layout
    return out


def _form(kind, name, corpus_images, plain_archives, oci_layouts, tmp_path):
    """The image in one of the forms users bring it in; returns what import_archive takes."""
    image = next(i for i in corpus_images if _name(i) == name)
    if kind == "docker.tar.zst":
        return image.archive
    if kind == "docker.tar":
        return plain_archives[name]
    if kind == "docker.tar.gz":     # docker save | gzip
        dest = tmp_path / f"{name}.docker.tar.gz"
        dest.write_bytes(A.compress(plain_archives[name].read_bytes(), "gzip"))
        return dest
    if kind == "oci-dir-gzip":
        return oci_layouts[name]
    if kind == "oci-tar-zstd":
        _require("skopeo")
        dest = tmp_path / f"{name}.oci.tar"
        _run("skopeo", "copy", "-q", "--dest-compress", "--dest-compress-format", "zstd",
             f"oci:{oci_layouts[name]}:latest", f"oci-archive:{dest}:latest")
        return dest
    raise AssertionError(kind)


FORMS = ["docker.tar.zst", "docker.tar", "docker.tar.gz", "oci-dir-gzip", "oci-tar-zstd"]


def _config_digest(kind, source, image) -> str:
    """The image ID the form should import as: the docker-archive's config digest, or the one
    the OCI manifest names (skopeo rewrites the config into OCI's form)."""
    if kind.startswith("docker"):
        return image.config_digest
    transport = "oci" if kind.startswith("oci-dir") else "oci-archive"
    raw = subprocess.run(["skopeo", "inspect", "--raw", f"{transport}:{source}:latest"],
                         check=True, capture_output=True).stdout
    return json.loads(raw)["config"]["digest"]


def _entries(store, image_id):
    return [(e.path, e.type, e.mode, e.uid, e.gid, e.size, e.link, e.object_id)
            for e in store.image_entries(image_id)]


@pytest.mark.parametrize("kind", FORMS)
def test_every_form_imports_the_same_image(kind, corpus_images, corpus_store, plain_archives,
                                           oci_layouts, tmp_path):
    reference_root, added = corpus_store
    for image in corpus_images:
        name = _name(image)
        source = _form(kind, name, corpus_images, plain_archives, oci_layouts, tmp_path)
        with Store(tmp_path / f"store-{name}") as store:
            (got,) = store.import_archive(source)
            assert got.id == _config_digest(kind, source, image)
            assert got.diff_ids == tuple(image.diff_ids)
            if kind.startswith("docker"):     # OCI's bare ref.name "latest" names no repo
                assert len(got.tags) == 1 and got.tags[0].endswith(":latest")
            with Store(reference_root) as ref:
                want = _entries(ref, added[name][0].id)
            assert _entries(store, got.id) == want
        shutil.rmtree(tmp_path / f"store-{name}")
        if kind == "oci-tar-zstd" or kind == "docker.tar.gz":
            os.unlink(source)


@pytest.fixture(scope="session")
def corpus_store(corpus_images, tmp_path_factory):
    """base, then python, then rebuilt, imported in that order into one store; records what
    each import added."""
    root = tmp_path_factory.mktemp("corpus-store") / "store"
    order = sorted(corpus_images, key=lambda i: ["base", "python", "rebuilt"].index(_name(i)))
    added = {}
    with Store(root) as store:
        for image in order:
            before = _object_files(root)
            (got,) = store.import_archive(image.archive)
            after = _object_files(root)
            added[_name(image)] = (got, {k: after[k] for k in after.keys() - before.keys()})
    return root, added


def _object_files(root) -> dict[str, int]:
    """{object path: bytes it occupies on disk (st_blocks)}."""
    out = {}
    for dirpath, _, names in os.walk(os.path.join(root, "objects")):
        for n in names:
            p = os.path.join(dirpath, n)
            out[p] = os.lstat(p).st_blocks * 512
    return out


def test_shared_layers_are_stored_once(corpus_store, corpus_images):
    root, added = corpus_store
    base_img, _ = added["base"]
    python_img, new_files = added["python"]
    shared = set(base_img.diff_ids) & set(python_img.diff_ids)
    assert shared, "python is built on base's layer"
    with Store(root) as store:
        own = [store.layer(d) for d in python_img.diff_ids if d not in shared]
        # Only python's own layers wrote objects; base's layer was not ingested again.
        assert len(new_files) == sum(layer.new_objects for layer in own)
        for d in shared:
            assert store.layer(d).refs == 2
        assert len(store.layers()) == len(set(base_img.diff_ids) | set(python_img.diff_ids)
                                           | set(added["rebuilt"][0].diff_ids))


def _objects_of(layer_paths) -> dict[tuple, int]:
    """The objects a set of layer tars needs, by an independent oracle: (sha256 of content,
    permission bits, uid, gid) -> size, for non-empty regular files."""
    out = {}
    for path in layer_paths:
        with tarfile.open(path, "r:") as tf:
            for m in tf:
                if m.isreg() and m.size > 0:
                    digest = hashlib.sha256(tf.extractfile(m).read()).hexdigest()
                    out[(digest, m.mode & 0o7777, m.uid, m.gid)] = m.size
    return out


def test_rebuilt_adds_only_the_files_that_differ(corpus_store, corpus_images):
    root, added = corpus_store
    by_name = {_name(i): i for i in corpus_images}
    present = _objects_of(by_name["base"].layers + by_name["python"].layers)
    rebuilt = _objects_of(by_name["rebuilt"].layers)
    differing = {k: v for k, v in rebuilt.items() if k not in present}
    want_bytes = sum(differing.values())
    total = sum(rebuilt.values())
    assert want_bytes < total * 0.05, "the corpus's rebuilt image should mostly equal python"

    image, new_files = added["rebuilt"]
    with Store(root) as store:
        layers = [store.layer(d) for d in image.diff_ids]
    # The store's own accounting: exactly the differing files, each once.
    assert sum(layer.new_objects for layer in layers) == len(differing) == len(new_files)
    assert sum(layer.new_bytes for layer in layers) == want_bytes
    # And the disk: the new object files occupy their bytes rounded up to blocks, nothing more.
    on_disk = sum(new_files.values())
    assert want_bytes <= on_disk <= want_bytes + 4096 * len(new_files)


@pytest.fixture(scope="session")
def umoci_unpacked(oci_layouts, tmp_path_factory):
    _require("umoci")
    root = tmp_path_factory.mktemp("umoci")
    out = {}
    for name, layout in oci_layouts.items():
        bundle = root / name
        argv = ["umoci", "unpack", "--image", f"{layout}:latest", str(bundle)]
        if os.geteuid() != 0:
            argv.insert(2, "--rootless")
        _run(*argv)
        out[name] = bundle / "rootfs"
    return out


@pytest.mark.parametrize("how", [{"link": True}, {}, {"copy": True}],
                         ids=["hardlink", "default", "copy"])
def test_checkout_equals_umoci_unpack(how, corpus_store, umoci_unpacked, tmp_path):
    root, added = corpus_store
    owners = os.geteuid() == 0
    with Store(root) as store:
        for name, (image, _) in added.items():
            dest = tmp_path / name
            store.checkout(image.id, dest, **how)
            # Files of their own get the recorded mtimes, as umoci's; hardlinks show the
            # objects'.
            mtimes = not how.get("link")
            ours, our_groups = snapshot(str(dest), owners=owners, mtimes=mtimes)
            theirs, their_groups = snapshot(str(umoci_unpacked[name]), owners=owners,
                                            mtimes=mtimes)
            assert differences(ours, theirs) == [], name
            # Hardlinks of the image are hardlinks here too (we may share more: equal files
            # are one object).
            assert groups_within(their_groups, our_groups), name
            shutil.rmtree(dest)
