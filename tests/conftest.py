import base64
import json
import os
import shutil
import subprocess

import pytest
from hypothesis import settings

from helpers import CORPUS, go_tool, oracle_env

# The registry tests' servers (docker-registry, token server, CDN, fault proxy) and their
# fixtures; session-scoped and started only by a test that asks for one.
pytest_plugins = ["registry_servers"]

# CI runs the native tests a second time under AddressSanitizer, which is slow: fewer examples.
settings.register_profile("sanitize", max_examples=25, deadline=None)
settings.register_profile("default", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_addoption(parser):
    parser.addoption("--sanitized", action="store_true",
                     help="require the C core built with ASan+UBSan (LAYERSTORE_SANITIZE=1)")


def pytest_configure(config):
    if config.getoption("--sanitized"):
        from layerstore import _native
        if not _native.built_with_sanitizers():
            raise pytest.UsageError("--sanitized, but the imported C core is a plain build: "
                                    f"{_native.__file__}")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--sanitized"):
        skip = pytest.mark.skip(reason="measures memory or time: meaningless under ASan")
        for item in items:
            if "no_sanitizer" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_store(tmp_path, monkeypatch):
    """No test touches the user's store: every default location points into tmp_path."""
    monkeypatch.setenv("LAYERSTORE_ROOT", str(tmp_path / "store"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


@pytest.fixture(scope="session")
def corpus_dir():
    if not CORPUS.is_dir():
        pytest.skip(f"no image corpus at {CORPUS}")
    return CORPUS


class CorpusImage:
    """One image of the corpus: its config and its layers as uncompressed tar files on disk."""

    def __init__(self, archive, config, config_digest, diff_ids, layers):
        self.archive, self.config, self.diff_ids, self.layers = archive, config, diff_ids, layers
        self.config_digest = config_digest      # the image ID


@pytest.fixture(scope="session")
def corpus_images(corpus_dir, tmp_path_factory):
    """Every docker-archive in the corpus, unpacked once per session (found by what it holds:
    manifest.json names the config and the layer tars)."""
    import hashlib
    import json
    import tarfile

    import zstandard

    images = []
    for archive in sorted(corpus_dir.glob("*.tar.zst")):
        dest = tmp_path_factory.mktemp(archive.name.split(".")[0])
        with open(archive, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as zr:
            with tarfile.open(fileobj=zr, mode="r|") as tf:
                for m in tf:
                    if m.isfile() and "/" not in m.name:
                        with open(dest / m.name, "wb") as out:
                            shutil.copyfileobj(tf.extractfile(m), out, 1 << 20)
        (manifest,) = json.loads((dest / "manifest.json").read_text())
        config_bytes = (dest / manifest["Config"]).read_bytes()
        config = json.loads(config_bytes)
        layers = [dest / name for name in manifest["Layers"]]
        digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
        images.append(CorpusImage(archive, config, digest, config["rootfs"]["diff_ids"], layers))
    return images


@pytest.fixture(scope="session")
def gotar(tmp_path_factory):
    """Go's archive/tar as a command: tests/tools/gotar built once per session."""
    out = go_tool("gotar", tmp_path_factory)

    def read(data: bytes) -> dict:
        proc = subprocess.run([str(out)], input=data, capture_output=True, check=True,
                              env=oracle_env())
        listed = json.loads(proc.stdout)
        for h in listed["headers"]:     # names and records come as bytes (base64)
            h["name"] = os.fsdecode(base64.b64decode(h["name"]))
            h["linkname"] = os.fsdecode(base64.b64decode(h["linkname"]))
            h["pax"] = {base64.b64decode(k): base64.b64decode(v) for k, v in h["pax"]}
        return listed
    return read
