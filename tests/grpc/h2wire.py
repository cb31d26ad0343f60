"""One gRPC call over raw HTTP/2 (hyper-h2), recording the response frame by frame, so that tests see what a
gRPC client library hides: whether the status came in the response head (trailers-only) or in trailers, and
the exact bytes of grpc-message."""

from __future__ import annotations

import socket
import ssl
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.events


@dataclass
class WireResponse:
    headers: dict[str, str] = field(default_factory=dict)
    # True when the response head ended the stream (a trailers-only response).
    head_ended_stream: bool = False
    data: bytes = b""
    trailers: dict[str, str] | None = None
    reset: int | None = None


def grpc_frame(message: bytes) -> bytes:
    """A length-prefixed gRPC message, uncompressed."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def call(
    port: int,
    path: str,
    message: bytes,
    tls_ca: Path | None = None,
    authority: str | None = None,
    timeout: float = 30.0,
) -> WireResponse:
    """POSTs one gRPC message to `path` on 127.0.0.1:`port`: over TLS (ALPN h2) trusting `tls_ca`, or h2c with
    prior knowledge. Reads the response until its stream ends."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if tls_ca is not None:
        context = ssl.create_default_context(cafile=str(tls_ca))
        context.set_alpn_protocols(["h2"])
        sock = context.wrap_socket(raw, server_hostname="localhost")
        assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
        scheme = "https"
    else:
        sock = raw
        scheme = "http"
    deadline = time.monotonic() + timeout
    try:
        connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        connection.initiate_connection()
        stream = connection.get_next_available_stream_id()
        connection.send_headers(
            stream,
            [
                (":method", "POST"),
                (":scheme", scheme),
                (":authority", authority or f"localhost:{port}"),
                (":path", path),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        )
        body = grpc_frame(message)
        # Within the peer's initial window, so that no WINDOW_UPDATE is needed; in frames it accepts.
        assert len(body) <= connection.local_flow_control_window(stream), "message too large for one window"
        size = connection.max_outbound_frame_size
        for start in range(0, len(body), size):
            connection.send_data(stream, body[start : start + size], end_stream=start + size >= len(body))
        sock.sendall(connection.data_to_send())
        response = WireResponse()
        while True:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError("the connection closed before the response ended")
            for event in connection.receive_data(chunk):
                if getattr(event, "stream_id", stream) != stream:
                    continue
                if isinstance(event, h2.events.ResponseReceived):
                    response.headers = dict(event.headers)
                    response.head_ended_stream = event.stream_ended is not None
                elif isinstance(event, h2.events.DataReceived):
                    response.data += event.data
                    connection.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, h2.events.TrailersReceived):
                    response.trailers = dict(event.headers)
                elif isinstance(event, h2.events.StreamReset):
                    response.reset = event.error_code
                    return _closed(sock, connection, response)
                elif isinstance(event, h2.events.StreamEnded):
                    return _closed(sock, connection, response)
            sock.sendall(connection.data_to_send())
            if time.monotonic() >= deadline:
                raise AssertionError(f"no end of the response within {timeout}s")
    finally:
        sock.close()


def _closed(sock: socket.socket, connection: h2.connection.H2Connection, response: WireResponse) -> WireResponse:
    """Says goodbye with GOAWAY, as a client done with a connection does, and returns `response`."""
    connection.close_connection()
    sock.sendall(connection.data_to_send())
    return response
