"""A raw HTTP/3 client on aioquic's QUIC layer, able to send what a well-behaved client never would.

aioquic's own HTTP/3 layer validates both directions and closes the connection on anything odd, which would
hide what the proxy actually sent. So only QUIC comes from aioquic: frames are written by hand, field sections
are QPACK-encoded with pylsqpack's static-table encoder (no dynamic table, so nothing needs an encoder
stream), and every frame the proxy sends on a request stream is recorded as it arrived.

Every client runs on one shared event loop in a background thread; the methods here are synchronous, so a
test can drive HTTP/3 streams, raw TCP sockets and the proxy's admin listener from the same plain code.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import pylsqpack
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.buffer import encode_uint_var
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    QuicEvent,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)

# RFC 9114 7.2 frame types and the 8.1 error codes the tests expect, RFC 9204 6 error code.
DATA, HEADERS, CANCEL_PUSH, SETTINGS, PUSH_PROMISE, GOAWAY, MAX_PUSH_ID = 0x0, 0x1, 0x3, 0x4, 0x5, 0x7, 0xD
H3_STREAM_CREATION_ERROR = 0x103
H3_CLOSED_CRITICAL_STREAM = 0x104
H3_FRAME_UNEXPECTED = 0x105
H3_FRAME_ERROR = 0x106
H3_SETTINGS_ERROR = 0x109
H3_MISSING_SETTINGS = 0x10A
H3_REQUEST_CANCELLED = 0x10C
H3_REQUEST_INCOMPLETE = 0x10D
H3_MESSAGE_ERROR = 0x10E
QPACK_DECOMPRESSION_FAILED = 0x200

# Stream types (RFC 9114 6.2).
CONTROL_STREAM, PUSH_STREAM = 0x0, 0x1

CONNECT_TIMEOUT = 10.0

Headers = list[tuple[bytes, bytes]]


def varint(value: int) -> bytes:
    return encode_uint_var(value)


def read_varint(data: bytes | bytearray, offset: int) -> tuple[int, int] | None:
    """(value, next offset), or None when `data` ends inside the varint."""
    if offset >= len(data):
        return None
    length = 1 << (data[offset] >> 6)
    if offset + length > len(data):
        return None
    value = data[offset] & 0x3F
    for byte in data[offset + 1 : offset + length]:
        value = (value << 8) | byte
    return value, offset + length


def frame(frame_type: int, payload: bytes) -> bytes:
    return varint(frame_type) + varint(len(payload)) + payload


def settings_payload(settings: dict[int, int]) -> bytes:
    return b"".join(varint(k) + varint(v) for k, v in settings.items())


def encode_fields(headers: Iterable[tuple[bytes | str, bytes | str]], stream_id: int = 0) -> bytes:
    """A QPACK field section using the static table and literals only, names and values sent as given."""
    encoded = [(_bytes(name), _bytes(value)) for name, value in headers]
    _, block = pylsqpack.Encoder().encode(stream_id, encoded)
    return block


def _prefixed_int(value: int, prefix_bits: int, first_byte_flags: int) -> bytes:
    """RFC 7541 5.1 integer with an N-bit prefix, as QPACK uses it."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first_byte_flags | value])
    out = bytearray([first_byte_flags | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal_field_line(name: bytes, value: bytes) -> bytes:
    """A field line with a literal name and value, no Huffman (RFC 9204 4.5.6): anything at all, even names
    pylsqpack refuses to encode (empty ones)."""
    return _prefixed_int(len(name), 3, 0x20) + name + _prefixed_int(len(value), 7, 0x00) + value


def headers_frame(headers: Iterable[tuple[bytes | str, bytes | str]]) -> bytes:
    return frame(HEADERS, encode_fields(headers))


def data_frame(data: bytes) -> bytes:
    return frame(DATA, data)


def request_fields(
    method: str,
    path: str,
    authority: str = "localhost",
    scheme: str = "https",
    extra: Iterable[tuple[bytes | str, bytes | str]] = (),
) -> Headers:
    fields: Headers = [
        (b":method", method.encode()),
        (b":scheme", scheme.encode()),
        (b":authority", authority.encode()),
        (b":path", path.encode()),
    ]
    return fields + [(_bytes(n), _bytes(v)) for n, v in extra]


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


@dataclass
class Stream:
    """What the proxy sent on one request stream."""

    stream_id: int
    pending: bytearray = field(default_factory=bytearray)
    frames: list[tuple[int, bytes]] = field(default_factory=list)
    field_sections: list[Headers] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset_code: int | None = None
    stop_code: int | None = None
    decode_error: str | None = None

    @property
    def finished(self) -> bool:
        """The proxy is done with this stream: it ended it, reset it, or could not be understood."""
        return self.ended or self.reset_code is not None or self.decode_error is not None

    @property
    def head(self) -> Headers | None:
        """The final response head (interim 1xx heads skipped)."""
        for section in self.field_sections:
            status = dict(section).get(b":status", b"")
            if not status.startswith(b"1"):
                return section
        return None

    @property
    def status(self) -> int | None:
        head = self.head
        if head is None:
            return None
        value = dict(head).get(b":status")
        return int(value) if value and value.isdigit() else None

    def header(self, name: str) -> str | None:
        head = self.head or []
        for key, value in head:
            if key == name.encode():
                return value.decode("latin-1")
        return None

    @property
    def trailers(self) -> Headers | None:
        head = self.head
        if head is None:
            return None
        sections = self.field_sections[self.field_sections.index(head) + 1 :]
        return sections[0] if sections else None

    def describe(self) -> str:
        return (
            f"stream {self.stream_id}: status={self.status} head={self.head} body={bytes(self.data[:200])!r}"
            f"{'...' if len(self.data) > 200 else ''} ({len(self.data)} bytes) ended={self.ended} "
            f"reset={_code(self.reset_code)} stop_sending={_code(self.stop_code)} decode_error={self.decode_error} "
            f"frame types={[t for t, _ in self.frames]}"
        )


def _code(code: int | None) -> str:
    return "none" if code is None else hex(code)


class _Loop:
    """One event loop in a daemon thread, shared by every client in the process."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="h3raw-loop", daemon=True)
                thread.start()
                cls._loop = loop
            return cls._loop


def on_loop(fn: Callable, timeout: float = 10.0):
    """Runs `fn` in the shared loop's thread and returns its result (or raises what it raised)."""

    async def run():
        result = fn()
        if asyncio.iscoroutine(result):
            result = await result
        return result

    return asyncio.run_coroutine_threadsafe(run(), _Loop.get()).result(timeout)


class _Protocol(QuicConnectionProtocol):
    def __init__(self, quic: QuicConnection, client: "H3Client"):
        super().__init__(quic)
        self.client = client
        self.abandoned = False

    def transmit(self) -> None:
        # An abandoned connection sends nothing more, timers included, like a client that lost power.
        if not self.abandoned:
            super().transmit()

    def quic_event_received(self, event: QuicEvent) -> None:
        self.client._on_event(event)


class H3Client:
    """One QUIC connection to the proxy, speaking HTTP/3 by hand."""

    def __init__(self, address: tuple[str, int]):
        self.address = address
        self._protocol: _Protocol | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._cond = threading.Condition()
        self.streams: dict[int, Stream] = {}
        self.peer_uni: dict[int, bytearray] = {}
        self.peer_settings: dict[int, int] | None = None
        self.goaway: int | None = None
        self.handshake_done = False
        self.terminated: ConnectionTerminated | None = None
        self.control_stream: int | None = None
        self._keepalive: asyncio.Task | None = None
        self._decoder = pylsqpack.Decoder(0, 0)

    # --- connecting -------------------------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        address: tuple[str, int],
        *,
        send_settings: bool = True,
        alpn: str = "h3",
        idle_timeout: float = 30.0,
        timeout: float = CONNECT_TIMEOUT,
    ) -> "H3Client":
        """A connection whose handshake has completed; with `send_settings`, the control stream is open."""
        configuration = QuicConfiguration(
            is_client=True,
            alpn_protocols=[alpn],
            verify_mode=ssl.CERT_NONE,
            server_name="localhost",
            idle_timeout=idle_timeout,
            max_data=16 * 1024 * 1024,
            max_stream_data=4 * 1024 * 1024,
        )
        client = cls(address)
        on_loop(lambda: client._open(configuration), timeout)
        if not client.wait(lambda: client.handshake_done or client.terminated is not None, timeout):
            client.abandon()
            raise TimeoutError(f"QUIC handshake with {address} did not complete within {timeout}s")
        if client.terminated is not None:
            raise ConnectionError(f"QUIC handshake with {address} failed: {client.describe_close()}")
        if send_settings:
            client.control_stream = client.open_uni(
                CONTROL_STREAM,
                frame(SETTINGS, settings_payload({0x1: 0, 0x7: 0, 0x6: 256 * 1024})),
            )
        return client

    async def _open(self, configuration: QuicConfiguration) -> None:
        loop = asyncio.get_running_loop()
        quic = QuicConnection(configuration=configuration)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        self._transport, self._protocol = await loop.create_datagram_endpoint(lambda: _Protocol(quic, self), sock=sock)
        quic.connect(self.address, now=loop.time())
        self._protocol.transmit()

    # --- QUIC events (loop thread) ----------------------------------------------------------------------

    def _on_event(self, event: QuicEvent) -> None:
        with self._cond:
            if isinstance(event, HandshakeCompleted):
                self.handshake_done = True
            elif isinstance(event, ConnectionTerminated):
                self.terminated = event
            elif isinstance(event, StreamDataReceived):
                if event.stream_id % 4 == 0:
                    self._on_request_data(event)
                elif event.stream_id % 4 == 3:
                    self._on_uni_data(event)
            elif isinstance(event, StreamReset):
                self._stream(event.stream_id).reset_code = event.error_code
            elif isinstance(event, StopSendingReceived):
                self._stream(event.stream_id).stop_code = event.error_code
            self._cond.notify_all()

    def _stream(self, stream_id: int) -> Stream:
        if stream_id not in self.streams:
            self.streams[stream_id] = Stream(stream_id)
        return self.streams[stream_id]

    def _on_request_data(self, event: StreamDataReceived) -> None:
        stream = self._stream(event.stream_id)
        stream.pending += event.data
        while True:
            parsed = _take_frame(stream.pending)
            if parsed is None:
                break
            frame_type, payload, used = parsed
            del stream.pending[:used]
            stream.frames.append((frame_type, payload))
            if frame_type == DATA:
                stream.data += payload
            elif frame_type == HEADERS:
                try:
                    _, fields = self._decoder.feed_header(event.stream_id, payload)
                except Exception as error:  # noqa: BLE001 - any decoder failure is a finding, not a crash
                    stream.decode_error = f"QPACK: {error!r}"
                    continue
                stream.field_sections.append(list(fields))
        if event.end_stream:
            stream.ended = True
            if stream.pending:
                stream.decode_error = f"stream ended inside a frame ({len(stream.pending)} bytes left)"

    def _on_uni_data(self, event: StreamDataReceived) -> None:
        buffer = self.peer_uni.setdefault(event.stream_id, bytearray())
        buffer += event.data
        parsed_type = read_varint(buffer, 0)
        if parsed_type is None or parsed_type[0] != CONTROL_STREAM:
            return
        offset = parsed_type[1]
        while True:
            parsed = _take_frame(buffer[offset:])
            if parsed is None:
                break
            frame_type, payload, used = parsed
            offset += used
            if frame_type == SETTINGS:
                self.peer_settings = _parse_settings(payload)
            elif frame_type == GOAWAY:
                value = read_varint(payload, 0)
                self.goaway = value[0] if value else -1
        # Keep only the stream type and what is not parsed yet.
        del buffer[parsed_type[1] : offset]

    # --- acting (any thread) ----------------------------------------------------------------------------

    def _act(self, fn: Callable[[QuicConnection], object]):
        def run():
            result = fn(self._protocol._quic)
            self._protocol.transmit()
            return result

        return on_loop(run)

    def new_stream(self) -> int:
        stream_id = self._act(lambda quic: quic.get_next_available_stream_id())
        with self._cond:
            self._stream(stream_id)
        return stream_id

    def send(self, stream_id: int, data: bytes, end: bool = False) -> bool:
        """Raw bytes on a stream: frames built by the caller, however wrong. False when the stream's sending
        half is already reset (the proxy asked it to stop), as a client that ignores STOP_SENDING would find."""

        return self._act(lambda quic: _attempt(lambda: quic.send_stream_data(stream_id, data, end)))

    def send_headers(self, stream_id: int, headers: Iterable, end: bool = False) -> bool:
        return self.send(stream_id, headers_frame(headers), end)

    def send_data(self, stream_id: int, data: bytes, end: bool = False) -> bool:
        return self.send(stream_id, data_frame(data), end)

    def finish(self, stream_id: int) -> bool:
        return self.send(stream_id, b"", True)

    def reset(self, stream_id: int, code: int = H3_REQUEST_CANCELLED) -> bool:
        """RESET_STREAM: the client abandons sending. False if the stream is already over."""
        return self._act(lambda quic: _attempt(lambda: quic.reset_stream(stream_id, code)))

    def stop(self, stream_id: int, code: int = H3_REQUEST_CANCELLED) -> bool:
        """STOP_SENDING: the client no longer wants the response. False if the stream is already over."""
        return self._act(lambda quic: _attempt(lambda: quic.stop_stream(stream_id, code)))

    def stream_credit(self) -> int:
        """Request streams the proxy currently allows the client to have opened in all (MAX_STREAMS); read
        without the loop, as a plain attribute, so it can be polled from any thread."""
        return self._protocol._quic._remote_max_streams_bidi

    def open_uni(self, stream_type: int, data: bytes = b"", end: bool = False) -> int:
        def open_stream(quic: QuicConnection) -> int:
            stream_id = quic.get_next_available_stream_id(is_unidirectional=True)
            quic.send_stream_data(stream_id, varint(stream_type) + data, end)
            return stream_id

        return self._act(open_stream)

    def ping(self) -> None:
        self._act(lambda quic: quic.send_ping(int(time.monotonic() * 1000)))

    def keep_alive(self, interval: float = 0.5) -> None:
        """PINGs every `interval` until closed, so an idle timeout never ends the connection."""

        async def pinging():
            while True:
                await asyncio.sleep(interval)
                self._protocol._quic.send_ping(0)
                self._protocol.transmit()

        def start():
            self._keepalive = asyncio.get_running_loop().create_task(pinging())

        on_loop(start)

    # --- waiting ----------------------------------------------------------------------------------------

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Whether `predicate` (read under the client's lock) became true within `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def wait_stream(self, stream_id: int, timeout: float = 10.0) -> Stream:
        """The stream once the proxy finished it, or the connection closed, or `timeout` passed."""
        stream = self.streams[stream_id]
        self.wait(lambda: stream.finished or self.terminated is not None, timeout)
        return stream

    def wait_head(self, stream_id: int, timeout: float = 10.0) -> Stream:
        stream = self.streams[stream_id]
        self.wait(lambda: stream.head is not None or stream.finished or self.terminated is not None, timeout)
        return stream

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Iterable = (),
        body: bytes | None = None,
        trailers: Iterable | None = None,
        authority: str = "localhost",
        timeout: float = 10.0,
    ) -> Stream:
        """A well-formed request; returns the stream once finished (or the timeout passed)."""
        stream_id = self.new_stream()
        fields = request_fields(method, path, authority, extra=headers)
        payload = headers_frame(fields)
        if body:
            payload += data_frame(body)
        if trailers is not None:
            payload += headers_frame(trailers)
        self.send(stream_id, payload, end=True)
        return self.wait_stream(stream_id, timeout)

    # --- closing ----------------------------------------------------------------------------------------

    def describe_close(self) -> str:
        event = self.terminated
        if event is None:
            return "open"
        return f"closed: error {hex(event.error_code)} frame type {event.frame_type} reason {event.reason_phrase!r}"

    def close(self) -> None:
        def shut():
            if self._keepalive is not None:
                self._keepalive.cancel()
            self._protocol.close()
            self._protocol.transmit()
            self._transport.close()

        try:
            on_loop(shut)
        except RuntimeError:
            pass

    def abandon(self) -> None:
        """Drops the socket without a CONNECTION_CLOSE, like a client that vanished."""

        def drop():
            if self._keepalive is not None:
                self._keepalive.cancel()
            self._protocol.abandoned = True
            self._transport.close()

        on_loop(drop)

    def __enter__(self) -> "H3Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _attempt(action: Callable[[], object]) -> bool:
    """Runs a stream operation aioquic refuses once the stream is reset or discarded; whether it ran."""
    try:
        action()
    except (RuntimeError, ValueError):
        return False
    return True


def _take_frame(buffer: bytes | bytearray) -> tuple[int, bytes, int] | None:
    """(type, payload, bytes used) of the first complete frame in `buffer`."""
    parsed_type = read_varint(buffer, 0)
    if parsed_type is None:
        return None
    parsed_length = read_varint(buffer, parsed_type[1])
    if parsed_length is None:
        return None
    length, start = parsed_length
    if start + length > len(buffer):
        return None
    return parsed_type[0], bytes(buffer[start : start + length]), start + length


def _parse_settings(payload: bytes) -> dict[int, int]:
    settings, offset = {}, 0
    while offset < len(payload):
        key = read_varint(payload, offset)
        if key is None:
            break
        value = read_varint(payload, key[1])
        if value is None:
            break
        settings[key[0]] = value[0]
        offset = value[1]
    return settings


# --- Initial packets without a connection --------------------------------------------------------------

LONG_HEADER_TYPES = {0: "initial", 1: "0rtt", 2: "handshake", 3: "retry"}


@dataclass
class Initial:
    """A client's first flight (ClientHello in an Initial packet) and the connection ID the server answers to."""

    datagrams: list[bytes]
    source_cid: bytes


def client_initials(address: tuple[str, int], count: int) -> list[Initial]:
    """`count` first flights of distinct connections, never to be continued: half-open handshakes."""
    initials = []
    for _ in range(count):
        configuration = QuicConfiguration(
            is_client=True, alpn_protocols=["h3"], verify_mode=ssl.CERT_NONE, server_name="localhost"
        )
        quic = QuicConnection(configuration=configuration)
        now = time.monotonic()
        quic.connect(address, now=now)
        datagrams = [data for data, _ in quic.datagrams_to_send(now=now)]
        initials.append(Initial(datagrams, quic.host_cid))
    return initials


def long_header(datagram: bytes) -> tuple[str, bytes] | None:
    """(packet type, destination connection ID) of a QUIC v1 long-header packet; None for anything else."""
    if len(datagram) < 7 or not datagram[0] & 0x80:
        return None
    packet_type = LONG_HEADER_TYPES[(datagram[0] >> 4) & 0x3]
    dcid_length = datagram[5]
    return packet_type, bytes(datagram[6 : 6 + dcid_length])
