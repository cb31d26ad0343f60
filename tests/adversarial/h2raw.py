"""HTTP/2 over TLS for the adversarial tests: the `h2` state machine with its validation turned off, plus raw
frames for what no state machine would send (floods of resets, endless CONTINUATION)."""

from __future__ import annotations

import socket
import ssl
import struct
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from h1raw import tls_context

DEFAULT_TIMEOUT = 10.0
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# RFC 9113 6 frame types and flags.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4


@dataclass
class H2Stream:
    stream_id: int
    headers: list[tuple[bytes, bytes]] | None = None
    data: bytearray = field(default_factory=bytearray)
    trailers: list[tuple[bytes, bytes]] | None = None
    ended: bool = False
    reset_code: int | None = None

    @property
    def finished(self) -> bool:
        return self.ended or self.reset_code is not None

    @property
    def status(self) -> int | None:
        if self.headers is None:
            return None
        return int(dict(self.headers)[b":status"])

    def header(self, name: str) -> str | None:
        for key, value in self.headers or []:
            if key == name.encode():
                return value.decode("latin-1")
        return None

    def __repr__(self) -> str:
        return (
            f"<h2 stream {self.stream_id} headers={self.headers} body={bytes(self.data[:200])!r} "
            f"({len(self.data)} bytes) ended={self.ended} reset={self.reset_code}>"
        )


def connect_tls(address: tuple[str, int], alpn: str, timeout: float) -> ssl.SSLSocket:
    sock = socket.create_connection(address, timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tls = tls_context([alpn]).wrap_socket(sock, server_hostname="localhost")
    if tls.selected_alpn_protocol() != alpn:
        raise ConnectionError(f"the proxy chose ALPN {tls.selected_alpn_protocol()!r}, not {alpn!r}")
    return tls


class H2Client:
    """One HTTP/2 connection over TLS, driven synchronously."""

    def __init__(self, address: tuple[str, int], timeout: float = DEFAULT_TIMEOUT):
        self.sock = connect_tls(address, "h2", timeout)
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
        )
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        self.streams: dict[int, H2Stream] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False
        self.protocol_error: str | None = None
        self._flush()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.closed:
            try:
                self.sock.sendall(data)
            except OSError:
                self.closed = True

    def pump(self, deadline: float) -> bool:
        """Reads and handles what arrives before `deadline`; False once the connection is closed."""
        if self.closed:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return True
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return False
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as error:
            # What the proxy sent broke HTTP/2 itself (a body longer than its content-length, say).
            self.protocol_error = f"{type(error).__name__}: {error}"
            self.closed = True
            return False
        for event in events:
            self._on_event(event)
        self._flush()
        return True

    def _on_event(self, event: h2.events.Event) -> None:
        stream_id = getattr(event, "stream_id", None)
        stream = self.streams.setdefault(stream_id, H2Stream(stream_id)) if stream_id else None
        if isinstance(event, h2.events.ResponseReceived):
            stream.headers = list(event.headers)
        elif isinstance(event, h2.events.TrailersReceived):
            stream.trailers = list(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            stream.data += event.data
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            stream.ended = True
        elif isinstance(event, h2.events.StreamReset):
            stream.reset_code = int(event.error_code)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event

    def wait(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline or not self.pump(deadline):
                return predicate()
        return True

    def send_headers(self, headers: list[tuple[bytes | str, bytes | str]], end_stream: bool = False) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        encoded = [(n if isinstance(n, bytes) else n.encode(), v if isinstance(v, bytes) else v.encode()) for n, v in headers]
        self.conn.send_headers(stream_id, encoded, end_stream=end_stream)
        self.streams[stream_id] = H2Stream(stream_id)
        self._flush()
        return stream_id

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Sends `data`, waiting for flow-control credit as needed."""
        view = memoryview(data)
        while True:
            if not self.wait(lambda: self.closed or self.streams[stream_id].finished or self._window(stream_id) > 0, timeout):
                raise TimeoutError("no HTTP/2 flow-control credit from the proxy in time")
            if self.closed or self.streams[stream_id].reset_code is not None:
                raise ConnectionError(f"stream {stream_id} ended by the proxy: {self.streams[stream_id]!r}")
            size = min(len(view), self._window(stream_id), self.conn.max_outbound_frame_size)
            last = size == len(view)
            self.conn.send_data(stream_id, bytes(view[:size]), end_stream=end_stream and last)
            self._flush()
            view = view[size:]
            if last:
                return

    def _window(self, stream_id: int) -> int:
        try:
            return self.conn.local_flow_control_window(stream_id)
        except h2.exceptions.StreamClosedError:
            return 0

    def reset(self, stream_id: int, code: int = 0x8) -> None:
        self.conn.reset_stream(stream_id, code)
        self._flush()

    def wait_stream(self, stream_id: int, timeout: float = DEFAULT_TIMEOUT) -> H2Stream:
        stream = self.streams[stream_id]
        self.wait(lambda: stream.finished or self.closed, timeout)
        return stream

    def request(
        self,
        method: str,
        path: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        authority: str = "localhost",
        timeout: float = DEFAULT_TIMEOUT,
    ) -> H2Stream:
        fields = [(":method", method), (":scheme", "https"), (":authority", authority), (":path", path)]
        stream_id = self.send_headers(fields + list(headers or []), end_stream=not body)
        if body:
            self.send_data(stream_id, body, end_stream=True, timeout=timeout)
        return self.wait_stream(stream_id, timeout)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "H2Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def raw_frame(frame_type: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([frame_type, flags]) + struct.pack(">I", stream_id) + payload


class RawH2:
    """HTTP/2 frames written by hand over TLS; the proxy's frames are read as headers and payloads only."""

    def __init__(self, address: tuple[str, int], timeout: float = DEFAULT_TIMEOUT):
        self.sock = connect_tls(address, "h2", timeout)
        self.buffer = bytearray()
        self.frames: list[tuple[int, int, int, bytes]] = []
        self.closed = False
        self.sock.sendall(PREFACE + raw_frame(SETTINGS, 0, 0, b""))

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            self.closed = True
            return False

    def read(self, timeout: float) -> None:
        """Reads frames until `timeout` passes or the connection closes; answers SETTINGS so the proxy goes on."""
        deadline = time.monotonic() + timeout
        while not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return
            except OSError:
                data = b""
            if not data:
                self.closed = True
                return
            self.buffer += data
            while len(self.buffer) >= 9:
                length = int.from_bytes(self.buffer[:3], "big")
                if len(self.buffer) < 9 + length:
                    break
                frame_type, flags = self.buffer[3], self.buffer[4]
                stream_id = int.from_bytes(self.buffer[5:9], "big") & 0x7FFFFFFF
                payload = bytes(self.buffer[9 : 9 + length])
                del self.buffer[: 9 + length]
                self.frames.append((frame_type, flags, stream_id, payload))
                if frame_type == SETTINGS and not flags & ACK:
                    self.send(raw_frame(SETTINGS, ACK, 0, b""))

    def goaway_code(self) -> int | None:
        for frame_type, _, _, payload in self.frames:
            if frame_type == GOAWAY and len(payload) >= 8:
                return int.from_bytes(payload[4:8], "big")
        return None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
