"""Registry credentials, found where podman, skopeo and Docker keep them.

Files, in the order containers/image searches them (the first that has an answer wins):
  1. --authfile, else $REGISTRY_AUTH_FILE, else ${XDG_RUNTIME_DIR}/containers/auth.json
     (/run/containers/<uid>/auth.json without XDG_RUNTIME_DIR)
  2. $XDG_CONFIG_HOME/containers/auth.json (~/.config/containers/auth.json)
  3. $DOCKER_CONFIG/config.json, else ~/.docker/config.json
In each file:
  - credHelpers[registry]: run docker-credential-<helper>;
  - credsStore, Docker's default helper for every registry;
  - auths, keys from the most to the least specific: "quay.io/ns/repo", "quay.io/ns",
    "quay.io"; then keys written as URLs ("https://index.docker.io/v1/", "http://host/v1/"),
    compared by host name with Docker Hub's three names (docker.io, index.docker.io,
    registry-1.docker.io) as one.  An entry holds base64 "user:password" in auth, and/or an
    OAuth2 refresh token in identitytoken.
A helper is run as `docker-credential-<name> get` with the server URL on stdin and answers
JSON {ServerURL, Username, Secret}; Username "<token>" means Secret is an identity token.
For Docker Hub the server URL is Docker's "https://index.docker.io/v1/", then "docker.io".
--creds USER:PASSWORD (parse_creds) replaces the lookup altogether.

Secrets never appear in a repr, a log line or an error message.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .. import errors

DOCKER_HUB = "docker.io"
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_HUB_NAMES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_HELPER_TIMEOUT = 60


@dataclass(frozen=True)
class Credentials:
    """A user name with a password, or an identity token (an OAuth2 refresh token)."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)

    def __bool__(self) -> bool:
        return bool(self.password or self.identity_token)


def parse_creds(value: str) -> Credentials:
    """--creds USER:PASSWORD (the password may hold colons)."""
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise errors.CredentialError("--creds takes USER:PASSWORD, with both parts")
    return Credentials(user, password)


def normalize_registry(key: str) -> str:
    """An auth file key or registry name as a host: "https://index.docker.io/v1/" and
    "registry-1.docker.io" -> "docker.io", "http://host:5000/v1/" -> "host:5000"."""
    for prefix in ("http://", "https://"):
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    host = key.split("/", 1)[0].lower()
    return DOCKER_HUB if host in _HUB_NAMES else host


def auth_file_paths(authfile: str | os.PathLike | None = None, env=None) -> list[Path]:
    """The files searched, in order (some may not exist)."""
    env = os.environ if env is None else env
    home = Path(env.get("HOME") or Path.home())
    first = authfile or env.get("REGISTRY_AUTH_FILE")
    if not first:
        runtime = env.get("XDG_RUNTIME_DIR")
        first = (Path(runtime) / "containers/auth.json" if runtime
                 else Path(f"/run/containers/{os.getuid()}/auth.json"))
    config_home = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    docker = Path(env["DOCKER_CONFIG"]) if env.get("DOCKER_CONFIG") else home / ".docker"
    return [Path(first), config_home / "containers/auth.json", docker / "config.json"]


def lookup(registry: str, repository: str | None = None, *,
           authfile: str | os.PathLike | None = None, env=None) -> Credentials | None:
    """The credentials for repository on registry ("docker.io", "quay.io", "host:5000"),
    or None.  Raises errors.CredentialError for a file or helper that cannot be read."""
    env = os.environ if env is None else env
    registry = normalize_registry(registry)
    explicit = authfile or env.get("REGISTRY_AUTH_FILE")
    for i, path in enumerate(auth_file_paths(authfile, env)):
        config = _read(path, must_exist=bool(explicit) and i == 0)
        if config is None:
            continue
        found = _from_file(config, path, registry, repository, env)
        if found:
            return found
    return None


def _read(path: Path, must_exist: bool) -> dict | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if must_exist:
            raise errors.CredentialError(f"cannot read credentials from {path}: no such "
                                         "file") from None
        return None
    except OSError as exc:
        raise errors.CredentialError(f"cannot read credentials from {path}: "
                                     f"{exc.strerror}") from None
    try:
        config = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        where = f" (line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise errors.CredentialError(f"cannot read credentials from {path}: not valid "
                                     f"JSON{where}") from None
    if not isinstance(config, dict):
        raise errors.CredentialError(f"cannot read credentials from {path}: not a JSON object")
    return config


def _section(config: dict, name: str, path: Path) -> dict:
    value = config.get(name) or {}
    if not isinstance(value, dict):
        raise errors.CredentialError(f"cannot read credentials from {path}: {name} is not "
                                     "an object")
    return value


def _from_file(config: dict, path: Path, registry: str, repository: str | None,
               env) -> Credentials | None:
    helpers = _section(config, "credHelpers", path)
    for key, helper in helpers.items():
        if normalize_registry(key) == registry:
            return run_helper(helper, registry, path, env)
    store = config.get("credsStore")
    if store:
        found = run_helper(store, registry, path, env)
        if found:
            return found
    auths = _section(config, "auths", path)
    keys = [registry]
    if repository:
        parts = repository.split("/")
        keys = [f"{registry}/{'/'.join(parts[:n])}" for n in range(len(parts), 0, -1)] + keys
    for key in keys:
        if key in auths:
            return _decode(auths[key], key, path)
    for key, entry in auths.items():
        if normalize_registry(key) == registry:
            return _decode(entry, key, path)
    return None


def _decode(entry, key: str, path: Path) -> Credentials | None:
    if not isinstance(entry, dict):
        raise errors.CredentialError(f"cannot read credentials from {path}: the entry for "
                                     f"{key!r} is not an object")
    user = password = ""
    if entry.get("auth"):
        try:
            decoded = base64.b64decode(entry["auth"], validate=True).decode()
        except (binascii.Error, ValueError, TypeError):
            raise errors.CredentialError(f"cannot read credentials from {path}: the auth of "
                                         f"{key!r} is not base64 of USER:PASSWORD") from None
        user, sep, password = decoded.partition(":")
        if not sep:         # as Docker and containers/image: a malformed entry is skipped
            user = password = ""
        password = password.strip("\x00")
    token = entry.get("identitytoken") or ""
    if not isinstance(token, str):
        token = ""
    found = Credentials(user, password, token)
    return found if found else None


def helper_server_urls(registry: str) -> list[str]:
    """What a credential helper is asked for: Docker Hub under Docker's key, then podman's."""
    return [DOCKER_HUB_KEY, DOCKER_HUB] if registry == DOCKER_HUB else [registry]


def run_helper(helper: str, registry: str, path: Path, env) -> Credentials | None:
    """Runs docker-credential-<helper> get for registry; None when it has nothing stored."""
    import subprocess
    if not isinstance(helper, str) or not _HELPER_NAME.match(helper):
        raise errors.CredentialError(f"cannot read credentials from {path}: {str(helper)[:60]!r}"
                                     " is not a credential helper name")
    program = f"docker-credential-{helper}"
    for server in helper_server_urls(registry):
        try:
            done = subprocess.run([program, "get"], input=server.encode(), capture_output=True,
                                  timeout=_HELPER_TIMEOUT, env=dict(env), check=False)
        except FileNotFoundError:
            raise errors.CredentialError(f"credential helper {program} (named in {path}) is "
                                         "not on PATH") from None
        except (OSError, subprocess.TimeoutExpired) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "timed out"
            raise errors.CredentialError(f"credential helper {program} failed for {server}: "
                                         f"{reason}") from None
        if done.returncode != 0:
            said = (done.stdout or done.stderr).decode(errors="replace").strip()
            if "credentials not found" in said.lower():
                continue
            first = said.splitlines()[0][:200] if said else f"exit status {done.returncode}"
            raise errors.CredentialError(f"credential helper {program} failed for {server}: "
                                         f"{first}")
        try:
            answer = json.loads(done.stdout)
            user, secret = answer.get("Username") or "", answer.get("Secret") or ""
            if not isinstance(user, str) or not isinstance(secret, str):
                raise TypeError
        except (ValueError, TypeError, AttributeError):
            raise errors.CredentialError(f"credential helper {program} answered {server} "
                                         "with something other than "
                                         "{ServerURL, Username, Secret} JSON") from None
        if user == "<token>":
            return Credentials(identity_token=secret) if secret else None
        found = Credentials(user, secret)
        if found:
            return found
    return None
