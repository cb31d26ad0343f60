"""CONNECT asks a proxy to open a tunnel (RFC 9110 9.3.6). A reverse proxy with no tunnelling route must
answer it itself, 405 with an Allow header, on every protocol, and never forward it to a backend (which would
otherwise see its own address as the target, as happened before)."""

from __future__ import annotations

import h1raw
from h2raw import H2Client
from h3raw import H3Client


def assert_refused_here(status, allow, backend) -> None:
    forwarded = backend.wait_for(lambda seen: any(r.method == "CONNECT" for r in seen), 0.3)
    assert not forwarded, "CONNECT reached a backend:\n" + backend.describe()
    assert status == 405, f"CONNECT answered {status}"
    assert allow, "a 405 must carry Allow (RFC 9110 15.5.6)"
    assert "CONNECT" not in allow.upper().replace(" ", "").split(","), f"Allow lists CONNECT: {allow}"


def test_connect_over_http1_is_refused_by_the_proxy(proxy_with_raw):
    proxy, backend = proxy_with_raw
    target = f"127.0.0.1:{backend.port}"
    with h1raw.H1Client(proxy.http) as client:
        client.send(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        response = client.read_response(method="CONNECT")
    assert response is not None, "the proxy closed the connection without an answer"
    assert_refused_here(response.status, response.header("allow"), backend)
    proxy.assert_serving()


def test_connect_over_https_http1_is_refused_by_the_proxy(proxy_with_raw):
    proxy, backend = proxy_with_raw
    with h1raw.H1Client(proxy.https, tls=True) as client:
        client.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        response = client.read_response(method="CONNECT")
    assert response is not None, "the proxy closed the connection without an answer"
    assert_refused_here(response.status, response.header("allow"), backend)
    proxy.assert_serving()


def test_connect_over_http2_is_refused_by_the_proxy(proxy_with_raw):
    proxy, backend = proxy_with_raw
    with H2Client(proxy.https) as client:
        stream_id = client.send_headers([(":method", "CONNECT"), (":authority", "example.com:443")], end_stream=True)
        stream = client.wait_stream(stream_id)
    assert stream.headers is not None, f"no response: {stream!r}"
    assert_refused_here(stream.status, stream.header("allow"), backend)
    proxy.assert_serving()


def test_connect_over_http3_is_refused_by_the_proxy(proxy_with_raw):
    proxy, backend = proxy_with_raw
    with H3Client.connect(proxy.quic) as client:
        stream_id = client.new_stream()
        client.send_headers(stream_id, [(":method", "CONNECT"), (":authority", "example.com:443")], end=True)
        stream = client.wait_stream(stream_id)
        assert client.terminated is None, client.describe_close()
        # The rest of the connection is unharmed.
        follow = client.request("GET", "/after-connect")
    assert stream.status is not None, stream.describe()
    assert_refused_here(stream.status, stream.header("allow"), backend)
    assert follow.status == 200, follow.describe()
    proxy.assert_serving()
