"""Reading images without checking them out: walk, stat, open, ls, cat, and diff of two images.
Paths resolve as in a chroot at the image root, so symlinks that point "outside" (../../..,
/etc) land inside the image, never on the host."""

import errno
import hashlib
import io
import json
import os

import pytest

import archives as A
from helpers import one_line_error, run
from layerstore import DiffResult, Store, errors
from layerstore import EntryType

TOOL = b"\x7fELF" + bytes(range(256)) * 40
TOOL2 = b"\x7fELF new tool\n"
HOST_PASSWD = b"root:x:0:0:image:/root:/bin/sh\n"

B1 = A.layer(
    ("d", "etc"), ("f", "etc/passwd", HOST_PASSWD), ("f", "etc/hostname", b"box\n"),
    ("d", "usr"), ("d", "usr/bin"), ("f", "usr/bin/tool", TOOL, 0o755),
    ("h", "usr/bin/tool2", "usr/bin/tool"),
    ("l", "bin", "usr/bin"),
    ("l", "abs", "/etc"),
    ("l", "evil", "../../../../etc"),
    ("l", "chain1", "chain2"), ("l", "chain2", "evil"),
    ("l", "loop1", "loop2"), ("l", "loop2", "loop1"),
    ("l", "dangling", "/nowhere"),
    ("f", "empty", b""),
    ("d", "gone"), ("f", "gone/a", b"a"),
    ("f", "old", b"old"),
    ("d", "var"), ("l", "var/up", "../../../../../"),
)
# Over B1: whiteouts (a file, a directory), an opaque directory, a replaced file (whose
# hardlink keeps the old inode), a content change, a mode change, added files.
B2 = A.layer(
    ("wh", "old"), ("wh", "gone"),
    ("opq", "var"), ("f", "var/x", b"x"),
    ("f", "etc/hostname", b"box2\n"),
    ("f", "etc/passwd", HOST_PASSWD, 0o600),
    ("f", "usr/bin/tool", TOOL2, 0o755),
    ("f", "new", b"new\n"),
    ("d", "srv"), ("f", "srv/data", b"data"),
)


@pytest.fixture
def store(tmp_path):
    (tmp_path / "a.tar").write_bytes(A.docker_archive([([B1], ["one:1"]), ([B1, B2], ["two:1"])]))
    with Store(tmp_path / "store") as s:
        s.import_archive(tmp_path / "a.tar")
        yield s


# ---- stat -----------------------------------------------------------------------------------

@pytest.mark.parametrize("path, real", [
    ("etc/passwd", "etc/passwd"),
    ("/etc/passwd", "etc/passwd"),
    ("bin/tool", "usr/bin/tool"),
    ("abs/passwd", "etc/passwd"),
    ("evil/passwd", "etc/passwd"),
    ("chain1/hostname", "etc/hostname"),
    ("var/up/etc/passwd", "etc/passwd"),
    ("var/up/var/up/abs/passwd", "etc/passwd"),
    ("/../../etc/../../etc/passwd", "etc/passwd"),
    ("bin/../../etc/passwd", "etc/passwd"),     # ".." of the symlink's target, as the kernel
    ("/", "."),
])
def test_stat_follows_parents_inside_the_image(store, path, real):
    assert store.stat("one:1", path).path == real


def test_stat_does_not_follow_the_last_component_unless_asked(store):
    e = store.stat("one:1", "abs")
    assert (e.type, e.link) == (EntryType.SYMLINK, "/etc")
    assert store.stat("one:1", "abs", follow=True).path == "etc"
    assert store.stat("one:1", "evil", follow=True).path == "etc"
    assert store.stat("one:1", "chain1", follow=True).type is EntryType.DIR
    assert store.stat("one:1", "abs/").path == "etc"        # a trailing slash follows


def test_stat_of_a_hardlink_is_the_file_it_shares(store):
    a, b = store.stat("one:1", "usr/bin/tool"), store.stat("one:1", "bin/tool2")
    assert b.type is EntryType.FILE and b.path == "usr/bin/tool2"
    assert (a.object_id, a.size, a.mode) == (b.object_id, b.size, b.mode)


@pytest.mark.parametrize("path, exc, code", [
    ("nope", errors.PathNotFound, errno.ENOENT),
    ("etc/nope", errors.PathNotFound, errno.ENOENT),
    ("dangling/x", errors.PathNotFound, errno.ENOENT),
    ("etc/passwd/x", errors.NotADirectory, errno.ENOTDIR),
    ("loop1/x", errors.SymlinkLoop, errno.ELOOP),
])
def test_stat_errors(store, path, exc, code):
    with pytest.raises(exc) as info:
        store.stat("one:1", path)
    assert isinstance(info.value, errors.LayerstoreError) and isinstance(info.value, OSError)
    assert info.value.errno == code
    assert path in str(info.value) and "\n" not in str(info.value)


def test_missing_path_is_a_file_not_found_error(store):
    with pytest.raises(FileNotFoundError):
        store.stat("one:1", "missing")
    with pytest.raises(FileNotFoundError):
        store.open("one:1", "missing")


def test_whiteouts_hide_paths(store):
    for path in ("old", "gone", "gone/a", "var/up"):
        store.stat("one:1", path)
        with pytest.raises(errors.PathNotFound):
            store.stat("two:1", path)


# ---- open -----------------------------------------------------------------------------------

@pytest.mark.parametrize("path, want", [
    ("usr/bin/tool", TOOL), ("bin/tool", TOOL), ("usr/bin/tool2", TOOL),
    ("evil/passwd", HOST_PASSWD), ("abs/passwd", HOST_PASSWD), ("chain1/passwd", HOST_PASSWD),
    ("var/up/etc/hostname", b"box\n"), ("empty", b""), ("gone/a", b"a"),
])
def test_open_reads_the_layer_content(store, path, want):
    with store.open("one:1", path) as f:
        assert isinstance(f, io.BufferedReader)
        assert not f.writable()
        assert f.read() == want


def test_open_is_read_only_on_the_object(store):
    with store.open("one:1", "usr/bin/tool") as f:
        flags = os.fstat(f.fileno())
        assert f.raw.mode == "rb"
        assert os.path.realpath(f.name).startswith(os.path.realpath(store.root))
        assert flags.st_size == len(TOOL)
        with pytest.raises(io.UnsupportedOperation):
            f.write(b"x")


def test_open_follows_a_symlink_to_a_file(tmp_path):
    layer = A.layer(("d", "etc"), ("f", "etc/real", b"real"), ("l", "etc/alias", "real"),
                    ("l", "top", "/etc/alias"))
    (tmp_path / "a.tar").write_bytes(A.docker_archive([([layer], ["s:1"])]))
    with Store(tmp_path / "store") as store:
        store.import_archive(tmp_path / "a.tar")
        assert store.open("s:1", "top").read() == b"real"
        assert store.stat("s:1", "top", follow=True).path == "etc/real"


def test_open_of_the_upper_image(store):
    assert store.open("two:1", "etc/hostname").read() == b"box2\n"
    assert store.open("two:1", "bin/tool").read() == TOOL2
    # The hardlink was made to the lower layer's file; replacing that name keeps its inode.
    assert store.open("two:1", "usr/bin/tool2").read() == TOOL
    assert store.open("two:1", "var/x").read() == b"x"


@pytest.mark.parametrize("path, exc", [
    ("etc", IsADirectoryError), ("abs", IsADirectoryError), ("/", IsADirectoryError),
    ("loop1", errors.SymlinkLoop), ("dangling", FileNotFoundError),
])
def test_open_errors(store, path, exc):
    with pytest.raises(exc) as info:
        store.open("one:1", path)
    assert isinstance(info.value, errors.LayerstoreError)


# ---- walk -----------------------------------------------------------------------------------

def test_walk_is_the_merged_view(store):
    for ref in ("one:1", "two:1"):
        got = list(store.walk(ref))
        assert [e.path for e in got] == [e.path for e in store.image_entries(ref)]
        assert got[0].path == "."
        seen = set()
        for e in got:
            parent = e.path.rpartition("/")[0] or "."
            assert e.path == "." or parent in seen
            seen.add(e.path)
    paths = {e.path for e in store.walk("two:1")}
    assert {"new", "srv/data", "var/x"} <= paths
    assert not paths & {"old", "gone", "gone/a", "var/up"}


def test_walk_of_a_subtree(store):
    assert [e.path for e in store.walk("one:1", "bin")] == [
        "usr/bin", "usr/bin/tool", "usr/bin/tool2"]
    assert [e.path for e in store.walk("one:1", "etc/passwd")] == ["etc/passwd"]
    with pytest.raises(errors.PathNotFound):
        list(store.walk("one:1", "nope"))


# ---- diff -----------------------------------------------------------------------------------

WANT_DIFF = {
    "added": ["/new", "/srv", "/srv/data", "/var/x"],
    "removed": ["/gone", "/gone/a", "/old", "/var/up"],
    "changed": ["/etc/hostname", "/etc/passwd", "/usr/bin/tool"],
}


def test_diff(store):
    want = DiffResult(**{k: tuple(v) for k, v in WANT_DIFF.items()})
    assert store.diff("one:1", "two:1") == want
    back = store.diff("two:1", "one:1")
    assert back == DiffResult(added=want.removed, removed=want.added, changed=want.changed)
    assert store.diff("one:1", "one:1") == DiffResult(added=(), removed=(), changed=())


def test_diff_sees_type_and_link_changes(tmp_path):
    a = A.layer(("d", "d"), ("f", "d/f", b"x"), ("l", "l", "a"), ("f", "f", b"same"))
    b = A.layer(("wh", "d"), ("f", "d", b"now a file"), ("l", "l", "b"))
    (tmp_path / "a.tar").write_bytes(A.docker_archive([([a], ["a:1"]), ([a, b], ["b:1"])]))
    with Store(tmp_path / "store") as store:
        store.import_archive(tmp_path / "a.tar")
        assert store.diff("a:1", "b:1") == DiffResult(added=(), removed=("/d/f",),
                                                      changed=("/d", "/l"))


# ---- CLI ------------------------------------------------------------------------------------

@pytest.fixture
def root(tmp_path):
    (tmp_path / "a.tar").write_bytes(A.docker_archive([([B1], ["one:1"]), ([B1, B2], ["two:1"])]))
    run(tmp_path / "s", "import", str(tmp_path / "a.tar"))
    return tmp_path / "s"


def test_ls(root):
    assert run(root, "ls", "one:1").stdout.decode().split() == [
        "abs", "bin", "chain1", "chain2", "dangling", "empty", "etc", "evil", "gone", "loop1",
        "loop2", "old", "usr", "var"]
    assert run(root, "ls", "one:1", "/etc").stdout == b"hostname\npasswd\n"
    assert run(root, "ls", "one:1", "evil").stdout == b"hostname\npasswd\n"     # followed
    assert run(root, "ls", "one:1", "/etc/passwd").stdout == b"/etc/passwd\n"


def test_ls_long(root):
    lines = run(root, "ls", "--long", "one:1", "/").stdout.decode().splitlines()
    by_name = {l.split()[-1] if "->" not in l else l.split()[-3]: l for l in lines}
    assert by_name["abs"].startswith("lrwxrwxrwx ") and by_name["abs"].endswith("abs -> /etc")
    assert by_name["usr"].startswith("drwxr-xr-x 0/0 ")
    assert by_name["empty"].split()[:3] == ["-rw-r--r--", "0/0", "0"]
    assert "2023-11-14 22:13" in by_name["empty"]
    (tool, tool2) = run(root, "ls", "-l", "one:1", "/usr/bin").stdout.decode().splitlines()
    assert tool.split()[:3] == ["-rwxr-xr-x", "0/0", str(len(TOOL))]
    assert tool2.split()[-1] == "tool2" and tool2.split()[2] == str(len(TOOL))
    # -l asks about the symlink itself, as GNU ls; a trailing slash lists its target.
    (line,) = run(root, "ls", "-l", "one:1", "bin").stdout.decode().splitlines()
    assert line.startswith("l") and line.endswith("bin -> usr/bin")
    assert len(run(root, "ls", "-l", "one:1", "bin/").stdout.decode().splitlines()) == 2


def test_ls_json(root):
    got = json.loads(run(root, "ls", "--json", "one:1", "/usr/bin").stdout)
    assert got == [
        {"path": "/usr/bin/tool", "type": "file", "mode": 0o755, "uid": 0, "gid": 0,
         "size": len(TOOL), "mtime": 1700000000, "link": None},
        {"path": "/usr/bin/tool2", "type": "file", "mode": 0o755, "uid": 0, "gid": 0,
         "size": len(TOOL), "mtime": 1700000000, "link": None},
    ]
    (abs_,) = json.loads(run(root, "ls", "--json", "one:1", "abs").stdout)
    assert (abs_["path"], abs_["type"], abs_["link"]) == ("/abs", "symlink", "/etc")
    names = [e["path"] for e in json.loads(run(root, "ls", "--json", "two:1").stdout)]
    assert "/new" in names and "/old" not in names


def test_cat(root):
    assert run(root, "cat", "one:1", "/bin/tool").stdout == TOOL
    assert run(root, "cat", "one:1", "evil/passwd").stdout == HOST_PASSWD
    assert run(root, "cat", "two:1", "/usr/bin/tool").stdout == TOOL2
    assert run(root, "cat", "one:1", "empty").stdout == b""


@pytest.mark.parametrize("args, words", [
    (("cat", "one:1", "/etc"), "is a directory"),
    (("cat", "one:1", "/nope"), "no such file"),
    (("cat", "two:1", "/old"), "no such file"),
    (("cat", "one:1", "loop1"), "symbolic links"),
    (("ls", "one:1", "/nope"), "no such file"),
    (("ls", "one:1", "/etc/passwd/x"), "not a directory"),
    (("cat", "nosuch:1", "/etc/passwd"), "no such image"),
    (("diff", "one:1", "nosuch:1"), "no such image"),
])
def test_read_errors_are_one_line(root, args, words):
    err = one_line_error(run(root, *args, check=False), 1)
    assert words in err


def test_cat_usage_error(root):
    one_line_error(run(root, "cat", "one:1", check=False), 2)


def test_diff_cli(root):
    assert json.loads(run(root, "diff", "--json", "one:1", "two:1").stdout) == WANT_DIFF
    text = run(root, "diff", "one:1", "two:1").stdout.decode().splitlines()
    want = sorted([(p, "A") for p in WANT_DIFF["added"]] + [(p, "D") for p in WANT_DIFF["removed"]]
                  + [(p, "C") for p in WANT_DIFF["changed"]])
    assert text == [f"{m} {p}" for p, m in want]
    assert text[:3] == ["C /etc/hostname", "C /etc/passwd", "D /gone"]
    assert run(root, "diff", "one:1", "one:1").stdout == b""


# ---- the corpus -----------------------------------------------------------------------------

def _digest(f) -> str:
    h = hashlib.blake2b()
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def test_corpus_python_reads_as_its_checkout(corpus_images, tmp_path):
    image = next(i for i in corpus_images if i.archive.name.startswith("python."))
    with Store(tmp_path / "store") as store:
        (got,) = store.import_archive(image.archive)
        dest = tmp_path / "rootfs"
        store.checkout(got.id, dest)
        on_disk = set()
        for top, dirs, files in os.walk(dest):
            for name in dirs + files:
                on_disk.add(os.path.relpath(os.path.join(top, name), dest))
        walked = {}
        for e in store.walk(got.id):
            if e.path == ".":
                continue
            if os.geteuid() != 0 and e.type in (EntryType.CHAR, EntryType.BLOCK):
                continue        # a non-root checkout cannot make them
            walked[e.path] = e
        assert set(walked) == on_disk
        files = [e for e in walked.values() if e.type is EntryType.FILE]
        assert len(files) > 1000
        for e in files:
            with store.open(got.id, e.path) as f, open(dest / e.path, "rb") as want:
                assert os.fstat(want.fileno()).st_size == e.size, e.path
                assert _digest(f) == _digest(want), e.path
