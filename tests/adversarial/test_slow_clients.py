"""Slow and stalled clients on every listener: a client that takes its time is the client's problem (408 or a
close, counted as a client error), never a failure of the backend it was sent to, and never a way to hold a
connection open forever."""

from __future__ import annotations

import time

import pytest

import h1raw
from uploads import PROTOCOLS, H1Upload, answered_or_ended, open_upload

RESPONSE_HEADER_TIMEOUT = 2.0
CLIENT_BODY_TIMEOUT = 2.0
MIB = 1024 * 1024

# Passive health with a low threshold and fail_closed: two wrongly charged failures per backend would empty
# the upstream and every other client would get 503.
STRICT_HEALTH = {
    "timeouts": {"response_header": f"{RESPONSE_HEADER_TIMEOUT:g}s"},
    "load_balancer": {"when_all_unhealthy": "fail_closed"},
    "health_check": {"enabled": False, "passive": {"unhealthy_threshold": 2}},
}


def assert_backends_unharmed(proxy, names) -> None:
    state = proxy.backends_state()
    for name in names:
        assert state[name]["state"] == "healthy" and state[name]["consecutive_failures"] == 0, (
            f"a slow client was charged to backend {name}: {state[name]}"
        )


def test_slow_uploads_never_count_against_the_backends(demo_backend, proxy_factory):
    """Uploads declaring 1 MiB and sending a byte a second, on every protocol, for three times
    timeouts.response_header: the backends stay healthy and other clients keep getting 200."""
    backends = [demo_backend("a"), demo_backend("b")]
    proxy = proxy_factory(backends, STRICT_HEALTH)
    uploads = [open_upload(proxy, protocol, f"/slow/{protocol}", MIB) for protocol in PROTOCOLS + ["http1"]]
    try:
        started = time.monotonic()
        while time.monotonic() - started < 3 * RESPONSE_HEADER_TIMEOUT:
            for upload in uploads:
                upload.send(b"s")
            # Pacing the upload is the behaviour under test, not a synchronisation.
            time.sleep(1.0)
        answered = [(u.protocol, u.status()) for u in uploads if u.status() is not None]
        assert not answered, f"slow uploads were answered before they finished: {answered}"
        assert_backends_unharmed(proxy, ["a", "b"])
        for index in range(4):
            response = proxy_get(proxy, f"/other-client/{index}")
            assert response.status == 200, f"another client got {response!r} while uploads were slow"
    finally:
        for upload in uploads:
            upload.close()
    # A client that gives up mid-upload is not a backend failure either.
    state = proxy.wait_backends(lambda s: all(b["in_flight"] == 0 for b in s.values()), 5)
    assert all(b["in_flight"] == 0 for b in state.values()), state
    assert_backends_unharmed(proxy, ["a", "b"])
    proxy.assert_serving()


def proxy_get(proxy, path):
    return h1raw.exchange(proxy.http, h1raw.request_bytes("GET", path))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_honest_upload_slower_than_response_header_timeout_succeeds(demo_backend, proxy_factory, protocol):
    """The response-header timer starts once the request has been sent, not when its head was: a 256 KiB
    upload taking about three times timeouts.response_header still gets the backend's answer."""
    backend = demo_backend("a")
    proxy = proxy_factory([backend], {"timeouts": {"response_header": "1s"}})
    chunk, chunks = b"u" * (32 * 1024), 8
    upload = open_upload(proxy, protocol, "/honest", len(chunk) * chunks)
    try:
        for _ in range(chunks):
            assert upload.send(chunk), f"the proxy ended the upload early (status {upload.status()})"
            time.sleep(0.4)
        upload.finish()
        status, ended, _ = answered_or_ended(upload, 10)
        assert status == 200, f"an honest 3 s upload over {protocol} got {status} (ended by proxy: {ended})"
    finally:
        upload.close()
    assert proxy.backends_state()["a"]["consecutive_failures"] == 0
    proxy.assert_serving()


STALL_CONFIG = {
    "server": {"client_body_timeout": f"{CLIENT_BODY_TIMEOUT:g}s"},
    "timeouts": {"response_header": f"{RESPONSE_HEADER_TIMEOUT:g}s"},
    "health_check": {"enabled": False, "passive": {"unhealthy_threshold": 2}},
}
# "About client_body_timeout": the timeout plus room for a debug build on a busy machine.
ANSWER_WITHIN = CLIENT_BODY_TIMEOUT + 5.0


@pytest.mark.parametrize(
    "protocol, declared",
    [(p, 65536) for p in PROTOCOLS] + [("http1", MIB), ("http3", MIB)],
    ids=[f"{p}-cl65536" for p in PROTOCOLS] + ["http1-cl1mib", "http3-cl1mib"],
)
def test_a_stalled_request_body_is_answered_408_within_client_body_timeout(
    raw_backend, proxy_factory, protocol, declared
):
    """65,000 bytes of a declared body, then silence: 408 (or the request ended) within about
    server.client_body_timeout, the HTTP/1.1 connection closed, and nothing charged to the backend."""
    backend = raw_backend("raw")
    proxy = proxy_factory([backend], STALL_CONFIG)
    upload = open_upload(proxy, protocol, "/stalled", declared)
    try:
        assert upload.send(b"x" * 65_000)
        status, ended, waited = answered_or_ended(upload, ANSWER_WITHIN)
        assert status == 408 or (status is None and ended), (
            f"{protocol}: a body stalled after 65,000 of {declared} bytes: status {status}, ended {ended} "
            f"after {waited:.1f}s (client_body_timeout {CLIENT_BODY_TIMEOUT}s)"
        )
        if isinstance(upload, H1Upload):
            assert upload.wait_closed(5), "the connection stayed open after the stalled body was refused"
    finally:
        upload.close()
    assert not any(r.complete for r in backend.seen()), backend.describe()
    state = proxy.wait_backends(lambda s: s["raw"]["in_flight"] == 0, 5)
    assert state["raw"]["in_flight"] == 0 and state["raw"]["consecutive_failures"] == 0, state
    proxy.assert_serving()
