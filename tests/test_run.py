"""OCI runtime bundles and `layerstore run`: config.json as runc's default spec and umoci's
derivation from the image config, users resolved in the image's own passwd and group files,
containers started by runc (crun too where installed) on overlay mounts of the shared layer
dirs, and nothing left mounted or on disk after --rm, a killed container or bad input."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import archives as A
from helpers import in_child_as, need_overlay, need_root, need_tool, python_env, run
from layerstore import Store, errors
from layerstore.runtimes import oci

PASSWD = (b"root:x:0:0:root:/root:/bin/sh\n"
          b"app:x:1000:1000:App:/home/app:/bin/sh\n"
          b"svc:x:1001:1001::/srv:/bin/sh\n")
GROUP = (b"root:x:0:\napp:x:1000:\nsvc:x:1001:\n"
         b"wheel:x:10:app,other\naudio:x:29:app\nstaff:x:50:svc\n")
RUNTIMES = [r for r in ("runc", "crun") if shutil.which(r)]
need_runc = need_tool("runc")


def _image_layer() -> bytes:
    """The files the test image adds: its users, groups and working directory."""
    return A.layer(("d", "etc"), ("f", "etc/passwd", PASSWD), ("f", "etc/group", GROUP),
                   ("d", "home/app"), ("d", "srv/work", 0o777))


def _config(diff_ids, **config) -> bytes:
    return json.dumps({"architecture": "amd64", "os": "linux",
                       "created": "2026-11-01T00:00:00Z", "config": config,
                       "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()


APP = {"User": "app", "WorkingDir": "/srv/work", "Env": ["PATH=/usr/bin:/bin", "FOO=bar"],
       "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hi"], "Labels": {"a": "b"},
       "Volumes": {"/data": {}}, "StopSignal": "SIGTERM"}


def _mounts_under(path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4].encode().decode("unicode_escape") for line in f]
    return [p for p in points if p.startswith(str(path))]


def _nothing_left(root) -> None:
    assert _mounts_under(root) == []
    for sub in ("runs", "containers"):
        assert not os.listdir(os.path.join(root, sub)) if os.path.isdir(
            os.path.join(root, sub)) else True, sub


# ---- the spec ----------------------------------------------------------------------------------

@need_runc
@pytest.mark.parametrize("rootless", [False, True])
def test_default_spec_is_runc_spec(tmp_path, rootless):
    """Mounts, namespaces, capabilities, masked and read-only paths, rlimits: `runc spec`'s
    (and `runc spec --rootless`'s) own defaults."""
    subprocess.run(["runc", "spec", *(["--rootless"] if rootless else [])], cwd=tmp_path,
                   check=True)
    want = json.loads((tmp_path / "config.json").read_text())
    got = oci.default_spec()
    if rootless:
        oci.to_rootless(got, os.geteuid(), os.getegid())
    assert got == want


def test_users_resolve_as_runc_does():
    r = oci.resolve_user
    assert r("", PASSWD, GROUP) == (0, 0, [], "/root")
    assert r("app", PASSWD, GROUP) == (1000, 1000, [10, 29], "/home/app")
    assert r("1000", PASSWD, GROUP) == (1000, 1000, [10, 29], "/home/app")
    assert r("app:staff", PASSWD, GROUP) == (1000, 50, [], "/home/app")
    assert r("app:77", PASSWD, GROUP) == (1000, 77, [], "/home/app")
    assert r("svc", PASSWD, GROUP) == (1001, 1001, [50], "/srv")
    assert r("4242", PASSWD, GROUP) == (4242, 0, [], "/")       # numeric: need not exist
    assert r("4242:4343", None, None) == (4242, 4343, [], "/")
    assert r("", None, None) == (0, 0, [], "/")
    with pytest.raises(errors.ContainerError, match="user 'nobody' is not in the image"):
        r("nobody", PASSWD, GROUP)
    with pytest.raises(errors.ContainerError, match="group 'nogroup' is not in the image"):
        r("app:nogroup", PASSWD, GROUP)
    with pytest.raises(errors.ContainerError, match="user 'app' is not in the image"):
        r("app", None, None)


def test_spec_from_image_config():
    """docker run's overrides over the image config: a command replaces Cmd (Entrypoint
    stays), -e sets after the image's Env, -w and -u replace the image's."""
    cfg = json.loads(_config([], **APP))
    spec = oci.spec_for(cfg, PASSWD, GROUP)
    p = spec["process"]
    assert p["args"] == ["/bin/sh", "-c", "echo hi"]
    assert p["env"] == ["PATH=/usr/bin:/bin", "TERM=xterm", "FOO=bar", "HOME=/home/app"]
    assert (p["cwd"], p["user"]) == ("/srv/work", {"uid": 1000, "gid": 1000,
                                                   "additionalGids": [10, 29]})
    assert spec["root"] == {"path": "rootfs", "readonly": False}
    spec = oci.spec_for(cfg, PASSWD, GROUP, command=["id"], env=["FOO=baz", "X=1"],
                        workdir="/tmp", user="svc", read_only=True)
    p = spec["process"]
    assert p["args"] == ["/bin/sh", "-c", "id"]
    assert p["env"] == ["PATH=/usr/bin:/bin", "TERM=xterm", "FOO=baz", "X=1", "HOME=/srv"]
    assert (p["cwd"], p["user"]) == ("/tmp", {"uid": 1001, "gid": 1001, "additionalGids": [50]})
    assert spec["root"]["readonly"] is True
    with pytest.raises(errors.ContainerError, match="has no command"):
        oci.spec_for(json.loads(_config([])), PASSWD, GROUP)


# ---- bundles against umoci ---------------------------------------------------------------------

@need_root("umoci unpack keeps the image's owners")
@need_tool("umoci")
def test_bundle_config_matches_umoci(tmp_path):
    """config.json of `layerstore bundle` and of `umoci unpack` of the same OCI layout agree
    on args, env, cwd, user, the mounts (with the image's volume) and the annotations."""
    layer = _image_layer()
    cfg = _config([A.digest(layer)], **APP)
    blobs, desc = A.oci_blobs([layer], ["test/app:1"], config_bytes=cfg)
    layout = tmp_path / "layout"
    A.write_dir(A.oci_layout_files([desc], blobs), layout)
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:1", str(tmp_path / "umoci")],
                   check=True, capture_output=True)
    theirs = json.loads((tmp_path / "umoci" / "config.json").read_text())
    root = tmp_path / "store"
    run(root, "import", str(layout), "--tag", "test/app:1")
    run(root, "bundle", "test/app:1", str(tmp_path / "b"))
    ours = json.loads((tmp_path / "b" / "config.json").read_text())
    for key in ("args", "env", "cwd", "user", "terminal", "noNewPrivileges", "rlimits"):
        assert ours["process"][key] == theirs["process"][key], key
    assert ours["mounts"] == theirs["mounts"]
    assert ours["annotations"] == {k: v for k, v in theirs["annotations"].items() if v}
    assert ours["root"]["path"] == "rootfs"
    assert (tmp_path / "b" / "rootfs" / "etc" / "passwd").read_bytes() == PASSWD
    run(root, "bundle", "--remove", str(tmp_path / "b"))
    assert not (tmp_path / "b").exists()
    _nothing_left(root)


@pytest.mark.parametrize("link", [False, True])
def test_bundle_reads_users_of_the_image(tmp_path, link):
    """User and groups come from the image's files, also behind a symlink (resolved inside
    the image root, never on the host)."""
    files = [("f", "srv/passwd", PASSWD), ("l", "etc/passwd", "../srv/passwd")] if link \
        else [("f", "etc/passwd", PASSWD)]
    layer = A.layer(("d", "etc"), ("d", "srv"), *files, ("f", "etc/group", GROUP))
    with Store(tmp_path / "store") as s:
        s.import_layer(io.BytesIO(layer))
        s.add_image(_config([A.digest(layer)], User="app", Cmd=["x"]), tags=["u:1"])
        marker = s.bundle("u:1", tmp_path / "b")
        config = json.loads((tmp_path / "b" / "config.json").read_text())
        assert config["process"]["user"] == {"uid": 1000, "gid": 1000,
                                             "additionalGids": [10, 29]}
        assert "HOME=/home/app" in config["process"]["env"]
        assert s.remove_bundle(tmp_path / "b") == marker
    assert not (tmp_path / "b").exists()


def test_bundle_remove_refuses_other_dirs(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "rootfs").mkdir()
    proc = run(tmp_path / "store", "bundle", "--remove", str(tmp_path / "mine"), check=False)
    assert proc.returncode == 1 and b"not a bundle layerstore made" in proc.stderr
    assert (tmp_path / "mine" / "rootfs").is_dir()


# ---- containers --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus_store(tmp_path_factory, corpus_dir):
    """A store holding the corpus python image and, on its base layer, the test image: users
    and groups of its own, a config with User, WorkingDir and Env."""
    if os.geteuid() != 0:
        pytest.skip("needs root: containers on overlay mounts")
    root = tmp_path_factory.mktemp("runs") / "store"
    with Store(root) as s:
        (python,) = s.import_archive(corpus_dir / "python.docker.tar.zst")
        layer = _image_layer()
        s.import_layer(io.BytesIO(layer))
        cfg = {**APP, "Entrypoint": ["/bin/sh"], "Cmd": ["-c", "id"]}
        s.add_image(_config([python.diff_ids[0], A.digest(layer)], **cfg), tags=["test/app:1"])
        s.add_image(_config([python.diff_ids[0]]), tags=["test/nocmd:1"])
    yield root
    # What a failed test left: its containers stopped and unmounted, so no mount outlives
    # the test run.
    state = os.path.join(root, "runc")
    for r in oci.runs(str(root)):
        subprocess.run(["runc", "--root", state, "kill", r.id, "KILL"], capture_output=True)
        subprocess.run(["runc", "--root", state, "delete", "--force", r.id],
                       capture_output=True)
        oci.remove_container(str(root), r.bundle)


def _ls(root, *args, **kw):
    return subprocess.run([sys.executable, "-m", "layerstore", "--root", str(root), *args],
                          capture_output=True, text=True, env=python_env(), **kw)


@need_overlay
@pytest.mark.parametrize("runtime", RUNTIMES or ["runc"])
def test_run_corpus_python(corpus_store, runtime):
    if shutil.which(runtime) is None:
        pytest.skip(f"needs {runtime} on PATH")
    proc = _ls(corpus_store, "run", "--rm", "--runtime", runtime, "corpus/python",
               "python3", "-c", "import sys; print('hello from', sys.version_info[0])")
    if runtime == "crun" and "hybrid mode not supported" in proc.stderr:
        _nothing_left(corpus_store)
        pytest.skip(f"crun cannot run containers on this host: {proc.stderr.strip()}")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "hello from 3\n", "")
    proc = _ls(corpus_store, "run", "--rm", "corpus/python", "sh", "-c", "exit 7")
    assert proc.returncode == 7
    _nothing_left(corpus_store)


@need_overlay
@need_runc
def test_env_workdir_user_honoured(corpus_store):
    script = 'id -u; id -g; id -G; pwd; echo "$FOO $HOME"; touch mine && ls -n mine'
    proc = _ls(corpus_store, "run", "--rm", "test/app:1", "-c", script)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:5] == ["1000", "1000", "1000 10 29", "/srv/work", "bar /home/app"]
    assert lines[5].split()[2:4] == ["1000", "1000"]
    proc = _ls(corpus_store, "run", "--rm", "-u", "svc:staff", "-w", "/tmp", "-e", "FOO=baz",
               "test/app:1", "-c", script)
    assert proc.stdout.splitlines()[:5] == ["1001", "50", "50", "/tmp", "baz /srv"], proc.stderr
    proc = _ls(corpus_store, "run", "--rm", "--read-only", "test/app:1", "-c", "touch /x")
    assert proc.returncode != 0 and "Read-only file system" in proc.stderr
    _nothing_left(corpus_store)


def _wait_for(fn, what, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = fn()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _running(root, n):
    with Store(root) as s:
        found = [r for r in s.runs() if r.status == "running"]
    return found if len(found) == n else None


@need_overlay
@need_runc
def test_two_containers_own_writes_shared_lowers(corpus_store):
    """Two containers of one image at once: each sees only what it wrote; both read the
    image's files through the same lower inodes; ps lists both with their image and names;
    rm of the image is refused while they exist, unless forced."""
    script = 'echo "$N" > /tmp/who; read x; ls /tmp; cat /tmp/who'
    procs = [subprocess.Popen([sys.executable, "-m", "layerstore", "--root", str(corpus_store),
                               "run", "--rm", "--name", name, "-e", f"N={name}",
                               "corpus/python", "sh", "-c", script],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=python_env())
             for name in ("first", "second")]
    try:
        runs = _wait_for(lambda: _running(corpus_store, 2), "two containers")
        with Store(corpus_store) as s:
            mounts = {m.id: m for m in s.containers()}
        a, b = (mounts[r.id] for r in runs)
        assert a.lowers == b.lowers and a.upper != b.upper
        probe = "usr/bin/python3"
        real = os.path.realpath(os.path.join(a.mountpoint, probe))[len(a.mountpoint):]
        inodes = {os.stat(m.mountpoint + real).st_ino for m in (a, b)}
        lower = next(os.path.join(d, real.lstrip("/")) for d in a.lowers
                     if os.path.exists(os.path.join(d, real.lstrip("/"))))
        assert inodes == {os.stat(lower).st_ino}
        ps = _ls(corpus_store, "ps")
        for r in runs:
            row = next(line for line in ps.stdout.splitlines() if line.startswith(r.id[:12]))
            assert row.split()[1] == "docker.io/corpus/python:latest"
            assert row.split()[-1] == r.name
        proc = _ls(corpus_store, "rm", "corpus/python")
        assert proc.returncode == 1 and "is used by container" in proc.stderr
        assert proc.stderr.count("\n") == 1
    finally:
        outs = [p.communicate("go\n", timeout=60) for p in procs]
    for (out, err), name, p in zip(outs, ("first", "second"), procs):
        assert p.returncode == 0, err
        assert out.split() == ["who", name]
    _nothing_left(corpus_store)


@need_overlay
@need_runc
@pytest.mark.parametrize("how", ["container", "supervisor"])
def test_killed_container_leaves_nothing(corpus_store, how):
    """--rm after the container's process is killed (SIGKILL, status 137), or after
    `layerstore run` itself gets SIGTERM (forwarded: the container's shell, PID 1, exits
    by its trap): no mount, no upper dir, no record, no runc state."""
    script = 'trap "exit 143" TERM; while :; do sleep 0.1; done'
    proc = subprocess.Popen([sys.executable, "-m", "layerstore", "--root", str(corpus_store),
                             "run", "--rm", "corpus/python", "sh", "-c", script],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=python_env())
    state = os.path.join(corpus_store, "runc")
    try:
        (r,) = _wait_for(lambda: _running(corpus_store, 1), "the container")

        def init_pid():
            out = subprocess.run(["runc", "--root", state, "state", r.id], capture_output=True)
            return out.returncode == 0 and json.loads(out.stdout)["status"] == "running" \
                and json.loads(out.stdout)["pid"]

        pid = _wait_for(init_pid, "runc state")
        if how == "container":
            os.kill(pid, signal.SIGKILL)
        else:
            proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:     # a failure above: the container must not outlive the test
            subprocess.run(["runc", "--root", state, "kill", r.id, "KILL"], capture_output=True)
            proc.communicate(timeout=60)
    assert proc.returncode == (128 + signal.SIGKILL if how == "container" else 143)
    _nothing_left(corpus_store)
    assert not os.path.exists(os.path.join(state, r.id))


@need_overlay
@need_runc
def test_kept_container_and_forced_rm(corpus_store):
    """Without --rm an exited container keeps its rootfs and upper dir (committable);
    rm of its image is refused, --force deletes the image; bundle --remove frees it."""
    with Store(corpus_store) as s:
        python = s.image("corpus/python")
        s.add_image(_config([python.diff_ids[0]], Cmd=["sh"], Labels={"kept": "1"}),
                    tags=["keep/me:1"])
    proc = _ls(corpus_store, "run", "--name", "kept", "keep/me:1", "sh", "-c", "echo x > /f")
    assert proc.returncode == 0, proc.stderr
    with Store(corpus_store) as s:
        (r,) = s.runs()
    assert r.status == "exited" and r.exit_code == 0
    assert (open(os.path.join(r.bundle, "rootfs", "f")).read()) == "x\n"
    assert "kept" not in _ls(corpus_store, "ps").stdout       # ps: running ones only
    proc = _ls(corpus_store, "rm", "keep/me:1")
    assert proc.returncode == 1 and "use --force" in proc.stderr
    assert _ls(corpus_store, "rm", "--force", "keep/me:1").returncode == 0
    assert _ls(corpus_store, "bundle", "--remove", r.bundle).returncode == 0
    _nothing_left(corpus_store)
    with Store(corpus_store) as s:
        assert s.image("corpus/python").id == python.id
        with pytest.raises(errors.ImageNotFound):
            s.image("keep/me:1")


@need_overlay
@pytest.mark.parametrize("args, message", [
    (["test/nocmd:1"], "the image test/nocmd:1 has no command (no Entrypoint or Cmd): give one"),
    (["-u", "nobody", "test/app:1", "true"],
     "user 'nobody' is not in the image test/app:1's /etc/passwd"),
    (["--runtime", "no-such-runtime", "corpus/python", "true"],
     "OCI runtime 'no-such-runtime' not found (not on PATH and not an executable file)"),
])
def test_bad_input_one_line_nothing_left(corpus_store, args, message):
    proc = _ls(corpus_store, "run", "--rm", *args)
    assert (proc.returncode, proc.stderr) == (1, f"layerstore: error: {message}\n")
    if "--runtime" not in args:     # bundle: the same error, before anything is made
        user = args[1] if args[0] == "-u" else None
        with Store(corpus_store) as s, pytest.raises(errors.ContainerError, match=message[:20]):
            s.bundle(args[-2] if user else args[0], corpus_store.parent / "b", user=user)
        assert not (corpus_store.parent / "b").exists()
    _nothing_left(corpus_store)


def test_no_runtime_at_all(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(errors.ContainerError, match="no OCI runtime: install runc or crun"):
        oci.find_runtime(None)


# ---- rootless ----------------------------------------------------------------------------------

def _userns_or_skip(uid: int) -> None:
    if shutil.which("setpriv") is None or shutil.which("unshare") is None:
        pytest.skip("needs setpriv and unshare (util-linux)")
    probe = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                            "unshare", "--user", "--map-root-user", "true"],
                           capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"no user namespaces for an unprivileged user here: {probe.stderr.strip()}")


@need_root("switches to an unprivileged user")
@need_runc
def test_rootless_bundle_runs(corpus_dir):
    """An unprivileged user's store and `bundle --rootless` (rootfs a checkout: no overlay
    without root or fuse-overlayfs), then that user's `runc run`: root in the container is
    the user outside."""
    import lmdb._envid  # noqa: F401 - the child, without access to site-packages, needs it
    import zstandard  # noqa: F401
    uid = 65534
    _userns_or_skip(uid)
    top = Path(tempfile.mkdtemp(prefix="layerstore-user-"))    # pytest's tmp_path is root-only
    os.chmod(top, 0o755)
    os.chown(top, uid, uid)
    try:
        _rootless_bundle_runs(top, uid, corpus_dir)
    finally:
        shutil.rmtree(top)


def _rootless_bundle_runs(top, uid, corpus_dir):

    def make():
        with Store(top / "store") as s:
            s.import_archive(corpus_dir / "python.docker.tar.zst")
            return json.dumps(s.bundle("corpus/python", top / "b", rootless=True,
                                       command=["sh", "-c", "id -u; echo hi > /tmp/x; "
                                                "cat /tmp/x; stat -c %u /etc/passwd"]))

    got = in_child_as(uid, make)
    marker = json.loads(got)
    assert marker["rootfs"] in ("checkout", "overlay"), got
    config = json.loads((top / "b" / "config.json").read_text())
    assert config["linux"]["uidMappings"] == [{"containerID": 0, "hostID": uid, "size": 1}]
    assert {"type": "user"} in config["linux"]["namespaces"]
    assert {"type": "network"} not in config["linux"]["namespaces"]
    config["process"]["terminal"] = False
    (top / "b" / "config.json").write_text(json.dumps(config))
    proc = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                           "runc", "--root", str(top / "runc"), "run", "-b", str(top / "b"),
                           "rl"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert (proc.returncode, proc.stdout.split()) == (0, ["0", "hi", "0"]), proc.stderr
    assert in_child_as(uid, lambda: Store(top / "store").remove_bundle(top / "b")["id"]) == \
        marker["id"]
    assert not (top / "b").exists()
