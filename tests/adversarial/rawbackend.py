"""An HTTP/1.1 backend written on raw sockets: it records exactly what the proxy sent, byte for byte.

Each request is recorded the moment its head arrives and updated as its body comes in, so a test can tell a
request that reached the backend complete (every byte its framing promised) from one that was cut off. The
reply is up to the test: by default a small JSON document describing the request, after the whole body.
Bodies are decoded as the head frames them (Content-Length or chunked with trailers); any framing the
backend cannot make sense of is recorded as an error and the connection is closed.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

HEAD_LIMIT = 1024 * 1024
IO_TIMEOUT = 30.0


@dataclass
class SeenRequest:
    """One request as it arrived at the backend."""

    connection: int
    index: int  # the request's position on its connection, from 0
    raw_head: bytes
    method: str = ""
    target: str = ""
    version: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    trailers: list[tuple[str, str]] = field(default_factory=list)
    complete: bool = False
    error: str | None = None

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def header(self, name: str) -> str | None:
        values = self.header_values(name)
        return values[0] if values else None

    def describe(self) -> dict:
        return {
            "connection": self.connection,
            "index": self.index,
            "method": self.method,
            "target": self.target,
            "version": self.version,
            "headers": self.headers,
            "body_bytes": len(self.body),
            "trailers": self.trailers,
            "complete": self.complete,
            "error": self.error,
        }


class Exchange:
    """The connection a request came on, for replies that need more than one write."""

    def __init__(self, backend: "RawBackend", sock: socket.socket, request: SeenRequest):
        self.backend = backend
        self.sock = sock
        self.request = request

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def hold(self, limit: float = IO_TIMEOUT) -> float | None:
        """Sends nothing more until the proxy closes the connection; returns when it did (monotonic), or None
        if it was still open after `limit` seconds or the backend is stopping."""
        deadline = time.monotonic() + limit
        while not self.backend.stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(min(left, 0.2))
            try:
                if self.sock.recv(65536) == b"":
                    return time.monotonic()
            except socket.timeout:
                continue
            except OSError:
                return time.monotonic()
        return None


# A reply: given the request and its connection, write a response; return False to close the connection.
Reply = Callable[[Exchange], bool]


def describe_reply(exchange: Exchange) -> bool:
    """200 with a JSON description of the request, framed by Content-Length."""
    body = json.dumps(exchange.request.describe()).encode()
    exchange.send(response(200, body, [("content-type", "application/json")]))
    return True


def response(status: int, body: bytes = b"", headers: list[tuple[str, str]] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"content-length: {len(body)}", "x-raw-backend: 1"]
    lines += [f"{k}: {v}" for k, v in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class RawBackend:
    """A threaded HTTP/1.1 server on 127.0.0.1, port chosen by the OS."""

    def __init__(self, name: str = "raw", reply: Reply = describe_reply, read_body_first: bool = True):
        self.name = name
        self.reply = reply
        self.read_body_first = read_body_first
        self.requests: list[SeenRequest] = []
        self.connections = 0
        self.open_connections = 0
        self.stopping = threading.Event()
        self._cond = threading.Condition()
        self._socks: list[socket.socket] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(512)
        self.port = self._listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._accept, name=f"backend-{name}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    # --- what was seen ----------------------------------------------------------------------------------

    def seen(self, include_health: bool = False) -> list[SeenRequest]:
        """Requests so far (health probes left out unless asked for)."""
        with self._cond:
            return [r for r in self.requests if include_health or r.path != "/health"]

    def wait_for(self, predicate: Callable[[list[SeenRequest]], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate([r for r in self.requests if r.path != "/health"]):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def describe(self) -> str:
        return json.dumps([r.describe() for r in self.seen(include_health=True)], indent=1)

    # --- serving ----------------------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._cond:
                self.connections += 1
                self.open_connections += 1
                number = self.connections
                self._socks.append(sock)
            threading.Thread(target=self._serve, args=(sock, number), daemon=True).start()

    def _serve(self, sock: socket.socket, number: int) -> None:
        sock.settimeout(IO_TIMEOUT)
        reader = _Reader(sock, self.stopping)
        try:
            index = 0
            while not self.stopping.is_set():
                head = reader.read_head()
                if head is None:
                    return
                request = SeenRequest(connection=number, index=index, raw_head=head)
                index += 1
                keep_going = self._parse_head(request)
                with self._cond:
                    self.requests.append(request)
                    self._cond.notify_all()
                if not keep_going:
                    return
                exchange = Exchange(self, sock, request)
                if not self.read_body_first:
                    if not self.reply(exchange):
                        return
                    self._read_body(reader, request)
                    if not request.complete:
                        return
                    continue
                self._read_body(reader, request)
                if not request.complete:
                    return
                if not self.reply(exchange):
                    return
        except OSError:
            return
        finally:
            with self._cond:
                self.open_connections -= 1
                self._cond.notify_all()
            try:
                sock.close()
            except OSError:
                pass

    def _parse_head(self, request: SeenRequest) -> bool:
        text = request.raw_head.decode("latin-1")
        lines = text[: -len("\r\n\r\n")].split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            request.error = f"bad request line {lines[0]!r}"
            return False
        request.method, request.target, request.version = parts
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                request.error = f"bad field line {line!r}"
                return False
            request.headers.append((name, value.strip(" \t")))
        return True

    def _read_body(self, reader: "_Reader", request: SeenRequest) -> None:
        te = request.header_values("transfer-encoding")
        cl = request.header_values("content-length")
        with self._cond:
            if te and cl:
                request.error = "both Transfer-Encoding and Content-Length"
                return
            if len(cl) > 1:
                request.error = "more than one Content-Length"
                return
        if te:
            if [t.strip().lower() for t in ",".join(te).split(",")] != ["chunked"]:
                request.error = f"Transfer-Encoding {te!r}"
                return
            self._read_chunked(reader, request)
        elif cl:
            if not cl[0].isdigit():
                request.error = f"Content-Length {cl[0]!r}"
                return
            left = int(cl[0])
            while left > 0:
                chunk = reader.read_some(min(left, 65536))
                if not chunk:
                    return
                with self._cond:
                    request.body += chunk
                    self._cond.notify_all()
                left -= len(chunk)
            with self._cond:
                request.complete = True
                self._cond.notify_all()
        else:
            with self._cond:
                request.complete = True
                self._cond.notify_all()

    def _read_chunked(self, reader: "_Reader", request: SeenRequest) -> None:
        while True:
            line = reader.read_line()
            if line is None:
                return
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                request.error = f"chunk size {line!r}"
                return
            if size == 0:
                break
            data = reader.read_exact(size)
            if data is None:
                return
            with self._cond:
                request.body += data
                self._cond.notify_all()
            if reader.read_exact(2) != b"\r\n":
                request.error = "chunk data not followed by CRLF"
                return
        while True:
            line = reader.read_line()
            if line is None:
                return
            if line == b"":
                break
            name, _, value = line.decode("latin-1").partition(":")
            request.trailers.append((name.strip(), value.strip()))
        with self._cond:
            request.complete = True
            self._cond.notify_all()

    def close(self) -> None:
        self.stopping.set()
        try:
            self._listener.close()
        except OSError:
            pass
        with self._cond:
            socks = list(self._socks)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Reader:
    """Buffered reads from a socket, every one bounded by the socket's timeout."""

    def __init__(self, sock: socket.socket, stopping: threading.Event):
        self.sock = sock
        self.stopping = stopping
        self.buffer = bytearray()

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except (socket.timeout, OSError):
            return False
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def read_head(self) -> bytes | None:
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(self.buffer[: end + 4])
                del self.buffer[: end + 4]
                return head
            if len(self.buffer) > HEAD_LIMIT or not self._fill():
                return None

    def read_line(self) -> bytes | None:
        while True:
            end = self.buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 2]
                return line
            if len(self.buffer) > HEAD_LIMIT or not self._fill():
                return None

    def read_exact(self, size: int) -> bytes | None:
        while len(self.buffer) < size:
            if not self._fill():
                return None
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def read_some(self, limit: int) -> bytes:
        if not self.buffer and not self._fill():
            return b""
        data = bytes(self.buffer[:limit])
        del self.buffer[:limit]
        return data
