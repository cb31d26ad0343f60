"""Floods: many streams opened and reset at once (rapid reset over HTTP/2 and HTTP/3), endless CONTINUATION
frames, many short connections. The proxy must bound the work and memory each costs, cancel what the client
abandoned (the backend's in-flight count returns to 0), and serve normal requests afterwards."""

from __future__ import annotations

import socket
import ssl
import threading
import time

from hpack import Encoder

import h1raw
from h2raw import CONTINUATION, END_HEADERS, END_STREAM, GOAWAY, HEADERS, RST_STREAM, RawH2, raw_frame
from h3raw import H3_REQUEST_CANCELLED, H3Client, headers_frame, request_fields
from quic_proxy_testing import poll_until
from rawbackend import Exchange, describe_reply

HOLD_LIMIT = 10.0
# Memory a flood may add to the proxy, all of it: far above what a few thousand cancelled requests should
# cost, far below what keeping each one would.
FLOOD_BUDGET_KIB = 64 * 1024


class SlowReplies:
    """Replies after HOLD_LIMIT unless the proxy gives up first, so cancelled requests show up as upstream
    connections the proxy closed rather than as answered requests."""

    def __init__(self):
        self.cancelled = 0
        self.lock = threading.Lock()

    def __call__(self, exchange: Exchange) -> bool:
        if exchange.request.path.startswith("/flood"):
            if exchange.hold(HOLD_LIMIT) is not None:
                with self.lock:
                    self.cancelled += 1
                return False
        return describe_reply(exchange)


def assert_cancelled_upstream(proxy, backend, replies: SlowReplies) -> None:
    """Every request the client abandoned is abandoned upstream too: the proxy's in-flight count is 0 and
    each forwarded request's backend connection was closed (HTTP/1.1 has no other way to cancel), instead of
    the backend working on requests nobody waits for."""
    state = proxy.wait_backends(lambda s: s["raw"]["in_flight"] == 0, 5)
    assert state["raw"]["in_flight"] == 0, f"reset requests still in flight upstream: {state['raw']}"
    forwarded = len(backend.seen())
    poll_until(lambda: replies.cancelled >= forwarded, 5)
    assert replies.cancelled >= forwarded, (
        f"{forwarded} reset requests reached the backend, only {replies.cancelled} were cancelled there"
    )


def test_http3_rapid_reset_cancels_the_upstream_requests(raw_backend, proxy_factory):
    """About 1,000 requests on one connection, each reset right after its HEADERS, in batches that fill the
    stream limit: every stream slot comes back, and every forwarded request is cancelled upstream. QUIC
    announces returned slots in steps (quinn waits until an eighth of the limit is free), so the last few
    slots of a batch may only be announced once more are returned: a batch of 7/8 of the limit never waits
    on that, and one stuck slot still fails the test."""
    replies = SlowReplies()
    backend = raw_backend("raw", reply=replies)
    proxy = proxy_factory([backend], {"quic": {"max_concurrent_streams": 100}})
    baseline = proxy.rss_kib()
    total, batch = 1056, 88
    with H3Client.connect(proxy.quic) as client:
        for start in range(0, total, batch):
            # A batch may only start once the proxy has handed back the slots of the batch before.
            returned = poll_until(lambda: client.stream_credit() >= start + batch or client.terminated is not None, 10)
            assert returned and client.terminated is None, (
                f"after {start} reset requests the proxy allows only {client.stream_credit()} streams in all "
                f"({client.describe_close()}); {len(backend.seen())} reached the backend, {replies.cancelled} "
                "were cancelled there"
            )
            for index in range(start, start + batch):
                stream_id = client.new_stream()
                client.send(stream_id, headers_frame(request_fields("GET", f"/flood/{index}")), end=True)
                client.reset(stream_id, H3_REQUEST_CANCELLED)
                client.stop(stream_id, H3_REQUEST_CANCELLED)
    assert_cancelled_upstream(proxy, backend, replies)
    grown = proxy.rss_kib() - baseline
    assert grown < FLOOD_BUDGET_KIB, f"{total} reset streams grew the proxy by {grown} KiB"
    proxy.assert_serving()


def test_http2_rapid_reset_is_bounded(raw_backend, proxy_factory):
    """CVE-2023-44487: HEADERS then RST_STREAM, thousands of times. The proxy may answer with GOAWAY; either
    way it must not keep working on the abandoned requests."""
    replies = SlowReplies()
    backend = raw_backend("raw", reply=replies)
    proxy = proxy_factory([backend])
    baseline = proxy.rss_kib()
    flood = RawH2(proxy.https)
    try:
        encoder = Encoder()
        batch = bytearray()
        for index in range(5000):
            stream_id = 1 + 2 * index
            block = encoder.encode(
                [(":method", "GET"), (":scheme", "https"), (":authority", "localhost"), (":path", f"/flood/{index}")]
            )
            batch += raw_frame(HEADERS, END_HEADERS | END_STREAM, stream_id, block)
            batch += raw_frame(RST_STREAM, 0, stream_id, (8).to_bytes(4, "big"))
            if len(batch) > 32 * 1024:
                if not flood.send(bytes(batch)):
                    break
                batch.clear()
        flood.send(bytes(batch))
        flood.read(3)
    finally:
        flood.close()
    assert_cancelled_upstream(proxy, backend, replies)
    grown = proxy.rss_kib() - baseline
    assert grown < FLOOD_BUDGET_KIB, f"5,000 reset streams grew the proxy by {grown} KiB"
    assert len(backend.seen()) < 5000, "every reset request was still forwarded"
    proxy.assert_serving()


def test_http2_continuation_flood_is_cut(raw_backend, proxy_factory):
    """A HEADERS frame without END_HEADERS, then CONTINUATION frames forever: the proxy must stop reading
    (GOAWAY or close) long before the header block is unbounded, and must not buffer it."""
    backend = raw_backend("raw")
    proxy = proxy_factory([backend], {"server": {"header_read_timeout": "2s"}})
    baseline = proxy.rss_kib()
    flood = RawH2(proxy.https)
    flood.sock.settimeout(5)
    block = Encoder().encode([(":method", "GET"), (":scheme", "https"), (":authority", "localhost"), (":path", "/cont")])
    sent = len(block)
    cut = not flood.send(raw_frame(HEADERS, 0, 1, block))
    junk = raw_frame(CONTINUATION, 0, 1, b"\x40\x05x-pad\x7f\x81\x07" + b"p" * 1000)
    deadline = time.monotonic() + 15
    while not cut and sent < 64 * 1024 * 1024 and time.monotonic() < deadline:
        try:
            flood.sock.sendall(junk * 16)
            sent += len(junk) * 16
        except (socket.timeout, ssl.SSLError, OSError):
            cut = True
    flood.read(5)
    flood.close()
    grown = proxy.rss_kib() - baseline
    assert cut or flood.closed or flood.goaway_code() is not None, f"{sent} bytes of one header block accepted"
    assert sent < 64 * 1024 * 1024, "the proxy read 64 MiB of CONTINUATION frames without cutting the stream"
    assert grown < FLOOD_BUDGET_KIB, f"a CONTINUATION flood of {sent} bytes grew the proxy by {grown} KiB"
    assert backend.seen() == [], backend.describe()
    proxy.assert_serving()


def test_many_short_connections_leave_nothing_behind(raw_backend, proxy_factory):
    """300 TCP connections that close at once, 100 TLS handshakes abandoned half-way or just after, 30 QUIC
    connections opened and closed: every connection gauge returns to 0 and memory returns near baseline."""
    backend = raw_backend("raw")
    proxy = proxy_factory([backend], {"server": {"header_read_timeout": "2s"}})
    baseline = proxy.rss_kib()
    for _ in range(300):
        with socket.create_connection(proxy.http, timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHo")
    for index in range(100):
        raw = socket.create_connection(proxy.https, timeout=5)
        if index % 2:
            raw.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
            raw.close()
        else:
            tls = h1raw.tls_context(["h2", "http/1.1"]).wrap_socket(raw, server_hostname="localhost")
            tls.close()
    for _ in range(30):
        H3Client.connect(proxy.quic).close()

    def drained() -> bool:
        gauges = [v for name, _, v in proxy.metrics() if name == "connections_open"]
        return all(v == 0 for v in gauges)

    settled = poll_until(drained, 10, interval=0.2)
    open_now = [(labels, v) for name, labels, v in proxy.metrics() if name == "connections_open"]
    assert settled, f"connections still counted open: {open_now}"
    grown = proxy.rss_kib() - baseline
    assert grown < FLOOD_BUDGET_KIB, f"430 closed connections left {grown} KiB behind"
    assert backend.seen() == [], backend.describe()
    proxy.assert_serving()


def test_an_http2_connection_error_gets_goaway_and_spares_other_clients(proxy_with_raw):
    """A DATA frame on stream 0 is a connection error (RFC 9113 6.1): GOAWAY with PROTOCOL_ERROR, and the
    proxy goes on serving everyone else."""
    proxy, _ = proxy_with_raw
    client = RawH2(proxy.https)
    try:
        client.send(raw_frame(0x0, 0, 0, b"data-on-stream-zero"))
        client.read(3)
    finally:
        client.close()
    assert client.goaway_code() == 0x1, f"frames from the proxy: {[(t, f, s) for t, f, s, _ in client.frames]}"
    assert any(t == GOAWAY for t, _, _, _ in client.frames)
    proxy.assert_serving()
