"""Shutdown under load: while SIGTERM drains in-flight requests the admin listener keeps answering (/ready
503 so load balancers stop sending, /live 200 so nothing restarts the process, /metrics scrapable), and the
proxy exits once the requests are done."""

from __future__ import annotations

import threading
import time

import h1raw
from h3raw import H3Client
from quic_proxy_testing import poll_until
from rawbackend import Exchange, describe_reply

DRAIN_TIMEOUT = 10.0
HOLD_LIMIT = 8.0


class Held:
    """A reply that waits until the test releases it, so a request is in flight exactly as long as needed."""

    def __init__(self):
        self.release = threading.Event()

    def __call__(self, exchange: Exchange) -> bool:
        if exchange.request.path.startswith("/slow"):
            self.release.wait(HOLD_LIMIT)
        return describe_reply(exchange)


def test_the_admin_listener_serves_through_the_drain(raw_backend, proxy_factory):
    held = Held()
    backend = raw_backend("raw", reply=held)
    proxy = proxy_factory([backend], {"server": {"drain_timeout": f"{DRAIN_TIMEOUT:g}s"}})
    assert proxy.admin_get("/live")[0] == 200

    slow = h1raw.H1Client(proxy.http, timeout=15)
    h3 = H3Client.connect(proxy.quic)
    try:
        slow.send(h1raw.request_bytes("GET", "/slow/http1"))
        h3_stream = h3.new_stream()
        h3.send_headers(h3_stream, [(":method", "GET"), (":scheme", "https"), (":authority", "localhost"), (":path", "/slow/h3")], end=True)
        assert backend.wait_for(lambda seen: len(seen) == 2, 5), backend.describe()

        proxy.sigterm()
        try:
            became_unready = poll_until(lambda: proxy.admin_get("/ready", timeout=2)[0] == 503, 5)
        except OSError as error:
            raise AssertionError(f"the admin listener stopped answering once the drain began: {error!r}") from error
        assert became_unready, f"/ready during the drain: {proxy.admin_get('/ready')}"
        live = proxy.admin_get("/live")
        assert live[0] == 200, f"/live during the drain: {live}"
        metrics = proxy.admin_get("/metrics")
        assert metrics[0] == 200 and "http_requests_in_flight" in metrics[1], f"/metrics during the drain: {metrics[0]}"
        assert h3.wait(lambda: h3.goaway is not None, 5), "no GOAWAY on the open HTTP/3 connection"
        assert proxy.running(), "the proxy exited with requests in flight"

        held.release.set()
        response = slow.read_response(10)
        assert response is not None and response.status == 200, f"in-flight HTTP/1.1 request: {response!r}"
        stream = h3.wait_stream(h3_stream, 10)
        assert stream.status == 200 and stream.ended, f"in-flight HTTP/3 request: {stream.describe()}"
    finally:
        held.release.set()
        slow.close()
        h3.close()
    started = time.monotonic()
    status = proxy.wait_exit(DRAIN_TIMEOUT)
    assert status == 0, f"exit status {status} {time.monotonic() - started:.1f}s after the last request finished"
    assert not proxy.panics(), proxy.panics()
