"""Interop: the proxy as curl's own HTTP/3 stack (libcurl + ngtcp2/nghttp3, from curl_cffi) sees it."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from pathlib import Path

import pytest
from curl_cffi import CurlHttpVersion, CurlOpt, Session, requests
from curl_cffi.const import CurlIpResolve

from conftest import Proxy
from quic_proxy_testing import STOP_TIMEOUT

# curl.h: CURLALTSVC_H1, CURLALTSVC_H2, CURLALTSVC_H3 (curl_cffi has no names for them).
ALTSVC_H1, ALTSVC_H2, ALTSVC_H3 = 1 << 3, 1 << 4, 1 << 5

# What CURLINFO_HTTP_VERSION reports.
HTTP_1_1, HTTP_2, HTTP_3 = 2, 3, 30

TIMEOUT = 30
# The proxy listens on 127.0.0.1 only: keep curl from also trying ::1 for "localhost".
IPV4 = {CurlOpt.IPRESOLVE: CurlIpResolve.V4}


def h3(method: str, proxy: Proxy, path: str, **kwargs) -> requests.Response:
    """One request over HTTP/3 only: no fallback to TCP, so a QUIC failure is a test failure."""
    return requests.request(
        method,
        proxy.url(path),
        http_version=CurlHttpVersion.V3ONLY,
        verify=False,
        timeout=TIMEOUT,
        curl_options=IPV4,
        **kwargs,
    )


def test_get_over_http3_reaches_a_backend(proxy: Proxy):
    r = h3("GET", proxy, "/hello?x=1")

    assert r.status_code == 200, r.text
    assert r.http_version == HTTP_3
    seen = r.json()
    assert seen["backend"] in {b.name for b in proxy.backends}
    assert seen["method"] == "GET"
    assert seen["path"] == "/hello"
    assert seen["headers"]["x-forwarded-proto"] == ["https"]


def test_post_over_http3_carries_the_body_intact(proxy: Proxy):
    # Several MiB: well past the flow-control windows and the proxy's small-body pre-read.
    body = os.urandom(3 * 1024 * 1024 + 12345)

    r = h3("POST", proxy, "/upload", data=body, headers={"content-type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    assert r.http_version == HTTP_3
    seen = r.json()
    assert seen["method"] == "POST"
    assert seen["body_bytes"] == len(body)
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()

    echoed = h3("POST", proxy, "/echo", data=body)
    assert echoed.status_code == 200
    assert echoed.http_version == HTTP_3
    assert len(echoed.content) == len(body)
    assert echoed.content == body


def test_sequential_http3_requests_rotate_over_the_backends(proxy: Proxy):
    names = []
    # One session: the requests share a QUIC connection, and the balancer still rotates per request.
    with Session(verify=False, http_version=CurlHttpVersion.V3ONLY, timeout=TIMEOUT, curl_options=IPV4) as s:
        for _ in range(6):
            r = s.get(proxy.url("/"))
            assert r.status_code == 200, r.text
            assert r.http_version == HTTP_3
            names.append(r.json()["backend"])

    assert sorted(names[:3]) == sorted(b.name for b in proxy.backends), names
    assert names[3:] == names[:3], names


def test_https_over_tcp_advertises_http3(proxy: Proxy):
    expected = f'h3=":{proxy.quic_port}"; ma=86400'
    for version, reported in ((CurlHttpVersion.V2TLS, HTTP_2), (CurlHttpVersion.V1_1, HTTP_1_1)):
        r = requests.get(proxy.url("/"), http_version=version, verify=False, timeout=TIMEOUT, curl_options=IPV4)
        assert r.status_code == 200, r.text
        assert r.http_version == reported, version
        assert r.headers.get("alt-svc") == expected, version
        assert r.json()["headers"]["x-forwarded-proto"] == ["https"]


def test_client_with_alt_svc_cache_switches_to_http3(proxy: Proxy, tmp_path: Path):
    cache = tmp_path / "altsvc.txt"
    options = {
        **IPV4,
        CurlOpt.ALTSVC: str(cache),
        CurlOpt.ALTSVC_CTRL: ALTSVC_H1 | ALTSVC_H2 | ALTSVC_H3,
    }
    # The default version, as a browser-like client would use: curl 8.21 takes an h3 alternative only when
    # the request allows HTTP/3 (with V2TLS forced it stays on HTTP/2 despite the cached entry).
    with Session(verify=False, timeout=TIMEOUT, curl_options=options) as first:
        r = first.get(proxy.url("/first"))
        assert r.status_code == 200, r.text
        assert r.http_version == HTTP_2, "with an empty cache the first request goes over TCP"
        assert r.headers.get("alt-svc") == f'h3=":{proxy.quic_port}"; ma=86400'
    # curl writes the cache file when the handle is closed.
    assert f"localhost {proxy.quic_port} h3 localhost {proxy.quic_port}" in cache.read_text()

    # A new session: a new curl handle with no open connection, only the cache file to go by.
    with Session(verify=False, timeout=TIMEOUT, curl_options=options) as second:
        r = second.get(proxy.url("/second"))
        assert r.status_code == 200, r.text
        assert r.http_version == HTTP_3
        assert r.json()["path"] == "/second"


# curl drops connection-specific fields (connection, keep-alive, transfer-encoding, upgrade, TE other than
# trailers) when it builds an HTTP/3 request, so those cannot be sent from here. It does send whatever
# Content-Length it is given: one its (empty) body contradicts, or one that is no number at all, and either
# makes the request malformed (RFC 9114 4.1.2, RFC 9110 8.6).
@pytest.mark.parametrize("content_length", ["5", "abc"], ids=["length-without-body", "non-numeric-length"])
def test_malformed_http3_request_is_refused_before_any_backend(proxy: Proxy, content_length: str):
    marker = f"/malformed-{uuid.uuid4().hex}"

    # Learn the rotation order, so a forwarded request would show up as a skipped backend.
    with Session(verify=False, http_version=CurlHttpVersion.V3ONLY, timeout=TIMEOUT, curl_options=IPV4) as s:
        cycle = [s.get(proxy.url("/")).json()["backend"] for _ in range(3)]

        r = s.get(proxy.url(marker), headers={"content-length": content_length})
        assert r.status_code == 400, r.text
        assert r.http_version == HTTP_3
        assert "Content-Length" in r.text

        after = s.get(proxy.url("/")).json()["backend"]

    assert after == cycle[0], f"rotation {cycle} moved on to {after}: a backend took the malformed request"
    logged = proxy.access_log(marker)
    assert logged["status"] == 400
    assert logged["backend"] == "-"
    assert logged["protocol"] == "h3"


def established_to(ports: set[int]) -> bool:
    """Whether a TCP connection to 127.0.0.1 on one of `ports` is established, per /proc/net/tcp."""
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        remote_ip, remote_port = fields[2].split(":")
        # 0100007F is 127.0.0.1 in the kernel's byte order; state 01 is ESTABLISHED.
        if fields[3] == "01" and remote_ip == "0100007F" and int(remote_port, 16) in ports:
            return True
    return False


def test_sigterm_lets_an_in_flight_http3_request_finish(proxy: Proxy):
    backend_ports = {b.port for b in proxy.backends}
    # These backends are this test's alone; the proxy opens backend connections on demand only.
    assert not established_to(backend_ports)

    outcome: dict = {}

    def slow_request():
        try:
            outcome["response"] = h3("GET", proxy, "/slow?delay_ms=500")
        except Exception as error:  # reported by the assertions below
            outcome["error"] = error

    client = threading.Thread(target=slow_request, name="slow-request", daemon=True)
    client.start()

    # The proxy connecting to a backend means it has accepted the request and is forwarding it.
    deadline = time.monotonic() + 10
    while not established_to(backend_ports):
        assert time.monotonic() < deadline, "the request never reached a backend"
        assert client.is_alive(), f"the request ended before it reached a backend: {outcome}"
        time.sleep(0.005)
    assert client.is_alive(), "the request finished before SIGTERM; it was not in flight"

    status, killed = proxy.process.stop()
    client.join(TIMEOUT)

    assert not killed, f"quic-proxy ignored SIGTERM for {STOP_TIMEOUT}s"
    assert status == 0, f"quic-proxy exited {status}; stderr:\n{proxy.process.stderr()}"
    assert not client.is_alive()
    assert "error" not in outcome, (
        f"in-flight request failed: {outcome['error']}; quic-proxy stderr:\n{proxy.process.stderr()}"
    )
    r = outcome["response"]
    assert r.status_code == 200, r.text
    assert r.http_version == HTTP_3
    assert r.json()["query"] == "delay_ms=500"
    proxy.process.wait_for_message("shutting down: draining in-flight requests", timeout=0)
