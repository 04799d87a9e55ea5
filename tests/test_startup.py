"""What a command loads before it does its work: --help loads none of the store, and each
command none of the machinery it does not use (the import pipeline, the registry client, tar,
compression and TLS libraries, the C core), so the command line starts quickly.  Which modules
a child Python loads is what these check, never how long it takes (`python -X importtime -m
layerstore ...` shows that)."""

import subprocess
import sys

import pytest

import archives as A
from helpers import python_env
from layerstore import Store

# What --help needs none of: the store, its C core and index, the formats, the registry.
STORE = ("layerstore._store", "layerstore._model", "layerstore._native", "layerstore.store",
         "layerstore.formats", "layerstore.registry", "_cffi_backend", "lmdb", "zstandard",
         "isal", "tarfile", "urllib3", "ssl", "subprocess")
# What only imports and pulls need.
IMPORTING = ("layerstore.store.pipeline", "layerstore.formats.archive",
             "layerstore.formats.source", "layerstore.registry", "tarfile", "isal", "urllib3",
             "ssl")
# What a pull never needs: other commands' machinery, and credential helpers when none is
# configured.
NOT_PULL = ("layerstore.formats.push", "layerstore.formats.export", "layerstore.runtimes",
            "layerstore.store.fsck", "layerstore.bench.harness", "subprocess")


def loaded(code: str, *names: str) -> list[str]:
    """Those of names (modules, or packages with everything under them) that a child Python
    loads running code, beyond what it had loaded when it started (a site hook may load
    some first)."""
    child = ("import sys\nstart = set(sys.modules)\n" + code + "\n"
             "sys.stderr.write('\\n'.join(sorted(set(sys.modules) - start)))")
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                          env=python_env())
    assert proc.returncode == 0, proc.stderr
    return [m for m in proc.stderr.splitlines()
            if any(m == n or m.startswith(n + ".") for n in names)]


def cli(*args: str) -> str:
    return f"from layerstore.cli import main\nassert main({list(args)!r}) == 0"


@pytest.mark.parametrize("args", [["--help"], ["pull", "--help"], ["import", "--help"],
                                  ["checkout", "--help"], ["images", "--help"]])
def test_help_loads_no_store(args):
    assert loaded(cli(*args), *STORE) == []


def test_importing_the_package_loads_the_store_when_asked_for_it():
    assert loaded("import layerstore", *STORE) == []
    got = loaded("from layerstore import Store, Image", "layerstore._store", "layerstore._model")
    assert got == ["layerstore._model", "layerstore._store"]


def test_images_and_checkout_load_no_import_pipeline(tmp_path):
    layer = A.layer(("f", "etc/os-release", b"NAME=test\n"))
    (tmp_path / "a.tar").write_bytes(A.docker_archive([([layer], ["app:1"])]))
    with Store(tmp_path / "s") as store:
        store.import_archive(tmp_path / "a.tar")
    root = str(tmp_path / "s")
    assert loaded(cli("--root", root, "images"), "layerstore._store", *IMPORTING) == \
        ["layerstore._store"]
    assert loaded(cli("--root", root, "checkout", "app:1", str(tmp_path / "out")),
                  "layerstore.store.checkout", *IMPORTING) == ["layerstore.store.checkout"]
    assert (tmp_path / "out" / "etc" / "os-release").read_bytes() == b"NAME=test\n"


def test_pull_loads_no_other_commands_machinery(open_registry, seed, tmp_path):
    got = loaded(cli("--root", str(tmp_path / "s"), "pull", "-q",
                     f"{open_registry.host}/seed/app:v2s2"),
                 "layerstore.store.pipeline", "layerstore.registry.client", *NOT_PULL)
    assert got == ["layerstore.registry.client", "layerstore.store.pipeline"]
