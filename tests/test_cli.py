"""The command line as users and scripts see it: output formats, exit statuses, and errors as
one line on stderr without a traceback."""

import errno
import io
import json
import os
import signal
import subprocess
import sys
import tarfile

import pytest

import archives as A
from helpers import one_line_error, python_env, run
from layerstore import Store, errors

L1 = A.layer(("d", "etc"), ("f", "etc/os-release", b"NAME=test\n"), ("f", "bin/sh", b"\x7fELF" * 300, 0o755),
             ("l", "bin/bash", "sh"))
L2 = A.layer(("f", "app/main.py", b"print('hi')\n"), ("wh", "etc/os-release"))


@pytest.fixture
def archive(tmp_path):
    path = tmp_path / "app.tar"
    path.write_bytes(A.docker_archive([([L1, L2], ["app:1"])]))
    return path


def test_import_prints_id_and_tags(tmp_path, archive):
    proc = run(tmp_path / "s", "import", str(archive), "--tag", "other:2")
    image_id, *tags = proc.stdout.decode().split()
    assert image_id == A.digest(A.config([L1, L2]))
    assert sorted(tags) == ["docker.io/library/app:1", "docker.io/library/other:2"]
    assert proc.stderr == b""           # no progress bar when stderr is not a terminal


def test_import_json_and_images_json(tmp_path, archive):
    root = tmp_path / "s"
    (imported,) = json.loads(run(root, "import", "--json", str(archive)).stdout)
    (listed,) = json.loads(run(root, "images", "--json").stdout)
    assert imported == listed
    assert set(listed) == {"id", "tags", "layers", "size", "created"}
    assert listed["layers"] == [A.digest(L1), A.digest(L2)]
    table = run(root, "images").stdout.decode().splitlines()
    assert table[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert table[1].split()[:3] == ["docker.io/library/app", "1", listed["id"][7:19]]


def test_import_from_stdin(tmp_path, archive):
    data = A.compress(archive.read_bytes(), "zstd")
    (img,) = json.loads(run(tmp_path / "s", "import", "--json", "-", stdin=data).stdout)
    assert img["tags"] == ["docker.io/library/app:1"]


def test_inspect(tmp_path, archive):
    root = tmp_path / "s"
    run(root, "import", str(archive))
    (info,) = json.loads(run(root, "inspect", "app:1").stdout)    # an array, as docker's
    assert info["RepoTags"] == ["docker.io/library/app:1"]
    assert [l["DiffID"] for l in info["Layers"]] == [A.digest(L1), A.digest(L2)]
    first = info["Layers"][0]
    assert first["Bytes"] == first["NewBytes"] + first["DedupBytes"]
    assert info["Config"]["rootfs"]["diff_ids"] == [A.digest(L1), A.digest(L2)]


def test_checkout(tmp_path, archive):
    root = tmp_path / "s"
    run(root, "import", str(archive))
    dest = tmp_path / "rootfs"
    made = json.loads(run(root, "checkout", "--json", "app:1", str(dest)).stdout)
    assert made["files"] == 2
    assert (dest / "app" / "main.py").read_bytes() == b"print('hi')\n"
    assert not (dest / "etc" / "os-release").exists()
    assert os.readlink(dest / "bin" / "bash") == "sh"
    proc = run(root, "checkout", "app:1", str(dest), check=False)
    assert "not empty" in one_line_error(proc)


@pytest.mark.parametrize("args, status, message", [
    (["import", "/nonexistent/image.tar"], 1, "No such file"),
    (["inspect", "nothing:here"], 1, "no such image"),
    (["inspect", "sha256:xyz"], 1, "no such image"),   # a name "sha256", as Docker reads it
    (["inspect", "Bad/Name:1"], 1, "invalid reference"),
    (["import"], 2, "Missing argument"),
    (["frobnicate"], 2, "No such command"),
])
def test_errors_are_one_line(tmp_path, args, status, message):
    err = one_line_error(run(tmp_path / "s", *args, check=False), status)
    assert message.lower() in err.lower()


def test_garbage_is_an_unknown_format(tmp_path):
    (tmp_path / "junk").write_bytes(os.urandom(4096))
    err = one_line_error(run(tmp_path / "s", "import", str(tmp_path / "junk"), check=False))
    assert "not an image archive" in err


def test_corrupt_layer_is_reported_and_nothing_lands(tmp_path, archive):
    data = bytearray(archive.read_bytes())
    at = data.find(b"print('hi')")
    data[at] ^= 0xFF
    (tmp_path / "bad.tar").write_bytes(bytes(data))
    err = one_line_error(run(tmp_path / "s", "import", str(tmp_path / "bad.tar"), check=False))
    assert "sha256:" in err
    assert json.loads(run(tmp_path / "s", "images", "--json").stdout) == []


def test_interrupt_exits_130(tmp_path):
    big = A.layer(*[("f", f"f{i}", os.urandom(200_000)) for i in range(300)])
    path = tmp_path / "big.tar.gz"
    path.write_bytes(A.compress(A.docker_archive([([L1, big], ["big:1"])]), "gzip"))
    proc = subprocess.Popen([sys.executable, "-m", "layerstore", "--root", str(tmp_path / "s"),
                             "import", "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=python_env())
    data = path.read_bytes()
    proc.stdin.write(data[: len(data) // 2])    # the import is now waiting for the rest
    proc.stdin.flush()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.decode().strip() == "layerstore: error: interrupted"  # click puts ^C on its own line
    assert json.loads(run(tmp_path / "s", "images", "--json").stdout) == []


def test_save_and_export_print_nothing_extra_on_a_pipe(tmp_path, archive):
    root = tmp_path / "s"
    run(root, "import", str(archive))
    for argv in (["save", "app:1"], ["export", "app:1"], ["save", "app:1", "--compress", "gzip"]):
        piped = run(root, *argv)                               # the archive to stdout
        assert piped.stderr == b""
        assert tarfile.open(fileobj=io.BytesIO(piped.stdout), mode="r:*").getnames()
        written = run(root, *argv, "-o", str(tmp_path / "out.tar"))
        assert (written.stdout, written.stderr) == (b"", b"")


def test_save_and_export_show_progress_on_a_terminal(tmp_path, archive):
    """stderr a terminal: the progress line is drawn (label, bytes, entries) and cleared."""
    import pty
    root = tmp_path / "s"
    run(root, "import", str(archive))
    for verb, label in (("save", b"saving"), ("export", b"exporting")):
        master, slave = pty.openpty()
        proc = subprocess.run([sys.executable, "-m", "layerstore", "--root", str(root), verb,
                               "app:1", "-o", str(tmp_path / f"{verb}.tar")],
                              stderr=slave, stdout=subprocess.PIPE, env=python_env())
        os.close(slave)
        shown = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:         # EIO: the terminal's other side is closed
                break
            if not chunk:
                break
            shown += chunk
        os.close(master)
        assert proc.returncode == 0, shown
        assert shown.startswith(b"\r" + label) and b" entries" in shown and b"B/s" in shown
        assert shown.endswith(b"\r\x1b[K")        # cleared when done
        assert b"Traceback" not in shown


def test_store_root_that_cannot_be_one(tmp_path):
    (tmp_path / "file").write_text("x")
    for root in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(errors.HostPathError) as got:
            Store(root)
        assert got.value.errno == errno.ENOTDIR
        assert str(got.value) == f"cannot open the store at {root}: Not a directory"
    err = one_line_error(run(tmp_path / "file" / "sub", "images", check=False))
    assert f"cannot open the store at {tmp_path / 'file' / 'sub'}: Not a directory" in err


def test_import_refuses_before_reading_what_it_cannot_use(tmp_path):
    """A missing file is a HostPathNotFound naming it; a tag that could be read as an id or a
    bad --platform is refused before a byte of the archive is read."""
    with Store(tmp_path / "s") as store:
        with pytest.raises(errors.HostPathNotFound, match="no-such.tar"):
            store.import_archive(tmp_path / "no-such.tar")
        stream = io.BytesIO(b"x" * 100)
        for kwargs, cls in (({"tags": ["sha256:beef"]}, errors.InvalidReference),
                            ({"platform": "linux/nonesuch"}, errors.InvalidPlatform)):
            with pytest.raises(cls):
                store.import_archive(stream, **kwargs)
            assert stream.tell() == 0
