"""Authorization for one registry: the WWW-Authenticate challenge, bearer tokens, Basic.

The flow (Docker's token specification, as Docker Hub serves it):
  1. GET /v2/ answers 401 with `WWW-Authenticate: Bearer realm="https://auth.docker.io/token",
     service="registry.docker.io"` (or Basic, or 200 when the registry is open).
  2. For each set of scopes ("repository:library/python:pull", "...:pull,push") the client
     asks the realm: GET realm?service=...&scope=...&scope=... with Basic credentials when it
     has them, or POST grant_type=refresh_token when it holds an identity token.  The answer
     is JSON with token (or access_token) and expires_in (60 s when absent or smaller).
  3. Requests to the registry carry `Authorization: Bearer <token>`.  A 401 that names
     other scopes (insufficient_scope; one scope attribute may hold several, space
     separated) or says invalid_token makes the client fetch a new token once and retry.
Tokens are cached per scope set and refreshed shortly before they expire.  The Authorization
header goes only to the registry's own host (client.py checks the URL; urllib3 drops it on
a redirect to another host), Basic credentials only to the registry and to its realm.

Realm safety, after go-containerregistry's validateRealmURL: the realm must be https
(http only when the registry itself is insecure), and a realm on a loopback, private or
link-local address is refused unless it is the registry's own host:port (a registry must not
make the client send credentials to services on the client's network).  Tests, whose token
server listens on another loopback port, pass allow_private_realm=True.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

from .. import errors
from .credentials import Credentials
from .transport import Transport, is_loopback, ip_of, split_host

MIN_TOKEN_SECONDS = 60          # Docker's minimum: a shorter expires_in is read as 60
CLIENT_ID = "layerstore"

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN_RE = re.compile(_TOKEN)
_TOKEN68_RE = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_QUOTED_RE = re.compile(r'"((?:[^"\\]|\\.)*)"', re.S)
# An unquoted value should be a token; registries in the wild also send ":" and "/" in one.
_BARE_VALUE_RE = re.compile(r'[^\s,"]+')


@dataclass(frozen=True)
class Challenge:
    """One challenge of a WWW-Authenticate header: scheme lowercased ("bearer", "basic"),
    auth-params with lowercased names, and the scopes of every scope parameter split on
    white space."""

    scheme: str
    params: dict = field(default_factory=dict)
    scopes: tuple[str, ...] = ()

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def error(self) -> str | None:
        return self.params.get("error")


def parse_challenges(values) -> list[Challenge]:
    """Every challenge in one or several WWW-Authenticate header values (RFC 9110 11.6.1:
    `scheme param=value, param="quoted, value"`, challenges separated by commas).  What
    cannot be read is skipped, never guessed."""
    if isinstance(values, str):
        values = [values]
    found: list[Challenge] = []
    for value in values:
        found.extend(_parse_one(value or ""))
    return found


def _parse_one(text: str) -> list[Challenge]:
    out: list[tuple[str, dict, list]] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t,":
            i += 1
        m = _TOKEN_RE.match(text, i)
        if not m:
            i = _skip_item(text, i)
            continue
        name, j = m.group(), m.end()
        k = j
        while k < n and text[k] in " \t":
            k += 1
        if k < n and text[k] == "=" and out and not text.startswith("==", k):
            # An auth-param of the current challenge.
            k += 1
            while k < n and text[k] in " \t":
                k += 1
            q = _QUOTED_RE.match(text, k)
            if q:
                value, i = re.sub(r"\\(.)", r"\1", q.group(1), flags=re.S), q.end()
            else:
                v = _BARE_VALUE_RE.match(text, k)
                value, i = (v.group(), v.end()) if v else ("", k)
            key = name.lower()
            if key == "scope":
                out[-1][2].extend(value.split())
            if key not in out[-1][1]:
                out[-1][1][key] = value
            continue
        # A new challenge: its scheme, then perhaps a token68 credential (Negotiate, ...),
        # which no registry uses: skipped.
        out.append((name.lower(), {}, []))
        i = j
        while i < n and text[i] in " \t":
            i += 1
        t = _TOKEN68_RE.match(text, i)
        if t and t.group().endswith("=") and (t.end() == n or text[t.end()] in " \t,"):
            i = t.end()
    return [Challenge(scheme, params, tuple(dict.fromkeys(scopes)))
            for scheme, params, scopes in out]


def _skip_item(text: str, i: int) -> int:
    """Past an unreadable piece: to the next comma outside quotes."""
    n = len(text)
    while i < n and text[i] != ",":
        if text[i] == '"':
            q = _QUOTED_RE.match(text, i)
            i = q.end() if q else n
        else:
            i += 1
    return i


def merge_scopes(scopes) -> frozenset:
    """Scopes with the actions on one resource merged: "repository:a:pull" and
    "repository:a:push,pull" -> {"repository:a:pull,push"} (a registry may name the actions
    in another order than we did)."""
    actions: dict[str, set] = {}
    for scope in scopes:
        resource, sep, names = scope.rpartition(":")
        if not sep or ":" not in resource:
            actions.setdefault(scope, set())
            continue
        actions.setdefault(resource, set()).update(a for a in names.split(",") if a)
    return frozenset(f"{r}:{','.join(sorted(a))}" if a else r for r, a in actions.items())


def check_realm(realm: str, registry_host: str, *, insecure: bool,
                allow_private: bool = False) -> str:
    """realm if a token may be asked of it on behalf of registry_host, else
    errors.RegistryError saying why."""
    parts = urlsplit(realm)
    shown = f"{parts.scheme}://{parts.netloc}{parts.path}"
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise errors.RegistryError(f"{registry_host}: refusing token realm {shown!r}: not an "
                                   "https URL")
    if parts.scheme == "http" and not insecure:
        raise errors.RegistryError(f"{registry_host}: refusing token realm {shown}: plain http "
                                   "for a registry that is not insecure (credentials would "
                                   "travel in clear)")
    hostname = parts.hostname
    ip = ip_of(hostname)
    private = is_loopback(hostname) or (ip is not None and (
        ip.is_private or ip.is_link_local or ip.is_unspecified or ip.is_multicast
        or (isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None)))
    if private and not allow_private:
        reg_name, reg_port = split_host(registry_host)
        default = 443 if parts.scheme == "https" else 80
        same = (reg_name.strip("[]").lower() == hostname.lower()
                and (reg_port or default) == (parts.port or default))
        if not same:
            raise errors.RegistryError(f"{registry_host}: refusing token realm {shown}: a "
                                       "loopback, private or link-local address that is not "
                                       "the registry's own")
    return realm


@dataclass
class _Token:
    value: str = field(repr=False)
    refresh_at: float


class Authenticator:
    """The Authorization header for requests to one registry host.

    credentials(repository) returns the Credentials to use for that repository or None; it
    is called only when the registry asks for authentication, and its result is kept.
    clock is time.monotonic; tests pass their own to expire tokens.
    """

    def __init__(self, transport: Transport, host: str, credentials, *,
                 allow_private_realm: bool = False, clock=time.monotonic):
        self._transport, self.host = transport, host
        self._credentials_for = credentials
        self._creds: dict = {}
        self._allow_private = allow_private_realm
        self._clock = clock
        self._challenge: Challenge | None = None
        self._tokens: dict[frozenset, _Token] = {}
        self._lock = threading.Lock()
        self.token_requests = 0

    def learn(self, challenges: list[Challenge]) -> None:
        """Takes the registry's scheme from a ping's (or a 401's) challenges: Bearer is
        preferred over Basic, others are ignored."""
        for scheme in ("bearer", "basic"):
            for c in challenges:
                if c.scheme == scheme and (scheme == "basic" or c.realm):
                    self._challenge = c
                    return

    def header(self, scopes, repository: str | None) -> str | None:
        """Authorization for a request needing scopes, or None when the registry wants none
        (or we have nothing to offer it)."""
        c = self._challenge
        if c is None:
            return None
        if c.scheme == "basic":
            creds = self.credentials(repository)
            if creds and creds.password:
                raw = f"{creds.username}:{creds.password}".encode()
                return "Basic " + base64.b64encode(raw).decode()
            return None
        key = merge_scopes(scopes)
        with self._lock:
            token = self._tokens.get(key)
            if token is None or self._clock() >= token.refresh_at:
                token = self._tokens[key] = self._fetch(c, key, repository)
        return f"Bearer {token.value}"

    def unauthorized(self, challenges: list[Challenge], scopes, repository: str | None):
        """After a 401: the scopes to retry the request with (a fresh token fetched for
        them), or None when retrying cannot help (then the caller reports the 401)."""
        bearer = next((c for c in challenges if c.scheme == "bearer" and c.realm), None)
        if bearer is None:
            basic = next((c for c in challenges if c.scheme == "basic"), None)
            if basic is None or (self._challenge is not None
                                 and self._challenge.scheme == "basic"):
                return None     # Basic credentials were sent (or none exist): they failed
            self._challenge = basic
            creds = self.credentials(repository)
            return tuple(scopes) if creds and creds.password else None
        self._challenge = bearer
        wanted = merge_scopes((*scopes, *bearer.scopes))
        with self._lock:
            self._tokens.pop(wanted, None)
            self._tokens[wanted] = self._fetch(bearer, wanted, repository)
        return tuple(sorted(wanted))

    def credentials(self, repository: str | None) -> Credentials | None:
        if repository not in self._creds:
            self._creds[repository] = self._credentials_for(repository)
        return self._creds[repository]

    def _fetch(self, challenge: Challenge, scopes: frozenset, repository) -> _Token:
        realm = check_realm(challenge.realm, self.host,
                            insecure=self._transport.insecure(self.host),
                            allow_private=self._allow_private)
        creds = self.credentials(repository)
        params = [("service", challenge.service)] if challenge.service else []
        headers = {}
        self.token_requests += 1
        if creds and creds.identity_token:
            form = params + [("grant_type", "refresh_token"),
                             ("refresh_token", creds.identity_token),
                             ("client_id", CLIENT_ID), ("scope", " ".join(sorted(scopes)))]
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            resp = self._transport.request("POST", realm, headers=headers,
                                           body=urlencode(form).encode(), redirect=False)
        else:
            query = urlencode(params + [("scope", s) for s in sorted(scopes)])
            url = realm + ("&" if urlsplit(realm).query else "?") + query if query else realm
            if creds and creds.password:
                raw = f"{creds.username}:{creds.password}".encode()
                headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
            resp = self._transport.request("GET", url, headers=headers)
        shown = urlsplit(realm).netloc
        who = f" as {creds.username}" if creds and creds.username else " anonymously"
        if resp.status in (401, 403):
            raise errors.AuthenticationRequired(
                f"{self.host}: the token server {shown} refused a token{who} for "
                f"{' '.join(sorted(scopes)) or 'the registry'} ({resp.status})",
                status=resp.status)
        if resp.status != 200:
            raise errors.RegistryError(f"{self.host}: the token server {shown} answered "
                                       f"{resp.status}", status=resp.status)
        try:
            answer = json.loads(resp.data)
            value = answer.get("token") or answer.get("access_token")
            expires = answer.get("expires_in") or MIN_TOKEN_SECONDS
            if not isinstance(value, str) or not value or not isinstance(expires, (int, float)):
                raise ValueError
        except (ValueError, AttributeError):
            raise errors.RegistryError(f"{self.host}: the token server {shown} answered "
                                       "without a token") from None
        expires = max(float(expires), MIN_TOKEN_SECONDS)
        # Refresh a little early, so a token does not expire between check and use.
        return _Token(value, self._clock() + expires - min(30.0, expires / 10))
