"""HTTP/1.1 request framing and hygiene: where the proxy's own framing checks and hyper's parser could
disagree, h2c upgrades that could smuggle a whole HTTP/2 connection past the proxy, and header limits."""

from __future__ import annotations

import pytest

import h1raw


def read_all(client: h1raw.H1Client, timeout: float = 5.0) -> list[h1raw.Response]:
    """Every response on the connection until the proxy closes it (or `timeout` passes without one)."""
    responses = []
    while True:
        try:
            response = client.read_response(timeout)
        except (TimeoutError, ConnectionError):
            return responses
        if response is None:
            return responses
        responses.append(response)


@pytest.mark.parametrize("tls", [False, True], ids=["http1", "https-http1"])
def test_a_head_ending_in_bare_lf_does_not_hide_a_cl_te_request_behind_it(proxy_with_raw, tls):
    """The first head ends `\\n\\r\\n`, which hyper accepts as a head end: the proxy's framing watch must agree,
    so the CL+TE request after it is refused with 400 like any other, and nothing of it is forwarded."""
    proxy, backend = proxy_with_raw
    first = b"GET /first HTTP/1.1\r\nHost: localhost\n\r\n"
    second = (
        b"POST /second HTTP/1.1\r\nHost: localhost\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n"
    )
    with h1raw.H1Client(proxy.https if tls else proxy.http, tls=tls) as client:
        client.send(first + second)
        responses = read_all(client)
    statuses = [r.status for r in responses]
    paths = [r.path for r in backend.seen()]
    assert "/second" not in paths and "/smuggled" not in paths, f"forwarded {paths}; client saw {statuses}"
    assert statuses and statuses[-1] == 400, f"the CL+TE request was not refused: {responses}"
    assert statuses in ([200, 400], [400]), responses
    proxy.assert_serving()


H2C_UPGRADES = {
    "named-in-connection": b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
    "settings-not-named": b"Connection: Upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
    "settings-alone": b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
    "upgrade-without-connection": b"Upgrade: h2c\r\n",
}


@pytest.mark.parametrize("fields", list(H2C_UPGRADES.values()), ids=list(H2C_UPGRADES))
@pytest.mark.parametrize("tls", [False, True], ids=["http1", "https-http1"])
def test_an_h2c_upgrade_never_reaches_a_backend(proxy_with_raw, fields, tls):
    """h2c smuggling: a backend that accepts the upgrade would speak HTTP/2 with the client through a tunnel
    the proxy no longer inspects. Neither Upgrade: h2c nor HTTP2-Settings may be forwarded, and the client
    never gets 101."""
    proxy, backend = proxy_with_raw
    request = b"GET /h2c HTTP/1.1\r\nHost: localhost\r\n" + fields + b"\r\n"
    response = h1raw.exchange(proxy.https if tls else proxy.http, request, tls=tls)
    assert response is not None and response.status != 101, response
    for seen in backend.seen():
        names = {name.lower() for name, _ in seen.headers}
        upgrade = [v.lower() for v in seen.header_values("upgrade")]
        assert "http2-settings" not in names and "h2c" not in upgrade, f"forwarded: {seen.describe()}"
    proxy.assert_serving()


@pytest.mark.parametrize("value", ["18446744073709551615", "18446744073709551616", "99999999999999999999999"])
def test_an_absurd_content_length_is_a_bad_request(proxy_with_raw, value):
    proxy, backend = proxy_with_raw
    response = h1raw.exchange(proxy.http, h1raw.request_bytes("POST", "/huge", [("Content-Length", value)]))
    assert response is not None and response.status == 400, f"Content-Length: {value}: {response!r}"
    assert backend.seen() == [], backend.describe()
    proxy.assert_serving()


def many_headers(count: int) -> bytes:
    """A request carrying `count` header fields in all, Host included."""
    return h1raw.request_bytes("GET", "/many-headers", [(f"X-H{i}", "v") for i in range(count - 1)])


def test_more_headers_than_max_headers_get_431(proxy_with_raw):
    proxy, backend = proxy_with_raw
    at_limit = h1raw.exchange(proxy.http, many_headers(100))
    assert at_limit is not None and at_limit.status == 200, f"100 header fields (the default limit): {at_limit!r}"
    over = h1raw.exchange(proxy.http, many_headers(101))
    assert over is not None and over.status == 431, f"101 header fields: {over!r}"
    assert [r.path for r in backend.seen()] == ["/many-headers"]
    proxy.assert_serving()


def test_max_headers_raises_the_limit(raw_backend, proxy_factory):
    backend = raw_backend("raw")
    proxy = proxy_factory([backend], {"server": {"max_headers": 200}})
    response = h1raw.exchange(proxy.http, many_headers(150))
    assert response is not None and response.status == 200, f"150 header fields with max_headers 200: {response!r}"
    (seen,) = backend.seen()
    assert len([n for n, _ in seen.headers if n.lower().startswith("x-h")]) == 149, seen.describe()
    over = h1raw.exchange(proxy.http, many_headers(201))
    assert over is not None and over.status == 431, f"201 header fields with max_headers 200: {over!r}"
    proxy.assert_serving()


@pytest.mark.parametrize("tls", [False, True], ids=["http1", "https-http1"])
def test_a_header_flood_is_refused_and_the_connection_closed(proxy_with_raw, tls):
    """10,000 header fields in a head under max_header_bytes' default, and a 1 MiB head over it."""
    proxy, backend = proxy_with_raw
    for request in (many_headers(10_000)[:60_000] + b"\r\n\r\n", h1raw.request_bytes("GET", "/", [("X-Big", "b" * 1024 * 1024)])):
        with h1raw.H1Client(proxy.https if tls else proxy.http, tls=tls) as client:
            client.try_send(request)
            try:
                response = client.read_response()
            except ConnectionError:
                response = None
            assert response is None or response.status in (400, 431), response
            assert client.wait_closed(5), "the connection stayed open after a refused head"
    assert backend.seen() == [], backend.describe()
    proxy.assert_serving()
