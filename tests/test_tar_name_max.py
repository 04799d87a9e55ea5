"""No image that cannot be used (issue 10, item 3): a path component over 255 bytes (Linux's
NAME_MAX) is valid tar but no Linux filesystem can make it, so it is refused at import, naming
the entry, instead of importing and then failing every checkout.  This holds for entry paths
and hardlink targets; a symlink target is only a string, and a whiteout ".wh.NAME" deletes
NAME, so only NAME counts."""

import subprocess
import sys

import pytest

import archives as A
from helpers import python_env
from layerstore import Store, errors

OK = "n" * 255
LONG = "n" * 256


def image(tmp_path, *layers):
    path = tmp_path / "image.tar"
    path.write_bytes(A.docker_archive([(list(layers), ["names:1"])]))
    return path


def test_a_256_byte_name_is_refused_at_import_and_nothing_committed(tmp_path):
    source = image(tmp_path, A.layer(("d", "d"), ("f", f"d/{LONG}", b"x")))
    with Store(tmp_path / "store") as store:
        with pytest.raises(errors.UnsupportedFormat) as info:
            store.import_archive(source)
        assert f"path 'd/{LONG}' has a name of 256 bytes" in str(info.value)
        assert "NAME_MAX" in str(info.value)
        assert store.images() == [] and store.layers() == []
        assert store.fsck() == []


def test_a_255_byte_name_imports_and_checks_out(tmp_path):
    source = image(tmp_path, A.layer(("d", "d"), ("f", f"d/{OK}", b"x")))
    with Store(tmp_path / "store") as store:
        (img,) = store.import_archive(source)
        store.checkout(img.id, tmp_path / "out")
    assert (tmp_path / "out" / "d" / OK).read_bytes() == b"x"


def test_a_hardlink_target_over_255_bytes_is_refused(tmp_path):
    source = image(tmp_path, A.layer(("f", "f", b"x"), ("h", "h", f"d/{LONG}")))
    with Store(tmp_path / "store") as store:
        with pytest.raises(errors.UnsupportedFormat, match=f"hardlink target 'd/{LONG}'"):
            store.import_archive(source)
        assert store.images() == [] and store.layers() == []


def test_long_symlink_targets_and_whiteouts_of_255_byte_names_are_fine(tmp_path):
    lower = A.layer(("f", OK, b"gone"), ("f", "keep", b"kept"))
    upper = A.layer(("wh", OK), ("l", "link", f"{LONG}/{LONG}"))
    source = image(tmp_path, lower, upper)
    with Store(tmp_path / "store") as store:
        (img,) = store.import_archive(source)
        store.checkout(img.id, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["keep", "link"]
    assert (tmp_path / "out" / "link").readlink().as_posix() == f"{LONG}/{LONG}"


def test_cli_says_which_entry_in_one_line(tmp_path):
    source = image(tmp_path, A.layer(("f", f"a/{LONG}", b"x")))
    proc = subprocess.run([sys.executable, "-m", "layerstore", "--root", str(tmp_path / "s"),
                           "import", str(source)], capture_output=True, env=python_env())
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert err.startswith("layerstore: error: ") and err.count("\n") == 1, err
    assert f"'a/{LONG}' has a name of 256 bytes" in err and "Traceback" not in err
    images = subprocess.run([sys.executable, "-m", "layerstore", "--root", str(tmp_path / "s"),
                             "images", "--json"], capture_output=True, env=python_env())
    assert images.returncode == 0 and images.stdout.strip() == b"[]"
