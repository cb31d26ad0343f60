"""Slow and vanished peers beyond uploads: clients that stop reading a large response, vanish mid-download, or
trickle a request head; the proxy must apply backpressure instead of buffering, and cut what never ends."""

from __future__ import annotations

import socket
import threading
import time

import pytest

import h1raw
from h2raw import H2Client
from h3raw import H3Client
from quic_proxy_testing import poll_until
from rawbackend import Exchange

RESPONSE_BYTES = 512 * 1024 * 1024
CHUNK = b"d" * (256 * 1024)
# What a client that reads nothing may cost: socket buffers and a few in-flight chunks, not the response.
BUFFER_BUDGET_KIB = 64 * 1024
BACKEND_SENT_BUDGET = 96 * 1024 * 1024


class Firehose:
    """Streams a huge response as fast as the proxy takes it; records how much it got out and whether the
    proxy hung up."""

    def __init__(self):
        self.sent = 0
        self.hung_up = threading.Event()

    def __call__(self, exchange: Exchange) -> bool:
        exchange.send(f"HTTP/1.1 200 OK\r\nContent-Length: {RESPONSE_BYTES}\r\n\r\n".encode())
        exchange.sock.settimeout(30)
        try:
            while self.sent < RESPONSE_BYTES and not exchange.backend.stopping.is_set():
                exchange.sock.sendall(CHUNK)
                self.sent += len(CHUNK)
        except OSError:
            self.hung_up.set()
        return False


def firehose_proxy(raw_backend, proxy_factory, overrides=None):
    firehose = Firehose()
    backend = raw_backend("firehose", reply=firehose)
    good = raw_backend("good")
    routing = {
        "upstreams": {"big": {"backends": [{"name": "firehose", "url": backend.url}]}},
        "routes": [{"path": "/big/*", "upstream": "big"}],
    }
    routing.update(overrides or {})
    return proxy_factory([good], routing), firehose


def assert_backpressure(proxy, firehose: Firehose, baseline: int, who: str) -> None:
    """Measured once the backend's output has stopped moving (the buffers between it and the client are full)."""
    last = -1
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and firehose.sent != last:
        last = firehose.sent
        poll_until(lambda: firehose.sent != last, 1.0)
    grown = proxy.rss_kib() - baseline
    assert firehose.sent < BACKEND_SENT_BUDGET, f"{who}: the proxy took {firehose.sent} bytes from the backend"
    assert grown < BUFFER_BUDGET_KIB, f"{who}: the proxy grew by {grown} KiB holding an unread response"


def assert_upstream_released(proxy, firehose: Firehose, within: float, who: str) -> None:
    assert firehose.hung_up.wait(within), f"{who}: the backend connection was still open {within}s after the client left"
    state = proxy.wait_backends(lambda s: s["firehose"]["in_flight"] == 0, 5)
    assert state["firehose"]["in_flight"] == 0, state["firehose"]


@pytest.mark.parametrize("tls", [False, True], ids=["http1", "https-http1"])
def test_a_client_that_stops_reading_gets_backpressure_not_buffering(raw_backend, proxy_factory, tls):
    proxy, firehose = firehose_proxy(raw_backend, proxy_factory)
    baseline = proxy.rss_kib()
    client = h1raw.H1Client(proxy.https if tls else proxy.http, tls=tls)
    try:
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        client.send(h1raw.request_bytes("GET", "/big/stream"))
        assert poll_until(lambda: firehose.sent > 0, 5), "the backend never got the request"
        assert_backpressure(proxy, firehose, baseline, "HTTP/1.1 reader that stopped")
    finally:
        client.close()
    assert_upstream_released(proxy, firehose, 5, "HTTP/1.1")
    proxy.assert_serving()


def test_an_http2_client_that_grants_no_window_gets_backpressure(raw_backend, proxy_factory):
    proxy, firehose = firehose_proxy(raw_backend, proxy_factory)
    baseline = proxy.rss_kib()
    client = H2Client(proxy.https)
    try:
        # The client reads frames (so TCP is not what stops the proxy) but never returns flow-control credit.
        client._on_event = lambda event: None
        client.send_headers([(":method", "GET"), (":scheme", "https"), (":authority", "localhost"), (":path", "/big/h2")], True)
        assert poll_until(lambda: firehose.sent > 0, 5), "the backend never got the request"
        client.wait(lambda: False, 2)
        assert_backpressure(proxy, firehose, baseline, "HTTP/2 client with no window")
    finally:
        client.close()
    assert_upstream_released(proxy, firehose, 5, "HTTP/2")
    proxy.assert_serving()


def test_a_quic_client_that_vanishes_mid_download_is_released_after_idle_timeout(raw_backend, proxy_factory):
    idle = 3.0
    proxy, firehose = firehose_proxy(raw_backend, proxy_factory, {"quic": {"idle_timeout": f"{idle:g}s"}})
    baseline = proxy.rss_kib()
    client = H3Client.connect(proxy.quic)
    stream_id = client.new_stream()
    client.send_headers(
        stream_id, [(":method", "GET"), (":scheme", "https"), (":authority", "localhost"), (":path", "/big/h3")], end=True
    )
    assert client.wait(lambda: len(client.streams[stream_id].data) > 1024 * 1024, 10), "the download never started"
    client.abandon()
    assert_upstream_released(proxy, firehose, idle + 8, "vanished QUIC client")
    grown = proxy.rss_kib() - baseline
    assert grown < BUFFER_BUDGET_KIB, f"a vanished download left {grown} KiB behind"
    proxy.assert_serving()


HEADER_READ_TIMEOUT = 1.0


@pytest.fixture
def proxy_with_raw_slowloris(raw_backend, proxy_factory):
    backend = raw_backend("raw")
    return proxy_factory([backend], {"server": {"header_read_timeout": f"{HEADER_READ_TIMEOUT:g}s"}}), backend


@pytest.mark.parametrize("tls", [False, True], ids=["http1", "https-http1"])
def test_a_trickled_request_head_is_cut_at_header_read_timeout(proxy_with_raw_slowloris, tls):
    """Slowloris: a byte of head every 300 ms never completes the head; bytes arriving must not reset the
    clock."""
    proxy, backend = proxy_with_raw_slowloris
    client = h1raw.H1Client(proxy.https if tls else proxy.http, tls=tls)
    started = time.monotonic()
    try:
        client.send(b"GET /slowloris HTTP/1.1\r\nHost: localhost\r\n")
        cut = False
        while time.monotonic() - started < HEADER_READ_TIMEOUT + 6:
            if not client.try_send(b"X") or client.wait_closed(0.3):
                cut = True
                break
    finally:
        client.close()
    took = time.monotonic() - started
    assert cut, f"a trickled head was still open after {took:.1f}s (header_read_timeout {HEADER_READ_TIMEOUT}s)"
    assert backend.seen() == [], backend.describe()
    proxy.assert_serving()


@pytest.mark.parametrize("send", [b"", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"], ids=["nothing", "half-a-client-hello"])
def test_a_stalled_tls_handshake_is_cut_at_header_read_timeout(proxy_with_raw_slowloris, send):
    proxy, _ = proxy_with_raw_slowloris
    with socket.create_connection(proxy.https, timeout=5) as sock:
        if send:
            sock.sendall(send)
        sock.settimeout(HEADER_READ_TIMEOUT + 6)
        started = time.monotonic()
        try:
            closed = sock.recv(1024) == b""
        except socket.timeout:
            closed = False
        except OSError:
            closed = True
    assert closed, f"a stalled TLS handshake was still open after {time.monotonic() - started:.1f}s"
    proxy.assert_serving()
