"""The registry client's HTTP: redirects without Authorization, TLS and plain-http policy,
retries and Retry-After, and the blob reader's verification and Range resume, against real
servers on 127.0.0.1 (tests/registry_servers.py)."""

from __future__ import annotations

import email.utils
import ssl
import time

import pytest
from registry_servers import CDN, Fault, ThreadServer, _Handler, make_client

from layerstore import errors
from layerstore.registry.transport import RETRY_STATUSES, Transport, retry_after, split_host


def _app_layer(seed):
    digest, size, blob, _ = seed.app.layers[0]
    return digest, size, blob


# -- urllib3 and Authorization on redirects -------------------------------------------------

class _RedirectHandler(_Handler):
    def do_GET(self):
        self.owner.seen.append((self.path, self.headers.get("Authorization")))
        if self.path == "/here":
            return self.reply(307, headers={"Location": "/there"})
        if self.path.startswith("/away"):
            return self.reply(307, headers={"Location": self.owner.target + self.path})
        self.reply(200, b"ok")


class Redirector(ThreadServer):
    handler = _RedirectHandler

    def __init__(self, target: str):
        self.target, self.seen = target, []
        super().__init__()


@pytest.fixture
def redirect_pair(tmp_path):
    cdn = CDN()
    cdn.root = tmp_path.resolve()
    (tmp_path / "away").write_bytes(b"blob bytes")
    red = Redirector(cdn.url)
    yield red, cdn
    red.stop()
    cdn.stop()


@pytest.mark.parametrize("auth", ["Bearer registry-token", "Basic YWxpY2U6czNjcmV0"])
def test_urllib3_drops_authorization_on_a_redirect_to_another_host(redirect_pair, auth):
    red, cdn = redirect_pair
    t = Transport()
    resp = t.request("GET", f"{red.url}/away", headers={"Authorization": auth})
    assert resp.status == 200 and resp.data == b"blob bytes"
    assert resp.url == f"{cdn.url}/away"
    assert red.seen == [("/away", auth)]            # the registry got it ...
    assert cdn.log == [{"method": "GET", "path": "/away", "authorization": False,
                        "range": None}]              # ... the other port did not
    assert not cdn.violations
    assert t.counters.requests == 2


def test_a_redirect_on_the_same_host_keeps_authorization(redirect_pair):
    """The check above can see the header: on the same host and port it travels on."""
    red, _ = redirect_pair
    resp = Transport().request("GET", f"{red.url}/here", headers={"Authorization": "Bearer t"})
    assert resp.status == 200
    assert red.seen == [("/here", "Bearer t"), ("/there", "Bearer t")]


# -- TLS and plain HTTP ---------------------------------------------------------------------

@pytest.mark.parametrize("host, options, insecure", [
    ("localhost:5000", {}, True),
    ("127.0.0.1:5000", {}, True),
    ("127.8.9.10", {}, True),
    ("[::1]:5000", {}, True),
    ("registry-1.docker.io", {}, False),
    ("10.1.2.3:5000", {}, False),
    ("myreg:5000", {"insecure_registries": ["myreg:5000"]}, True),
    ("myreg:5001", {"insecure_registries": ["myreg:5000"]}, False),
    ("myreg:5001", {"insecure_registries": ["myreg"]}, True),
    ("MyReg", {"insecure_registries": ["myreg"]}, True),
    ("10.1.2.3:5000", {"insecure_registries": ["10.0.0.0/8"]}, True),
    ("11.1.2.3:5000", {"insecure_registries": ["10.0.0.0/8"]}, False),
    ("[fd00::1]:443", {"insecure_registries": ["[fd00::1]"]}, True),
    ("quay.io", {"tls_verify": False}, True),
])
def test_which_hosts_are_insecure(host, options, insecure):
    assert Transport(**options).insecure(host) is insecure


@pytest.mark.parametrize("host, split", [
    ("reg", ("reg", None)), ("reg:5000", ("reg", 5000)), ("[::1]:5000", ("::1", 5000)),
    ("[::1]", ("::1", None)), ("127.0.0.1:80", ("127.0.0.1", 80)),
])
def test_split_host(host, split):
    assert split_host(host) == split


def test_an_insecure_host_without_tls_is_spoken_to_over_plain_http(open_registry):
    t = Transport()
    resp = t.request("GET", t.url(open_registry.host, "/v2/"))
    assert resp.status == 200
    assert resp.url == f"http://{open_registry.host}/v2/"
    assert t.url(open_registry.host, "/v2/").startswith("http://")


def test_trying_tls_on_an_insecure_host_loads_no_ca_certificates(open_registry, monkeypatch):
    """Every run tries TLS first on an insecure host; loading the system's CA bundle for a
    connection that verifies nothing cost 30 ms of each pull."""
    loads = []
    real = ssl.SSLContext.load_default_certs
    monkeypatch.setattr(ssl.SSLContext, "load_default_certs",
                        lambda self, *a: loads.append(1) or real(self, *a))
    for _ in range(2):
        t = Transport()
        assert t.request("GET", t.url(open_registry.host, "/v2/")).status == 200
    assert loads == []


def test_a_secure_host_is_never_downgraded_to_plain_http(loopback_name):
    name, address = loopback_name
    plain = CDN(bind=address)
    try:
        t = Transport(retries=0)
        with pytest.raises(errors.RegistryUnreachable) as info:
            t.request("GET", t.url(f"{name}:{plain.port}", "/v2/"))
        assert f"{name}:{plain.port}" in str(info.value)
        assert plain.log == []          # no plain-http request followed
    finally:
        plain.stop()


def test_tls_is_verified_for_a_secure_host(tls_registry):
    _, host, _ = tls_registry
    t = Transport(retries=0)
    with pytest.raises(errors.RegistryUnreachable) as info:
        t.request("GET", t.url(host, "/v2/"))
    message = str(info.value)
    assert "CERTIFICATE_VERIFY_FAILED" in message.upper()
    assert f"--tls-verify=false or --insecure-registry {host}" in message


@pytest.mark.parametrize("how", ["ca_file", "insecure_host_port", "insecure_host",
                                 "tls_verify_false"])
def test_tls_verification_can_be_given_a_ca_or_turned_off(tls_registry, how):
    _, host, cert = tls_registry
    name = host.rpartition(":")[0]
    options = {"ca_file": {"ca_file": str(cert)},
               "insecure_host_port": {"insecure_registries": [host]},
               "insecure_host": {"insecure_registries": [name]},
               "tls_verify_false": {"tls_verify": False}}[how]
    t = Transport(retries=0, **options)
    resp = t.request("GET", t.url(host, "/v2/"))
    assert resp.status == 200 and resp.url.startswith("https://")


def test_a_loopback_tls_registry_is_insecure_by_default(tls_registry):
    reg, _, _ = tls_registry
    t = Transport(retries=0)
    resp = t.request("GET", t.url(reg.host, "/v2/"))
    assert resp.status == 200 and resp.url == f"https://{reg.host}/v2/"


# -- retries --------------------------------------------------------------------------------

@pytest.mark.parametrize("status", sorted(RETRY_STATUSES))
def test_retried_statuses_back_off_and_succeed(proxy, seed, status):
    sleeps = []
    proxy.add(Fault("status", "GET", "/manifests/v2s2", times=2, status=status))
    with make_client(proxy.host, sleeps) as c:
        m = c.get_manifest("seed/app", "v2s2")
        assert m.digest == seed.app_v2s2_digest
        assert c.counters.retries == 2
    assert [e["status"] for e in proxy.log if "/manifests/" in e["path"]] == [status, status, 200]
    # 1 s, then 3 s, each +-10 % jitter
    assert 0.9 <= sleeps[0] <= 1.1 and 2.7 <= sleeps[1] <= 3.3


def test_other_statuses_are_not_retried(proxy):
    sleeps = []
    proxy.add(Fault("status", "GET", "/manifests/v2s2", status=400,
                    body=b'{"errors":[{"code":"UNSUPPORTED","message":"no"}]}'))
    with make_client(proxy.host, sleeps) as c, pytest.raises(errors.RegistryError) as info:
        c.get_manifest("seed/app", "v2s2")
    assert info.value.status == 400 and info.value.code == "UNSUPPORTED"
    assert sleeps == []


@pytest.mark.parametrize("header", ["2", "date"])
def test_429_is_retried_after_the_retry_after_it_names(proxy, seed, header):
    sleeps = []
    value = header if header != "date" else email.utils.formatdate(time.time() + 20,
                                                                   usegmt=True)
    proxy.add(Fault("status", "GET", "/manifests/v2s2", status=429,
                    headers={"Retry-After": value}))
    with make_client(proxy.host, sleeps) as c:
        assert c.get_manifest("seed/app", "v2s2").digest == seed.app_v2s2_digest
    if header == "date":
        assert len(sleeps) == 1 and 15 <= sleeps[0] <= 21
    else:
        assert sleeps == [2.0]


_LIMITED = {"Retry-After": "5", "ratelimit-limit": "100;w=21600",
            "ratelimit-remaining": "0;w=21600", "docker-ratelimit-source": "192.0.2.1",
            "Content-Type": "application/json"}
_TOOMANY = (b'{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull '
            b'rate limit."}]}')


def test_a_rate_limit_that_persists_names_the_limit_and_when_to_retry(proxy):
    sleeps = []
    proxy.add(Fault("status", "GET", "/manifests/", times=10, status=429, headers=_LIMITED,
                    body=_TOOMANY))
    with make_client(proxy.host, sleeps) as c, pytest.raises(errors.RateLimited) as info:
        c.get_manifest("seed/app", "v2s2")
    e = info.value
    assert sleeps == [5.0, 5.0, 5.0]
    assert (e.status, e.code, e.limit, e.remaining, e.retry_after) == (
        429, "TOOMANYREQUESTS", "100;w=21600", "0;w=21600", 5.0)
    message = str(e)
    assert "rate limit reached (limit 100 per 6 h, 0 remaining)" in message
    assert "You have reached your pull rate limit." in message
    assert "retry after 5 s" in message
    assert c.ratelimit.limit == "100;w=21600" and c.ratelimit.source == "192.0.2.1"


def test_a_long_retry_after_is_not_slept_through(proxy):
    sleeps = []
    proxy.add(Fault("status", "GET", "/manifests/", times=10, status=429,
                    headers={**_LIMITED, "Retry-After": "3600"}, body=_TOOMANY))
    with make_client(proxy.host, sleeps) as c, pytest.raises(errors.RateLimited) as info:
        c.get_manifest("seed/app", "v2s2")
    assert sleeps == []
    assert info.value.retry_after == 3600.0 and "retry after 3600 s" in str(info.value)
    assert len([e for e in proxy.log if "/manifests/" in e["path"]]) == 1


def test_retry_after_forms():
    assert retry_after("120") == 120.0
    assert retry_after(None) is None and retry_after("soon") is None
    assert retry_after(email.utils.formatdate(1000.0, usegmt=True), now=lambda: 990.0) == 10.0
    assert retry_after(email.utils.formatdate(1000.0, usegmt=True), now=lambda: 2000.0) == 0.0


def test_a_refused_connection_is_retried_then_reported(proxy):
    from registry_servers import free_port
    sleeps = []
    host = f"127.0.0.1:{free_port()}"
    with make_client(host, sleeps) as c, pytest.raises(errors.RegistryUnreachable) as info:
        c.get_manifest("seed/app", "v2s2")
    assert len(sleeps) == 3
    assert f"cannot reach {host} after 4 attempts" in str(info.value)
    assert isinstance(info.value, ConnectionError)


# -- the blob reader ------------------------------------------------------------------------

def _read_all(reader, piece=64 << 10) -> bytes:
    out = bytearray()
    while chunk := reader.read(piece):
        out += chunk
    return bytes(out)


def test_a_blob_is_read_whole_and_verified(proxy, seed):
    digest, size, blob = _app_layer(seed)
    with make_client(proxy.host) as c, c.get_blob("seed/app", digest, size) as r:
        assert _read_all(r) == blob
        assert r.verified and (r.requests, r.resumes, r.bytes_received) == (1, 0, size)


def test_a_reset_mid_blob_resumes_with_range_without_restarting(proxy, seed):
    digest, size, blob = _app_layer(seed)
    proxy.add(Fault("reset", "GET", f"/blobs/{digest}", after=300_000))
    with make_client(proxy.host) as c, c.get_blob("seed/app", digest, size) as r:
        assert _read_all(r) == blob
        assert r.verified
        # Each byte arrived once: a restart would have counted the first part twice.
        assert (r.requests, r.resumes, r.bytes_received) == (2, 1, size)
        assert c.counters.resumes == 1
    gets = [e for e in proxy.log if e["path"].endswith(digest)]
    assert gets[0]["range"] is None and gets[0]["fault"] == "reset"
    start = int(gets[1]["range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < start <= 300_000 and gets[1]["status"] == 206


def test_several_resets_resume_each_time(proxy, seed):
    digest, size, blob = _app_layer(seed)
    proxy.add(Fault("reset", "GET", f"/blobs/{digest}", after=300_000))
    proxy.add(Fault("reset", "GET", f"/blobs/{digest}", after=400_000))
    with make_client(proxy.host) as c, c.get_blob("seed/app", digest, size) as r:
        assert _read_all(r) == blob
        assert (r.requests, r.resumes, r.bytes_received) == (3, 2, size)


def test_a_reset_before_the_first_byte_starts_again_without_range(proxy, seed):
    digest, size, blob = _app_layer(seed)
    proxy.add(Fault("reset", "GET", f"/blobs/{digest}", after=0))
    with make_client(proxy.host) as c, c.get_blob("seed/app", digest, size) as r:
        assert _read_all(r) == blob
    assert [e["range"] for e in proxy.log if e["path"].endswith(digest)] == [None, None]


def test_a_server_that_ignores_range_fails_the_resume_clearly(proxy, seed):
    digest, size, blob = _app_layer(seed)
    proxy.add(Fault("reset", "GET", f"/blobs/{digest}", after=300_000))
    proxy.add(Fault("ignore_range", "GET", f"/blobs/{digest}"))
    got = bytearray()
    with make_client(proxy.host) as c, c.get_blob("seed/app", digest, size) as r:
        with pytest.raises(errors.RangeUnsupported) as info:
            while chunk := r.read(64 << 10):
                got += chunk
        assert not r.verified
    start = len(got)
    assert 0 < start < size and bytes(got) == blob[:start]       # nothing handed out twice
    assert (f"broke off after {start} of {size} bytes and cannot resume: the server ignored "
            f"the Range (200, the whole blob again) to Range: bytes={start}-") in str(info.value)
    assert isinstance(info.value, ConnectionError)


def test_a_partial_answer_from_the_wrong_offset_is_refused(proxy, seed):
    digest, size, _ = _app_layer(seed)
    proxy.add(Fault("reset", "GET", f"/blobs/{digest}", after=300_000))
    proxy.add(Fault("status", "GET", f"/blobs/{digest}", status=206, body=b"x" * 10,
                    headers={"Content-Range": f"bytes 0-9/{size}"}))
    with make_client(proxy.host) as c, c.get_blob("seed/app", digest, size) as r:
        with pytest.raises(errors.RangeUnsupported, match="answered 206 Content-Range 'bytes 0-9"):
            _read_all(r)


def test_a_connection_that_breaks_without_progress_gives_up(proxy, seed):
    digest, size, _ = _app_layer(seed)
    sleeps = []
    proxy.add(Fault("reset", "GET", f"/blobs/{digest}", after=100_000))
    proxy.add(Fault("reset", "GET", f"/blobs/{digest}", after=0, times=10))
    with make_client(proxy.host, sleeps) as c, c.get_blob("seed/app", digest, size) as r:
        with pytest.raises(errors.RegistryUnreachable,
                           match="3 attempts to resume from there brought nothing"):
            _read_all(r)
    assert len(sleeps) == 2


def test_bytes_that_do_not_hash_to_the_digest_never_reach_the_end(proxy, seed):
    digest, size, blob = _app_layer(seed)
    proxy.add(Fault("body", "GET", f"/blobs/{digest}", body=blob[:-1] + bytes([blob[-1] ^ 1])))
    with make_client(proxy.host) as c, c.get_blob("seed/app", digest, size) as r:
        with pytest.raises(errors.DigestMismatch, match=f"{size} bytes hash to sha256:"):
            _read_all(r)
        assert not r.verified
        with pytest.raises(errors.DigestMismatch):      # and never an end of file after it
            r.read(1)


@pytest.mark.parametrize("delta", [-1, 1])
def test_a_blob_of_another_size_than_its_descriptor_is_refused(proxy, seed, delta):
    digest, size, _ = _app_layer(seed)
    with make_client(proxy.host) as c, pytest.raises(errors.DigestMismatch,
                                                     match=f"sends {size} bytes, the "
                                                           f"descriptor says {size + delta}"):
        c.get_blob("seed/app", digest, size + delta)


def test_counters_add_up_requests_and_bytes(proxy, seed):
    digest, size, _ = _app_layer(seed)
    with make_client(proxy.host) as c:
        with c.get_blob("seed/app", digest, size) as r:
            _read_all(r)
        c.push_blob("test/counters", "sha256:" + __import__("hashlib").sha256(b"abc").hexdigest(),
                    b"abc")
        counts = c.counters.snapshot()
    assert counts["requests"] == len(proxy.log)
    assert counts["bytes_received"] >= size and counts["bytes_sent"] == 3
