"""Registry authentication: the WWW-Authenticate parser, realm safety, and the Bearer and
Basic flows end to end against registry 2.8 with the tests' token server, htpasswd, and a
CDN that must never see Authorization; no secret in any error or log line."""

from __future__ import annotations

import base64
import hashlib
import logging

import pytest
from registry_servers import (IDENTITY_TOKEN, PASSWORD, SERVICE, USER, FakeClock, Fault,
                              ThreadServer, _Handler, make_client)

from layerstore import errors
from layerstore.registry.auth import Challenge, check_realm, merge_scopes, parse_challenges
from layerstore.registry.credentials import Credentials
from layerstore.registry.transport import Transport

ALICE = Credentials(USER, PASSWORD)


# -- the challenge --------------------------------------------------------------------------

@pytest.mark.parametrize("header, expected", [
    ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
     'scope="repository:samalba/my-app:pull,push"',
     [("bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                  "scope": "repository:samalba/my-app:pull,push"},
       ("repository:samalba/my-app:pull,push",))]),
    # one scope attribute holding two scopes, as registry 2.8 asks for a mount
    ('Bearer realm="http://t/token",service="s",'
     'scope="repository:hand/push:pull,push repository:corpus/base:pull",'
     'error="insufficient_scope"',
     [("bearer", {"realm": "http://t/token", "service": "s", "error": "insufficient_scope",
                  "scope": "repository:hand/push:pull,push repository:corpus/base:pull"},
       ("repository:hand/push:pull,push", "repository:corpus/base:pull"))]),
    # scope given twice, spaces around "=", an unquoted token value, upper-case names
    ('BEARER Realm = "https://r/t" , scope=repository:a:pull, SCOPE="repository:b:pull"',
     [("bearer", {"realm": "https://r/t", "scope": "repository:a:pull"},
       ("repository:a:pull", "repository:b:pull"))]),
    # quoted commas and an escaped quote stay inside their value
    (r'Basic realm="Registry, \"private\" zone", charset="UTF-8"',
     [("basic", {"realm": 'Registry, "private" zone', "charset": "UTF-8"}, ())]),
    # two challenges in one header, and a token68 one (skipped over, not mistaken)
    ('Negotiate abc123==, Basic realm="r", Bearer realm="https://t/",service="x"',
     [("negotiate", {}, ()), ("basic", {"realm": "r"}, ()),
      ("bearer", {"realm": "https://t/", "service": "x"}, ())]),
    ('', []),
    ('"garbage", =, Bearer realm="ok"', [("bearer", {"realm": "ok"}, ())]),
])
def test_challenges_are_parsed(header, expected):
    got = [(c.scheme, c.params, c.scopes) for c in parse_challenges(header)]
    assert got == expected


def test_challenges_from_several_header_lines():
    got = parse_challenges(['Basic realm="a"', 'Bearer realm="https://b",scope="x y"'])
    assert [c.scheme for c in got] == ["basic", "bearer"] and got[1].scopes == ("x", "y")
    assert isinstance(got[0], Challenge) and got[1].realm == "https://b"


def test_scopes_on_one_resource_are_merged():
    assert merge_scopes(["repository:a:pull", "repository:a:push,pull", "repository:b:pull",
                         "registry:catalog:*"]) == {"repository:a:pull,push",
                                                    "repository:b:pull", "registry:catalog:*"}


# -- realm safety ---------------------------------------------------------------------------

@pytest.mark.parametrize("realm, registry, insecure, allow, ok", [
    ("https://auth.docker.io/token", "registry-1.docker.io", False, False, True),
    ("http://auth.example/token", "reg.example", False, False, False),
    ("http://auth.example/token", "reg.example", True, False, True),
    ("ftp://auth.example/token", "reg.example", True, False, False),
    ("file:///etc/passwd", "reg.example", True, False, False),
    ("https://127.0.0.1/token", "reg.example", False, False, False),
    ("https://169.254.169.254/latest/meta-data", "reg.example", False, False, False),
    ("https://10.0.0.8/token", "reg.example", False, False, False),
    ("https://[::1]:5001/token", "reg.example", False, False, False),
    ("https://[::ffff:127.0.0.1]/token", "reg.example", False, False, False),
    ("https://localhost/token", "reg.example", False, False, False),
    ("http://127.0.0.1:5000/token", "127.0.0.1:5000", True, False, True),     # its own host
    ("http://127.0.0.1:5001/token", "127.0.0.1:5000", True, False, False),    # another port
    ("https://10.0.0.8/token", "10.0.0.8", False, False, True),               # 443 both
    ("http://127.0.0.1:5001/token", "127.0.0.1:5000", True, True, True),      # tests' allowance
])
def test_realm_safety(realm, registry, insecure, allow, ok):
    if ok:
        assert check_realm(realm, registry, insecure=insecure, allow_private=allow) == realm
    else:
        with pytest.raises(errors.RegistryError, match="refusing token realm"):
            check_realm(realm, registry, insecure=insecure, allow_private=allow)


def test_a_loopback_token_server_on_another_port_is_refused_without_the_allowance(
        token_registry, token_server):
    with make_client(token_registry.host) as c, \
            pytest.raises(errors.RegistryError, match="refusing token realm http://127.0.0.1"):
        c.get_manifest("seed/app", "oci")
    assert token_server.log == []


# -- Bearer end to end ----------------------------------------------------------------------

def test_anonymous_pull_through_a_token_cached_per_scope(token_registry, token_server, seed):
    with make_client(token_registry.host, allow_private_realm=True) as c:
        assert c.get_manifest("seed/app", "oci").digest == seed.app_oci_digest
        assert c.get_manifest("seed/app", "v2s2").digest == seed.app_v2s2_digest
        assert c.head_blob("seed/app", seed.app.layers[0][0]) == seed.app.layers[0][1]
        assert c.get_manifest("seed/multi", "latest").digest == seed.index_digest
    assert token_server.log == [
        {"method": "GET", "user": None, "scopes": ["repository:seed/app:pull"],
         "service": "layerstore-test", "authorization": False, "form": None},
        {"method": "GET", "user": None, "scopes": ["repository:seed/multi:pull"],
         "service": "layerstore-test", "authorization": False, "form": None}]


def test_push_needs_credentials(token_registry, token_server):
    data = b"pushed anonymously?"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with make_client(token_registry.host, allow_private_realm=True) as c, \
            pytest.raises(errors.AuthenticationRequired, match="insufficient_scope"):
        c.push_blob("test/anonymous", digest, data)
    # asked once up front and once more after the 401: never a loop
    assert [e["scopes"] for e in token_server.log] == [["repository:test/anonymous:pull,push"]] * 2


def test_push_with_credentials_gets_a_push_token(token_registry, token_server):
    data = b"pushed by alice"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with make_client(token_registry.host, credentials=ALICE, allow_private_realm=True) as c:
        assert c.push_blob("test/alice", digest, data) == digest
        assert c.head_blob("test/alice", digest) == len(data)
    assert [(e["user"], e["scopes"]) for e in token_server.log] == [
        ("alice", ["repository:test/alice:pull,push"]),
        ("alice", ["repository:test/alice:pull"])]


def test_a_mount_asks_one_token_for_both_repositories(token_registry, token_server, seed):
    digest, size = seed.app.layers[0][:2]
    with make_client(token_registry.host, credentials=ALICE, allow_private_realm=True) as c:
        assert c.mount_blob("test/mounted", digest, "seed/app") is True
        assert c.head_blob("test/mounted", digest) == size
    assert token_server.log[0]["scopes"] == ["repository:seed/app:pull",
                                             "repository:test/mounted:pull,push"]


def test_a_challenge_with_two_space_separated_scopes_gets_a_token_for_both(
        token_registry, token_server, seed):
    """Registry 2.8 answers a mount whose token lacks the source repository with one scope
    attribute holding both scopes; the client must split it into two scope parameters."""
    digest = seed.app.layers[0][0]
    with make_client(token_registry.host, credentials=ALICE, allow_private_realm=True) as c:
        c.ping()
        # The mount POST with a token for the target only (as a client unaware of mounts).
        resp = c._request("POST", f"/v2/test/split/blobs/uploads/?mount={digest}&from=seed/app",
                          "test/split", ("repository:test/split:pull,push",),
                          headers={"Content-Length": "0"}, ok=(201,))
        assert resp.status == 201
    assert [e["scopes"] for e in token_server.log] == [
        ["repository:test/split:pull,push"],
        ["repository:seed/app:pull", "repository:test/split:pull,push"]]


def test_an_identity_token_is_exchanged_with_the_oauth2_post(token_registry, token_server):
    data = b"pushed with an identity token"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    creds = Credentials(identity_token=IDENTITY_TOKEN)
    with make_client(token_registry.host, credentials=creds, allow_private_realm=True) as c:
        c.push_blob("test/oauth", digest, data)
    first = token_server.log[0]
    assert (first["method"], first["user"], first["authorization"]) == ("POST", "alice", False)
    assert first["form"] == ["client_id", "grant_type", "refresh_token", "scope", "service"]


def test_a_token_under_access_token_and_without_expires_in(token_registry, token_server, seed):
    token_server.field, token_server.expires_in = "access_token", None
    clock = FakeClock()
    with make_client(token_registry.host, clock=clock, allow_private_realm=True) as c:
        c.get_manifest("seed/app", "oci")
        clock.now += 50                 # within the 60 s a missing expires_in means
        c.get_manifest("seed/app", "oci")
        assert c.token_requests == 1
        clock.now += 10
        c.get_manifest("seed/app", "oci")
        assert c.token_requests == 2


def test_a_token_is_refreshed_before_it_expires(token_registry, token_server, seed):
    token_server.expires_in = 300
    clock = FakeClock()
    with make_client(token_registry.host, clock=clock, allow_private_realm=True) as c:
        c.get_manifest("seed/app", "oci")
        clock.now += 200
        c.get_manifest("seed/app", "oci")
        assert c.token_requests == 1
        before = c.counters.requests
        clock.now += 80                 # 280 s: inside the last 10 % of its life
        c.get_manifest("seed/app", "oci")
        assert c.token_requests == 2
        # a token request and the manifest GET: no 401 round trip
        assert c.counters.requests - before == 2


def test_an_expired_token_the_registry_refuses_is_replaced_once(token_registry, token_server,
                                                                seed):
    token_server.expired = 1            # the first token expired 600 s ago: past the leeway
    with make_client(token_registry.host, allow_private_realm=True) as c:
        assert c.get_manifest("seed/app", "oci").digest == seed.app_oci_digest
        assert c.token_requests == 2


def test_a_token_that_keeps_being_refused_is_an_error_not_a_loop(token_registry, token_server):
    token_server.expired = 100
    with make_client(token_registry.host, allow_private_realm=True) as c, \
            pytest.raises(errors.AuthenticationRequired, match="invalid_token"):
        c.get_manifest("seed/app", "oci")
    assert len(token_server.log) == 2


def test_a_token_that_expires_mid_blob_is_replaced_for_the_resume(token_proxy, token_server,
                                                                  seed):
    """The connection breaks, and the registry refuses the token on the resume (it expired
    during a long download): a new token, and the download goes on from where it was."""
    digest, size, blob, _ = seed.app.layers[0]
    token_proxy.add(Fault("reset", "GET", f"/blobs/{digest}", after=300_000))
    token_proxy.add(Fault("status", "GET", f"/blobs/{digest}", status=401, headers={
        "WWW-Authenticate": f'Bearer realm="{token_server.realm}",service="{SERVICE}",'
                            f'scope="repository:seed/app:pull",error="invalid_token"'}))
    with make_client(token_proxy.host, allow_private_realm=True) as c:
        with c.get_blob("seed/app", digest, size) as r:
            assert r.read() == blob
            assert (r.resumes, r.bytes_received) == (1, size)
        assert c.token_requests == 2
    gets = [(e["range"] is not None, e["status"]) for e in token_proxy.log
            if e["path"].endswith(digest)]
    assert gets == [(False, 200), (True, 401), (True, 206)]


def test_wrong_credentials_at_the_token_server(token_registry, token_server):
    with make_client(token_registry.host, credentials=Credentials(USER, "wrong-Pa55"),
                     allow_private_realm=True) as c, \
            pytest.raises(errors.AuthenticationRequired,
                          match=r"token server 127\.0\.0\.1:\d+ refused a token as alice"):
        c.get_manifest("seed/app", "oci")


# -- Basic ----------------------------------------------------------------------------------

def test_basic_auth(htpasswd_registry, seed):
    with make_client(htpasswd_registry.host) as c, \
            pytest.raises(errors.AuthenticationRequired, match="needs credentials"):
        c.get_manifest("seed/app", "v2s2")
    with make_client(htpasswd_registry.host, credentials=Credentials(USER, "nope")) as c, \
            pytest.raises(errors.AuthenticationRequired):
        c.get_manifest("seed/app", "v2s2")
    with make_client(htpasswd_registry.host, credentials=ALICE) as c:
        assert c.get_manifest("seed/app", "v2s2").digest == seed.app_v2s2_digest
        data = b"pushed with basic auth"
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        c.push_blob("test/basic", digest, data)
        assert c.head_blob("test/basic", digest) == len(data)


def test_basic_credentials_come_from_the_auth_file(htpasswd_registry, seed, tmp_path,
                                                   monkeypatch):
    authfile = tmp_path / "auth.json"
    authfile.write_text('{"auths": {"%s": {"auth": "%s"}}}' % (
        htpasswd_registry.host, base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()))
    with make_client(htpasswd_registry.host, authfile=str(authfile)) as c:
        assert c.get_manifest("seed/app", "v2s2").digest == seed.app_v2s2_digest


# -- the CDN --------------------------------------------------------------------------------

def test_a_blob_redirected_to_the_cdn_goes_without_authorization(cdn_registry, seed):
    registry, cdn = cdn_registry
    digest, size, blob, _ = seed.app.layers[0]
    with make_client(registry.host, credentials=ALICE, allow_private_realm=True) as c:
        with c.get_blob("seed/app", digest, size) as r:
            assert r.read() == blob and r.verified
        assert c.get_blob_bytes("seed/app", seed.app.config_digest) == seed.app.config
    gets = [e for e in cdn.log if e["method"] == "GET"]
    assert len(gets) == 2 and not any(e["authorization"] for e in cdn.log)
    # The registry itself does require a token (else the test would prove nothing).
    assert Transport().request("GET", f"http://{registry.host}/v2/seed/app/blobs/{digest}"
                               ).status == 401


class _RecordHandler(_Handler):
    def _any(self):
        self.body()
        self.owner.log.append((self.command, self.headers.get("Authorization")))
        self.reply(202, headers={"Location": self.path, "Range": "0-0"})

    do_PATCH = do_PUT = do_GET = _any


class Recorder(ThreadServer):
    handler = _RecordHandler

    def __init__(self):
        self.log = []
        super().__init__()


def test_an_upload_location_on_another_host_gets_no_authorization(token_proxy, token_server):
    """The registry may send uploads elsewhere (a storage service): the token stays home."""
    other = Recorder()
    try:
        token_proxy.add(Fault("headers", "POST", "/blobs/uploads/",
                              headers={"Location": f"{other.url}/upload/1?state=x"}))
        with make_client(token_proxy.host, credentials=ALICE, allow_private_realm=True) as c:
            upload = c.start_upload("test/elsewhere")
            upload.patch(b"x")
        assert [e["authorization"] for e in token_proxy.log if e["method"] == "POST"] == [True]
        assert other.log == [("PATCH", None)]
    finally:
        other.stop()


# -- secrets --------------------------------------------------------------------------------

def test_no_secret_in_any_error_or_log_line(htpasswd_registry, token_registry, token_server,
                                            tmp_path, caplog):
    secrets = [PASSWORD, IDENTITY_TOKEN, "wrong-Pa55word",
               base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
               base64.b64encode(f"{USER}:wrong-Pa55word".encode()).decode()]
    caplog.set_level(logging.DEBUG)
    failures = []

    def attempt(fn):
        try:
            fn()
        except errors.LayerstoreError as exc:
            failures.append(exc)
        else:
            raise AssertionError(f"{fn} did not fail")

    wrong = Credentials(USER, "wrong-Pa55word")
    with make_client(htpasswd_registry.host, credentials=wrong) as c:
        attempt(lambda: c.get_manifest("seed/app", "v2s2"))
        attempt(lambda: c.get_blob("seed/app", "sha256:" + "0" * 64))
    with make_client(token_registry.host, credentials=wrong, allow_private_realm=True) as c:
        attempt(lambda: c.get_manifest("seed/app", "oci"))
    with make_client(token_registry.host, credentials=Credentials(identity_token="bad-" +
                     IDENTITY_TOKEN), allow_private_realm=True) as c:
        attempt(lambda: c.get_manifest("seed/app", "oci"))
    with make_client(token_registry.host, credentials=ALICE) as c:     # realm refused
        attempt(lambda: c.get_manifest("seed/app", "oci"))
    with make_client(token_registry.host, credentials=ALICE, allow_private_realm=True) as c:
        attempt(lambda: c.get_manifest("seed/app", "no-such-tag"))
        attempt(lambda: c.get_manifest("nosuch/repo", "latest"))
    with make_client(htpasswd_registry.host, credentials=ALICE) as c:
        c.get_manifest("seed/app", "v2s2")          # a success logs too
    assert len(failures) == 7
    texts = [t for e in failures for t in (str(e), repr(e), *map(str, e.args))]
    texts += [r.getMessage() for r in caplog.records]
    for secret in secrets:
        assert not [t for t in texts if secret in t], secret
