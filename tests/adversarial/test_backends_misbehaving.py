"""Backends that stall, truncate, or frame their responses ambiguously: the client must never be left waiting
forever, never receive a truncated response that looks complete, and a backend's leftovers must never be
served to another request."""

from __future__ import annotations

import threading
import time

import pytest

import h1raw
from clients import PROTOCOLS, get
from harness import merge
from quic_proxy_testing import poll_until
from rawbackend import Exchange, response

RESPONSE_BODY_TIMEOUT = 2.0
RESPONSE_HEADER_TIMEOUT = 2.0
# "About the timeout": plus room for a debug build on a busy machine.
ABORTED_WITHIN = RESPONSE_BODY_TIMEOUT + 6.0


class Recorder:
    """When the proxy closed each backend connection that a reply held open."""

    def __init__(self):
        self.closed_at: list[float | None] = []
        self.lock = threading.Lock()

    def hold(self, exchange: Exchange, limit: float = 30.0) -> bool:
        closed = exchange.hold(limit)
        with self.lock:
            self.closed_at.append(closed)
        return False


@pytest.fixture
def bad_backend(raw_backend, proxy_factory):
    """A misbehaving backend routed under /bad/, and a well-behaved one for everything else, so the proxy's
    health afterwards is checked against a backend that deserves to be healthy."""

    def start(reply, overrides: dict | None = None):
        bad = raw_backend("bad", reply=reply)
        good = raw_backend("good")
        routing = {
            "upstreams": {"bad": {"backends": [{"name": "bad", "url": bad.url}]}},
            "routes": [{"path": "/bad/*", "upstream": "bad"}],
            "health_check": {"enabled": False},
        }
        return proxy_factory([good], merge(routing, overrides or {})), bad

    return start


def incomplete(outcome, declared: int) -> bool:
    """The client can tell the response is truncated: it did not end cleanly, or its body is short of the
    Content-Length it carries."""
    return not outcome.clean_end or len(outcome.body) < declared


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_backend_that_stalls_mid_body_is_aborted_within_response_body_timeout(bad_backend, protocol):
    recorder = Recorder()

    def half_then_silence(exchange: Exchange) -> bool:
        exchange.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n" + b"h" * 5000)
        return recorder.hold(exchange)

    proxy, _ = bad_backend(half_then_silence, {"timeouts": {"response_body": f"{RESPONSE_BODY_TIMEOUT:g}s"}})
    started = time.monotonic()
    outcome = get(proxy, protocol, "/bad/stall", ABORTED_WITHIN)
    took = time.monotonic() - started
    assert outcome.status == 200 and incomplete(outcome, 10_000) and took < ABORTED_WITHIN, (
        f"{protocol}: after {took:.1f}s: {outcome.detail}"
    )
    assert len(outcome.body) <= 5000, outcome.detail
    state = proxy.wait_backends(lambda s: s["bad"]["in_flight"] == 0, 5)
    assert state["bad"]["in_flight"] == 0, f"the stalled response still counts as in flight: {state['stall']}"
    assert state["bad"]["consecutive_failures"] >= 1, f"the stall was not charged to the backend: {state['stall']}"
    # Aborting both ends means the backend connection is closed too, not left to the backend's patience.
    poll_until(lambda: bool(recorder.closed_at), 5)
    assert recorder.closed_at and recorder.closed_at[0] is not None, "the proxy kept the backend connection open"
    proxy.assert_serving()


@pytest.mark.parametrize("protocol", ["http1", "http3"])
def test_a_backend_that_closes_mid_body_is_relayed_as_truncated(bad_backend, protocol):
    """A response cut short by its backend must reach the client visibly cut short, never as a shorter
    complete response (no chunked terminator, no FIN, no Content-Length rewritten to what arrived)."""

    def half_then_close(exchange: Exchange) -> bool:
        exchange.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n" + b"h" * 5000)
        return False

    proxy, _ = bad_backend(half_then_close)
    outcome = get(proxy, protocol, "/bad/truncated", 10)
    assert outcome.status == 502 or incomplete(outcome, 10_000), outcome.detail
    proxy.assert_serving()


@pytest.mark.parametrize("protocol", ["http1", "http3"])
def test_a_backend_that_never_answers_gets_504_within_response_header_timeout(bad_backend, protocol):
    recorder = Recorder()
    proxy, _ = bad_backend(
        lambda exchange: recorder.hold(exchange, 15),
        {"timeouts": {"response_header": f"{RESPONSE_HEADER_TIMEOUT:g}s"}, "load_balancer": {"retries": 0}},
    )
    outcome = get(proxy, protocol, "/bad/silent", RESPONSE_HEADER_TIMEOUT + 6)
    assert outcome.status == 504, outcome.detail
    state = proxy.wait_backends(lambda s: s["bad"]["in_flight"] == 0, 5)
    assert state["bad"]["in_flight"] == 0 and state["bad"]["consecutive_failures"] >= 1, state
    proxy.assert_serving()


@pytest.mark.parametrize("protocol", ["http1", "http2", "http3"])
def test_a_response_with_content_length_and_chunked_is_never_relayed_truncated(bad_backend, protocol):
    """RFC 9112 6.3: chunked framing wins over Content-Length, which must then be removed; relaying
    `content-length: 3` and `hel` would be a silent truncation that looks complete."""

    def ambiguous(exchange: Exchange) -> bool:
        exchange.send(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n\r\n"
        )
        return True

    proxy, _ = bad_backend(ambiguous)
    outcome = get(proxy, protocol, "/bad/cl-and-te", 10)
    if outcome.status != 502:
        assert outcome.status == 200 and outcome.clean_end, outcome.detail
        assert outcome.body == b"hello world", f"relayed {outcome.body!r}: {outcome.detail}"
        assert outcome.header("content-length") in (None, "11"), outcome.detail
    proxy.assert_serving()


BAD_RESPONSE_HEADS = {
    "conflicting-content-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 50\r\n\r\nhello",
    "invalid-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\nhello",
    "negative-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nhello",
    "chunk-size-garbage": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "chunk-size-overflow": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    "nul-in-header": b"HTTP/1.1 200 OK\r\nX-Nul: a\x00b\r\nContent-Length: 5\r\n\r\nhello",
    "space-before-colon": b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello",
}


@pytest.mark.parametrize("head", list(BAD_RESPONSE_HEADS.values()), ids=list(BAD_RESPONSE_HEADS))
def test_a_malformed_backend_response_is_not_relayed_as_a_complete_one(bad_backend, head):
    """502, or a response the client can see is broken; never a clean, complete-looking response."""

    def reply(exchange: Exchange) -> bool:
        exchange.send(head)
        return False

    proxy, _ = bad_backend(reply, {"load_balancer": {"retries": 0}})
    outcome = get(proxy, "http1", "/bad/broken", 10)
    assert outcome.status in (None, 502) or not outcome.clean_end, outcome.detail
    assert b"\x00" not in outcome.body and all("\x00" not in v for _, v in outcome.headers), outcome.detail
    proxy.assert_serving()


@pytest.mark.parametrize("same_write", [True, False], ids=["in-the-same-write", "after-the-response"])
def test_bytes_a_backend_sends_past_its_response_are_never_served_to_another_request(bad_backend, same_write):
    """A backend that writes a second, unrequested response after the first must not poison the pooled
    connection: no later request may receive it as its own response. The extra bytes come either with the
    response or just after it; the next request is sent only once they are on the proxy's socket."""
    poisoned = threading.Event()
    lock = threading.Lock()
    count = {"n": 0}

    def poisoning(exchange: Exchange) -> bool:
        with lock:
            count["n"] += 1
            first = count["n"] == 1
        answer = response(200, exchange.request.target.encode())
        extra = response(200, b"poisoned")
        if first and same_write:
            exchange.send(answer + extra)
        elif first:
            exchange.send(answer)
            exchange.send(extra)
        else:
            exchange.send(answer)
        if first:
            poisoned.set()
        return True

    proxy, _ = bad_backend(poisoning)
    with h1raw.H1Client(proxy.http) as client:
        for index in range(5):
            path = f"/bad/poison/{index}"
            client.send(h1raw.request_bytes("GET", path))
            answer = client.read_response()
            assert answer is not None and answer.status in (200, 502), answer
            assert b"poisoned" not in answer.body, f"request {index} got another request's bytes: {answer!r}"
            if answer.status == 200:
                assert answer.body == path.encode(), f"request {index} got {answer!r}"
            assert poisoned.wait(5), "the backend never sent its extra response"
    proxy.assert_serving()
