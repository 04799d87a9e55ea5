"""Where the registry client finds credentials: the files podman, skopeo and Docker write, in
containers/image's order, credential helpers (a fake docker-credential-* on PATH), --creds;
and that no secret shows in a repr or an error."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from layerstore import errors
from layerstore.registry.credentials import (Credentials, auth_file_paths, lookup,
                                             normalize_registry, parse_creds)


def _auth(user: str, password: str) -> dict:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def _write(path: Path, config: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))
    return path


@pytest.fixture
def home(tmp_path):
    """An environment with nothing in it: HOME, XDG_* and DOCKER_CONFIG under tmp_path, and
    PATH with a bin directory for fake credential helpers first."""
    (tmp_path / "bin").mkdir()
    env = {"HOME": str(tmp_path / "home"), "XDG_RUNTIME_DIR": str(tmp_path / "run"),
           "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    return tmp_path, env


def _helper(bin_dir: Path, name: str, answers: dict, log: Path | None = None):
    """docker-credential-<name>: `get` reads a server URL on stdin and prints the answer for
    it (a dict is JSON, a str is printed with exit status 1), logging what it was asked."""
    script = bin_dir / f"docker-credential-{name}"
    script.write_text(f"""#!/usr/bin/env python3
import json, sys
assert sys.argv[1:] == ["get"], sys.argv
server = sys.stdin.read()
if {str(log) if log else ''!r}:
    with open({str(log) if log else ''!r}, "a") as f:
        f.write(server + "\\n")
answers = {answers!r}
answer = answers.get(server, "credentials not found in native keychain")
if isinstance(answer, dict):
    print(json.dumps(answer))
else:
    print(answer)
    sys.exit(1)
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_search_order_follows_containers_image(home):
    tmp, env = home
    env.update({"XDG_CONFIG_HOME": str(tmp / "config"), "DOCKER_CONFIG": str(tmp / "docker")})

    def one(path, user):
        return _write(tmp / path, {"auths": {"reg.example": _auth(user, "pw-" + user)}})

    runtime = one("run/containers/auth.json", "rt")
    config = one("config/containers/auth.json", "cf")
    docker = one("docker/config.json", "dk")
    authfile, envfile = one("given.json", "af"), one("env.json", "ev")
    assert auth_file_paths(None, env) == [runtime, config, docker]

    with_env = {**env, "REGISTRY_AUTH_FILE": str(envfile)}
    assert lookup("reg.example", authfile=authfile, env=with_env) == Credentials("af", "pw-af")
    assert lookup("reg.example", env=with_env) == Credentials("ev", "pw-ev")
    assert lookup("reg.example", env=env) == Credentials("rt", "pw-rt")
    runtime.unlink()
    assert lookup("reg.example", env=env) == Credentials("cf", "pw-cf")
    config.unlink()
    assert lookup("reg.example", env=env) == Credentials("dk", "pw-dk")
    docker.unlink()
    assert lookup("reg.example", env=env) is None


def test_default_locations_without_xdg_or_docker_config(home):
    tmp, env = home
    del env["XDG_RUNTIME_DIR"]
    paths = auth_file_paths(None, env)
    assert paths == [Path(f"/run/containers/{os.getuid()}/auth.json"),
                     tmp / "home/.config/containers/auth.json", tmp / "home/.docker/config.json"]
    _write(tmp / "home/.docker/config.json", {"auths": {"reg.example": _auth("dk", "3")}})
    assert lookup("reg.example", env=env) == Credentials("dk", "3")


def test_a_file_without_an_answer_passes_to_the_next(home):
    tmp, env = home
    _write(tmp / "run/containers/auth.json", {"auths": {"other.example": _auth("x", "y")}})
    _write(tmp / "home/.docker/config.json", {"auths": {"reg.example": _auth("dk", "3")}})
    assert lookup("reg.example", env=env) == Credentials("dk", "3")


def test_auths_keys_from_the_most_to_the_least_specific(home):
    tmp, env = home
    _write(tmp / "run/containers/auth.json", {"auths": {
        "quay.io": _auth("registry", "1"), "quay.io/ns": _auth("namespace", "2"),
        "quay.io/ns/app": _auth("repository", "3")}})
    assert lookup("quay.io", "ns/app", env=env) == Credentials("repository", "3")
    assert lookup("quay.io", "ns/other", env=env) == Credentials("namespace", "2")
    assert lookup("quay.io", "elsewhere/app", env=env) == Credentials("registry", "1")
    assert lookup("quay.io", env=env) == Credentials("registry", "1")


@pytest.mark.parametrize("key", ["https://index.docker.io/v1/", "index.docker.io",
                                 "registry-1.docker.io", "docker.io"])
@pytest.mark.parametrize("asked", ["docker.io", "registry-1.docker.io", "index.docker.io"])
def test_docker_hub_keys_are_one_registry(home, key, asked):
    tmp, env = home
    _write(tmp / "home/.docker/config.json", {"auths": {key: _auth("hub", "pw")}})
    assert lookup(asked, "library/python", env=env) == Credentials("hub", "pw")


def test_url_keys_are_compared_by_host(home):
    tmp, env = home
    _write(tmp / "home/.docker/config.json", {"auths": {"http://reg.example:5000/v1/":
                                                        _auth("old", "style")}})
    assert lookup("reg.example:5000", env=env) == Credentials("old", "style")
    assert lookup("reg.example", env=env) is None
    assert normalize_registry("https://Reg.Example:5000/v2/") == "reg.example:5000"


def test_identity_token_and_passwords_with_colons(home):
    tmp, env = home
    _write(tmp / "home/.docker/config.json", {"auths": {
        "a.example": {"identitytoken": "refresh-me"},
        "b.example": _auth("user", "pa:ss:word"),
        "c.example": {"auth": base64.b64encode(b"no-colon").decode()}}})
    assert lookup("a.example", env=env) == Credentials(identity_token="refresh-me")
    assert lookup("b.example", env=env) == Credentials("user", "pa:ss:word")
    assert lookup("c.example", env=env) is None       # skipped, as Docker does


def test_cred_helpers_come_first_and_get_the_server_url_on_stdin(home):
    tmp, env = home
    log = tmp / "asked"
    _helper(tmp / "bin", "fake", {"reg.example": {"ServerURL": "reg.example",
                                                  "Username": "helped", "Secret": "h-pw"}}, log)
    _write(tmp / "home/.docker/config.json", {"credHelpers": {"reg.example": "fake"},
                                              "auths": {"reg.example": _auth("file", "f-pw")}})
    assert lookup("reg.example", env=env) == Credentials("helped", "h-pw")
    assert log.read_text() == "reg.example\n"


def test_creds_store_is_the_default_helper(home):
    tmp, env = home
    log = tmp / "asked"
    _helper(tmp / "bin", "store", {
        "https://index.docker.io/v1/": {"Username": "hubuser", "Secret": "hub-pw"},
        "reg.example": {"Username": "<token>", "Secret": "an-identity-token"}}, log)
    _write(tmp / "home/.docker/config.json", {"credsStore": "store",
                                              "auths": {"https://index.docker.io/v1/": {},
                                                        "reg.example": {},
                                                        "plain.example": _auth("file", "pw")}})
    assert lookup("docker.io", "library/python", env=env) == Credentials("hubuser", "hub-pw")
    assert lookup("reg.example", env=env) == Credentials(identity_token="an-identity-token")
    # Nothing in the store: the file's own entry.
    assert lookup("plain.example", env=env) == Credentials("file", "pw")
    assert log.read_text().splitlines() == ["https://index.docker.io/v1/", "reg.example",
                                            "plain.example"]


def test_docker_hub_is_asked_of_a_helper_under_both_names(home):
    tmp, env = home
    log = tmp / "asked"
    _helper(tmp / "bin", "podmanish", {"docker.io": {"Username": "u", "Secret": "p"}}, log)
    _write(tmp / "home/.docker/config.json", {"credHelpers": {"docker.io": "podmanish"}})
    assert lookup("docker.io", env=env) == Credentials("u", "p")
    assert log.read_text().splitlines() == ["https://index.docker.io/v1/", "docker.io"]


def test_a_helper_that_is_missing_or_fails_is_an_error(home):
    tmp, env = home
    _write(tmp / "home/.docker/config.json", {"credHelpers": {"a.example": "absent",
                                                              "b.example": "broken"}})
    with pytest.raises(errors.CredentialError, match="docker-credential-absent .* is not on PATH"):
        lookup("a.example", env=env)
    _helper(tmp / "bin", "broken", {"b.example": "keychain locked"})
    with pytest.raises(errors.CredentialError,
                       match="docker-credential-broken failed for b.example: keychain locked"):
        lookup("b.example", env=env)
    _write(tmp / "home/.docker/config.json", {"credsStore": "../../bin/sh"})
    with pytest.raises(errors.CredentialError, match="is not a credential helper name"):
        lookup("b.example", env=env)


def test_an_unreadable_file_is_an_error_naming_it_and_no_secret(home):
    tmp, env = home
    bad = tmp / "run/containers/auth.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"auths": {"reg.example": {"auth": "c2VjcmV0"}, oops}')
    with pytest.raises(errors.CredentialError) as info:
        lookup("reg.example", env=env)
    assert str(info.value) == f"cannot read credentials from {bad}: not valid JSON (line 1)"
    bad.write_text('{"auths": {"reg.example": {"auth": "not base64 s3cret!"}}}')
    with pytest.raises(errors.CredentialError, match="is not base64") as info:
        lookup("reg.example", env=env)
    assert "s3cret" not in str(info.value)


def test_an_authfile_that_does_not_exist_is_an_error(home):
    tmp, env = home
    with pytest.raises(errors.CredentialError, match="no such file"):
        lookup("reg.example", authfile=tmp / "missing.json", env=env)
    with pytest.raises(errors.CredentialError, match="no such file"):
        lookup("reg.example", env={**env, "REGISTRY_AUTH_FILE": str(tmp / "missing.json")})


def test_creds_option():
    assert parse_creds("user:pa:ss") == Credentials("user", "pa:ss")
    for bad in ("user", "user:", ":pass", ""):
        with pytest.raises(errors.CredentialError, match="USER:PASSWORD"):
            parse_creds(bad)


def test_a_repr_shows_no_secret():
    creds = Credentials("alice", "hunter2-secret", "id-token-secret")
    for text in (repr(creds), str(creds), f"{creds}"):
        assert "alice" in text and "secret" not in text
