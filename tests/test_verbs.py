"""Docker's everyday verbs and flags, with Docker's names and meaning (docs.docker.com's
reference of docker tag, history, images, inspect and ps): each test names the behaviour of
Docker's it pins.  Also the 12-digit id prefix rule, for every verb."""

import io
import json
import os

import pytest

import archives as A
from helpers import invoke as _run, invoke_error as _error, need_overlay, oci_tar as _oci
from layerstore import HistoryEntry, Store, cli, errors

L1 = A.layer(("d", "etc"), ("f", "etc/os-release", b"NAME=test\n"),
             ("f", "bin/sh", b"\x7fELF" * 300, 0o755))
L2 = A.layer(("f", "app/main.py", b"print('hi')\n"))
L3 = A.layer(("f", "srv/data", b"d" * 5000))
LONG = "/bin/sh -c apt-get update && apt-get install -y --no-install-recommends ca-certificates"


def _config(layers, history=None, arch="amd64") -> bytes:
    extra = {"history": history} if history is not None else {}
    return A.config(layers, arch, **extra)


@pytest.fixture
def store():
    with Store(os.environ["LAYERSTORE_ROOT"]) as s:
        yield s


@pytest.fixture
def two(store):
    """Two images: app:1 (L1, L2) and db:1 (L1, L3)."""
    (app,) = store.import_archive(io.BytesIO(A.docker_archive([([L1, L2], ["app:1"])])))
    (db,) = store.import_archive(io.BytesIO(A.docker_archive([([L1, L3], ["db:1"])])))
    return app, db


# ---- tag ----------------------------------------------------------------------------------------


def test_tag_normalizes_the_target_and_moves_it(store, two):
    """docker tag SOURCE TARGET: TARGET without a tag is :latest, on Docker Hub's library;
    a tag that named another image now names this one (the other keeps its other tags)."""
    app, db = two
    assert _run("tag", "app:1", "web") == (0, "", "")
    assert store.image("web").id == app.id
    assert store.image("docker.io/library/web:latest").id == app.id
    assert _run("tag", db.id[7:19], "web") == (0, "", "")      # SOURCE by id prefix
    assert store.image("web").id == db.id
    assert store.image(app.id).tags == ("docker.io/library/app:1",)
    image = store.tag(db.id, "quay.io/team/db:2")               # the API returns the image
    assert image.id == db.id
    assert set(image.tags) == {"docker.io/library/db:1", "docker.io/library/web:latest",
                               "quay.io/team/db:2"}


@pytest.mark.parametrize("target, message", [
    ("sha256:0123", "ambiguous tag"),           # Docker: "refusing to create an ambiguous tag"
    ("a" * 64, "64 hexadecimal"),               # Docker: "cannot specify 64-byte hexadecimal"
    ("Bad/Name", "invalid reference format"),
    ("app:" + "x" * 129, "invalid reference format"),
])
def test_tag_refuses_what_docker_refuses(store, two, target, message):
    with pytest.raises(errors.InvalidReference, match=message):
        store.tag("app:1", target)
    assert message in _error(["tag", "app:1", target])
    assert store.image("app:1").tags == ("docker.io/library/app:1",)


def test_tag_errors(store, two):
    assert "no such image: nope:1" in _error(["tag", "nope:1", "x"])
    assert "Missing argument 'TARGET'" in _error(["tag", "app:1"], 2)


# ---- history ------------------------------------------------------------------------------------


HISTORY = [
    {"created": "2024-01-02T03:04:05.123456789Z", "created_by": "/bin/sh -c #(nop) ADD file:abc in /"},
    {"created": "2024-01-02T03:04:06Z", "created_by": "/bin/sh -c #(nop)  CMD [\"sh\"]",
     "empty_layer": True},
    {"created": "2024-02-01T00:00:00Z", "created_by": LONG, "comment": "buildkit.dockerfile.v0"},
    {"created": "2024-02-01T00:00:01Z", "created_by": "ENV\tA=1", "empty_layer": True},
]


@pytest.fixture
def built(store):
    cfg = _config([L1, L3], HISTORY)
    (image,) = store.import_archive(_oci([L1, L3], ["built:1"], cfg))
    return image


def test_history_gives_each_step_its_layer(store, built):
    """As the daemon: the steps newest first, each non-empty one the next diffID in order,
    empty_layer steps none (size 0); the image's id on the newest step, none below it."""
    steps = store.history("built:1")
    assert all(isinstance(h, HistoryEntry) for h in steps)
    assert [h.created_by for h in steps] == [HISTORY[i]["created_by"] for i in (3, 2, 1, 0)]
    assert [h.diff_id for h in steps] == [None, A.digest(L3), None, A.digest(L1)]
    assert [h.empty_layer for h in steps] == [True, False, True, False]
    sizes = {l.diff_id: l.file_bytes for l in store.layers()}
    assert [h.size for h in steps] == [0, sizes[A.digest(L3)], 0, sizes[A.digest(L1)]]
    assert steps[1].size == 5000
    assert [h.image_id for h in steps] == [built.id, None, None, None]
    assert steps[1].comment == "buildkit.dockerfile.v0"
    assert steps[3].created == HISTORY[0]["created"]


def test_history_without_history_is_one_step_per_layer(store, two):
    app, _ = two
    steps = store.history("app:1")
    assert [(h.image_id, h.diff_id, h.created, h.created_by) for h in steps] == [
        (app.id, A.digest(L2), None, ""), (None, A.digest(L1), None, "")]


def test_history_and_layers_that_do_not_add_up(store):
    """The newest steps go with the newest layers: a step added over a base without history
    (as commit does) describes the top layer; steps beyond the layers get none."""
    cfg = _config([L1, L2], [{"created_by": "top"}])
    store.import_archive(_oci([L1, L2], ["short:1"], cfg))
    assert [(h.created_by, h.diff_id) for h in store.history("short:1")] == [
        ("top", A.digest(L2)), ("", A.digest(L1))]
    cfg = _config([L2], [{"created_by": "a"}, {"created_by": "b", "empty_layer": True},
                         {"created_by": "c"}])
    store.import_archive(_oci([L2], ["long:1"], cfg))
    assert [(h.created_by, h.diff_id, h.empty_layer) for h in store.history("long:1")] == [
        ("c", A.digest(L2), False), ("b", None, True), ("a", None, False)]


def test_history_table_as_docker_prints_it(store, built):
    """Columns IMAGE, CREATED, CREATED BY, SIZE, COMMENT; CREATED BY cut to 45 characters
    with an ellipsis and tabs shown as spaces; <missing> below the image; sizes as
    go-units HumanSizeWithPrecision(3)."""
    rc, out, err = _run("history", "built:1")
    assert (rc, err) == (0, "")
    lines = out.splitlines()
    assert [c.strip() for c in lines[0].split("   ") if c.strip()] == [
        "IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]
    assert lines[1].startswith(built.id[7:19] + " ")
    assert all(line.startswith("<missing> ") for line in lines[2:])
    assert LONG[:44] + "\u2026" in lines[2] and LONG not in out
    assert "ENV A=1" in lines[1]
    assert "5kB" in lines[2] and "0B" in lines[1] and "buildkit.dockerfile.v0" in lines[2]
    assert " ago " in lines[1]


def test_history_flags(store, built):
    """--no-trunc: whole ids and commands; -q: the IMAGE column only; -H=false (Docker's
    only way to turn -H off): CREATED AT in RFC 3339 and sizes in bytes; --json: the steps."""
    rc, out, _ = _run("history", "--no-trunc", "built:1")
    assert LONG in out and built.id in out
    assert _run("history", "-q", "built:1")[1].split() == [built.id[7:19]] + ["<missing>"] * 3
    assert _run("history", "-q", "--no-trunc", "built:1")[1].split()[0] == built.id
    for flag in ("-H=false", "--human=false", "-H=0", "--no-human"):
        rc, out, err = _run("history", flag, "built:1")
        assert rc == 0, err
        lines = out.splitlines()
        assert "CREATED AT" in lines[0]
        assert "2024-01-02T03:04:05Z" in lines[4] and " 5000 " in lines[2]
    assert "CREATED AT" not in _run("history", "-H", "built:1")[1]
    assert "CREATED AT" not in _run("history", "--human=true", "built:1")[1]
    assert "not a boolean" in _error(["history", "-H=maybe", "built:1"], 2)
    rc, out, _ = _run("history", "--json", "built:1")
    steps = json.loads(out)
    assert set(steps[0]) == {"image_id", "created", "created_by", "comment", "empty_layer",
                             "diff_id", "size"}
    assert steps[0]["image_id"] == built.id and steps[1]["diff_id"] == A.digest(L3)


def test_history_errors(store):
    assert "no such image" in _error(["history", "nope:1"])
    assert "Missing argument 'IMAGE'" in _error(["history"], 2)


# ---- images ------------------------------------------------------------------------------------


def test_images_quiet_lists_one_id_per_row(store, two):
    """docker images -q prints the IMAGE ID column: one line per row, so an image with two
    tags twice."""
    app, db = two
    store.tag("app:1", "app:2")
    rc, out, err = _run("images", "-q")
    assert sorted(out.split()) == sorted([app.id[7:19]] * 2 + [db.id[7:19]])
    assert sorted(_run("images", "-q", "--no-trunc")[1].split()) == sorted([app.id] * 2 + [db.id])


def test_images_filtered_by_repository_and_tag(store, two):
    """docker images REPOSITORY[:TAG]: the rows whose repository (and tag) match, as Docker
    shows the name or in full; wildcards within a path component; nothing matching prints
    the header only."""
    app, db = two
    store.tag("app:1", "app:2")
    store.tag("db:1", "team/app:1")

    def rows(*args):
        rc, out, err = _run("images", *args)
        assert (rc, err) == (0, ""), err
        header, *lines = out.splitlines()
        assert header.split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
        return sorted(tuple(line.split()[:3]) for line in lines)

    lib = "docker.io/library/app"
    assert rows("app") == [(lib, "1", app.id[7:19]), (lib, "2", app.id[7:19])]
    assert rows("app:2") == [(lib, "2", app.id[7:19])]
    assert rows("docker.io/library/app:1") == [(lib, "1", app.id[7:19])]
    assert rows("team/app") == [("docker.io/team/app", "1", db.id[7:19])]
    assert rows("a*") == rows("app")                # * stops at "/", as path.Match
    assert rows("*/app") == [("docker.io/team/app", "1", db.id[7:19])]
    assert rows("app:[2-9]") == [(lib, "2", app.id[7:19])]
    assert rows("nothing") == []
    assert rows("--no-trunc", "db")[0][2] == db.id
    listed = json.loads(_run("images", "--json", "app")[1])
    assert [i["tags"] for i in listed] == [["docker.io/library/app:1", "docker.io/library/app:2"]]
    assert set(listed[0]) == {"id", "tags", "layers", "size", "created"}
    assert _run("images", "-q", "team/app")[1].split() == [db.id[7:19]]


def test_images_table_sizes_and_times_as_docker():
    """go-units: HumanSizeWithPrecision(n, 3) and HumanDuration, which docker prints."""
    assert [cli._human_size(n) for n in (0, 999, 1000, 1234, 999_700, 1_500_000, 12_345_678,
                                         3 * 10 ** 12)] == \
        ["0B", "999B", "1kB", "1.23kB", "1MB", "1.5MB", "12.3MB", "3TB"]
    assert [cli._duration(s) for s in (0.5, 1, 59, 60, 119, 3599, 3600, 5400, 47 * 3600,
                                       3 * 86400, 20 * 86400, 90 * 86400, 800 * 86400)] == \
        ["Less than a second", "1 second", "59 seconds", "About a minute", "About a minute",
         "59 minutes", "About an hour", "2 hours", "47 hours", "3 days", "2 weeks",
         "3 months", "2 years"]
    assert cli._when("2024-01-02T03:04:05.123456789Z").isoformat() == \
        "2024-01-02T03:04:05.123456+00:00"
    assert cli._when("2024-01-02T05:04:05+02:00").timestamp() == \
        cli._when("2024-01-02T03:04:05Z").timestamp()
    assert cli._when("yesterday") is None and cli._ago(None) == "N/A"


# ---- inspect ------------------------------------------------------------------------------------


def test_inspect_prints_an_array_and_errors_for_the_missing(store, two):
    """docker inspect: always a JSON array; an object not found is an error on stderr, the
    others are still printed, and the exit status is 1."""
    app, db = two
    rc, out, err = _run("inspect", "app:1", "db:1")
    assert (rc, err) == (0, "")
    assert [i["Id"] for i in json.loads(out)] == [app.id, db.id]
    rc, out, err = _run("inspect", "app:1", "nope:1", "db:1", "Bad/Name")
    assert rc == 1
    assert [i["Id"] for i in json.loads(out)] == [app.id, db.id]
    assert err.splitlines() == ["layerstore: error: no such image: nope:1",
                                "layerstore: error: invalid reference format: 'Bad/Name': "
                                "repository name must be lowercase"]
    rc, out, err = _run("inspect", "nope:1")
    assert (rc, json.loads(out)) == (1, [])
    assert "Missing argument" in _error(["inspect"], 2)


# ---- ps -----------------------------------------------------------------------------------------


@need_overlay
def test_ps_lists_active_mounts(store, two, tmp_path):
    """docker ps: the running containers, newest first; -q their ids; --no-trunc whole ids.
    Here: the mounts layerstore made, with image, mountpoint and upper dir."""
    app, db = two
    assert _run("ps")[1].split() == ["CONTAINER", "ID", "IMAGE", "MOUNTPOINT", "UPPER", "DIR",
                                     "CREATED", "NAMES"]
    first = store.mount("app:1", tmp_path / "a")
    second = store.mount(db.id, tmp_path / "b", upper=tmp_path / "up")
    try:
        assert [m.id for m in store.containers()] == [second.id, first.id]
        rc, out, err = _run("ps")
        assert (rc, err) == (0, "")
        lines = out.splitlines()
        assert lines[1].split()[:4] == [second.id[:12], "docker.io/library/db:1",
                                        str(tmp_path / "b"), str(tmp_path / "up")]
        assert lines[2].split()[:3] == [first.id[:12], "docker.io/library/app:1",
                                        str(tmp_path / "a")]
        assert _run("ps", "-q")[1].split() == [second.id[:12], first.id[:12]]
        assert _run("ps", "-q", "--no-trunc")[1].split() == [second.id, first.id]
        listed = json.loads(_run("ps", "--json")[1])
        assert [(m["id"], m["image"], m["mountpoint"]) for m in listed] == [
            (second.id, db.id, str(tmp_path / "b")), (first.id, app.id, str(tmp_path / "a"))]
        store.tag("app:1", "db:1")      # db's image left without a tag: IMAGE is its id
        assert _run("ps")[1].splitlines()[1].split()[1] == db.id[7:19]
    finally:
        store.umount(tmp_path / "a")
        store.umount(tmp_path / "b")
    assert store.containers() == []      # the kept upper dir is no running container
    assert _run("ps", "-q") == (0, "", "")


# ---- id prefixes --------------------------------------------------------------------------------


VERBS = [  # (argv before and after IMAGE), for every verb that names an image
    (["inspect"], []), (["history"], []), (["tag"], ["x:1"]), (["ls"], []), (["cat"], ["/etc/os-release"]),
    (["diff", "app:1"], []), (["save", "-o", "{tmp}/o.tar"], []), (["export", "-o", "{tmp}/o.tar"], []),
    (["rm"], []), (["checkout"], ["{tmp}/dest"]), (["mount"], ["{tmp}/mnt"]),
]


@pytest.mark.parametrize("before, after", VERBS, ids=[v[0][0] for v in VERBS])
def test_short_id_prefix_is_refused_with_the_rule(store, two, tmp_path, before, after):
    """IMAGE is a tag, an id, or an id prefix of 12 or more hex digits: a shorter prefix is
    refused by every verb, saying so (where Docker would take it)."""
    app, _ = two
    argv = [a.format(tmp=tmp_path) for a in before]
    rest = [a.format(tmp=tmp_path) for a in after]
    for short in (app.id[7:18], app.id[:18], app.id[7:10]):
        err = _error(argv + [short] + rest)
        assert "at least 12 hex digits" in err, err
    assert not os.path.exists(tmp_path / "o.tar") and not os.path.exists(tmp_path / "dest")
    with pytest.raises(errors.InvalidReference, match="at least 12"):
        store.image(app.id[:18])
    with pytest.raises(errors.ImageNotFound, match="at least 12"):
        store.image(app.id[7:18])
    assert store.image(app.id[7:19]).id == app.id == store.image(app.id[:19]).id
