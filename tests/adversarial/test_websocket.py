"""WebSocket over HTTP/2 (RFC 8441) and HTTP/3 (RFC 9220): the proxy advertises extended CONNECT, turns a
CONNECT with `:protocol websocket` into an HTTP/1.1 WebSocket handshake to the backend (the demo backend's echo,
a real RFC 6455 server), answers 200 once the backend has accepted, and carries the frames both ways. Any other
`:protocol` is refused without reaching a backend, and plain CONNECT stays refused (test_connect.py).

The clients are the `h2` package and aioquic (with QPACK field sections from pylsqpack); WebSocket frames are
written and read by hand, as RFC 6455 5 lays them out, so the test sees exactly what crossed the proxy."""

from __future__ import annotations

import os

from h2raw import H2Client
from h3raw import H3Client, data_frame

SETTINGS_ENABLE_CONNECT_PROTOCOL = 0x8
TEXT, CLOSE = 0x1, 0x8


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A client's frame: FIN, `opcode`, masked (RFC 6455 5.3), payload under 126 bytes."""
    assert len(payload) < 126
    mask = os.urandom(4)
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def server_frame(data: bytes) -> tuple[int, bytes] | None:
    """The first whole frame in `data` from the server: (opcode, payload); None until it is all there. A server's
    frames are never masked (RFC 6455 5.1)."""
    if len(data) < 2:
        return None
    assert data[1] & 0x80 == 0, f"the server's frame is masked: {data[:16]!r}"
    length = data[1] & 0x7F
    assert length < 126, "the echo is short"
    if len(data) < 2 + length:
        return None
    return data[0] & 0x0F, bytes(data[2 : 2 + length])


def websocket_fields(protocol: str = "websocket", path: str = "/chat") -> list[tuple[str, str]]:
    return [
        (":method", "CONNECT"),
        (":protocol", protocol),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", path),
        ("sec-websocket-version", "13"),
    ]


def test_websocket_over_http2_reaches_the_backend_echo(demo_backend, proxy_factory):
    proxy = proxy_factory([demo_backend("echo")])
    with H2Client(proxy.https) as client:
        assert client.wait(lambda: client.conn.remote_settings.enable_connect_protocol == 1, 5), (
            "the proxy does not advertise SETTINGS_ENABLE_CONNECT_PROTOCOL"
        )
        stream_id = client.send_headers(websocket_fields())
        stream = client.streams[stream_id]
        assert client.wait(lambda: stream.headers is not None or stream.finished, 10), repr(stream)
        assert stream.status == 200, repr(stream)
        assert stream.header("sec-websocket-accept") is None, "the HTTP/1.1 handshake leaked to the client"
        for message in (b"hello over HTTP/2", b"and again"):
            stream.data.clear()
            client.send_data(stream_id, client_frame(TEXT, message))
            assert client.wait(lambda: server_frame(stream.data) is not None or stream.finished, 10), repr(stream)
            assert server_frame(stream.data) == (TEXT, message)
        # A close is answered with a close, as RFC 6455 5.5.1 asks.
        stream.data.clear()
        client.send_data(stream_id, client_frame(CLOSE, b"\x03\xe8"))
        assert client.wait(lambda: server_frame(stream.data) is not None or stream.finished, 10), repr(stream)
        assert server_frame(stream.data)[0] == CLOSE
    proxy.assert_serving()


def test_an_extended_connect_for_another_protocol_is_refused_over_http2(demo_backend, proxy_factory):
    proxy = proxy_factory([demo_backend("echo")])
    with H2Client(proxy.https) as client:
        assert client.wait(lambda: client.conn.remote_settings.enable_connect_protocol == 1, 5)
        stream_id = client.send_headers(websocket_fields(protocol="connect-udp"), end_stream=True)
        stream = client.wait_stream(stream_id)
    assert stream.status == 501, repr(stream)
    proxy.assert_serving()


def test_websocket_over_http3_reaches_the_backend_echo(demo_backend, proxy_factory):
    proxy = proxy_factory([demo_backend("echo")])
    with H3Client.connect(proxy.quic) as client:
        assert client.wait(lambda: SETTINGS_ENABLE_CONNECT_PROTOCOL in (client.peer_settings or {}), 5), (
            f"no SETTINGS from the proxy: {client.peer_settings}"
        )
        assert client.peer_settings[SETTINGS_ENABLE_CONNECT_PROTOCOL] == 1
        stream_id = client.new_stream()
        client.send_headers(stream_id, websocket_fields())
        stream = client.wait_head(stream_id)
        assert stream.status == 200, stream.describe()
        for message in (b"hello over HTTP/3", b"and again"):
            before = len(stream.data)
            client.send(stream_id, data_frame(client_frame(TEXT, message)))
            assert client.wait(lambda: server_frame(stream.data[before:]) is not None or stream.finished, 10), (
                stream.describe()
            )
            assert server_frame(stream.data[before:]) == (TEXT, message)
        assert client.terminated is None, client.describe_close()
    proxy.assert_serving()


def test_an_extended_connect_for_another_protocol_is_refused_over_http3(demo_backend, proxy_factory):
    proxy = proxy_factory([demo_backend("echo")])
    with H3Client.connect(proxy.quic) as client:
        stream_id = client.new_stream()
        client.send_headers(stream_id, websocket_fields(protocol="connect-udp"), end=True)
        stream = client.wait_stream(stream_id)
        assert client.terminated is None, client.describe_close()
    assert stream.status == 501, stream.describe()
    proxy.assert_serving()
