"""A raw HTTP/1.1 client over TCP or TLS: bytes out exactly as written, responses parsed strictly.

Every read has a deadline. A response is parsed the way a careful client would frame it (Content-Length,
chunked, or until the connection closes), and whether its framing was complete is recorded, so a test can
tell a truncated response from a finished one.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass, field

DEFAULT_TIMEOUT = 10.0


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    complete: bool = False  # the body ended where its framing said it would
    raw_head: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def header(self, name: str) -> str | None:
        values = self.header_values(name)
        return values[0] if values else None

    def __repr__(self) -> str:
        body = self.body[:300]
        return f"<{self.status} {self.headers} body={body!r}{'...' if len(self.body) > 300 else ''} complete={self.complete}>"


def tls_context(alpn: list[str]) -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(alpn)
    return context


class H1Client:
    """One TCP (or TLS) connection to a listener."""

    def __init__(self, address: tuple[str, int], tls: bool = False, timeout: float = DEFAULT_TIMEOUT):
        self.address = address
        sock = socket.create_connection(address, timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            sock = tls_context(["http/1.1"]).wrap_socket(sock, server_hostname="localhost")
            assert sock.selected_alpn_protocol() in (None, "http/1.1"), sock.selected_alpn_protocol()
        self.sock = sock
        self.buffer = bytearray()
        self.eof = False
        # The head of a response whose body is still being read, so a timeout can say what had arrived.
        self.partial: Response | None = None

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def try_send(self, data: bytes) -> bool:
        """Sends unless the proxy already closed or reset the connection."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def _fill(self, deadline: float) -> bool:
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no data from the proxy in time")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout as error:
            raise TimeoutError("no data from the proxy in time") from error
        except (ConnectionResetError, ssl.SSLError, OSError):
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buffer += chunk
        return True

    def read_response(self, timeout: float = DEFAULT_TIMEOUT, method: str = "GET") -> Response | None:
        """The next final response, or None if the connection closed before one began. Raises TimeoutError
        when nothing complete arrived in time (the partial data stays in the buffer)."""
        deadline = time.monotonic() + timeout
        while True:
            response = self._read_one(deadline, method)
            if response is None or response.status >= 200 or response.status == 101:
                return response

    def _read_one(self, deadline: float, method: str) -> Response | None:
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end >= 0:
                break
            if not self._fill(deadline):
                if self.buffer:
                    raise ConnectionError(f"connection closed inside a response head: {bytes(self.buffer)!r}")
                return None
        raw_head = bytes(self.buffer[: end + 4])
        del self.buffer[: end + 4]
        lines = raw_head[:-4].decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise ConnectionError(f"not an HTTP/1.1 response: {raw_head!r}")
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
        response = Response(int(code), reason, headers, raw_head=raw_head)
        self.partial = response
        if response.status < 200 or response.status in (204, 304) or method == "HEAD":
            response.complete = True
            return response
        te = response.header_values("transfer-encoding")
        cl = response.header_values("content-length")
        if te and te[-1].lower().endswith("chunked"):
            self._read_chunked(response, deadline)
        elif cl:
            length = int(cl[0])
            while len(self.buffer) < length and self._fill(deadline):
                pass
            response.body = bytes(self.buffer[:length])
            del self.buffer[:length]
            response.complete = len(response.body) == length
        else:
            while self._fill(deadline):
                pass
            response.body = bytes(self.buffer)
            self.buffer.clear()
            response.complete = True
        return response

    def _read_chunked(self, response: Response, deadline: float) -> None:
        body = bytearray()
        while True:
            line = self._line(deadline)
            if line is None:
                response.body = bytes(body)
                return
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                break
            while len(self.buffer) < size + 2:
                if not self._fill(deadline):
                    body += self.buffer[:size]
                    self.buffer.clear()
                    response.body = bytes(body)
                    return
            body += self.buffer[:size]
            del self.buffer[: size + 2]
        while True:
            line = self._line(deadline)
            if line is None:
                response.body = bytes(body)
                return
            if line == b"":
                break
            name, _, value = line.decode("latin-1").partition(":")
            response.trailers.append((name.strip().lower(), value.strip()))
        response.body = bytes(body)
        response.complete = True

    def _line(self, deadline: float) -> bytes | None:
        while True:
            end = self.buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 2]
                return line
            if not self._fill(deadline):
                return None

    def wait_closed(self, timeout: float) -> bool:
        """Whether the proxy closed (or reset) the connection within `timeout`; data before that is kept."""
        deadline = time.monotonic() + timeout
        try:
            while self._fill(deadline):
                pass
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "H1Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def request_bytes(
    method: str,
    target: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    host: str | None = "localhost",
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{k}: {v}" for k, v in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def exchange(address: tuple[str, int], data: bytes, tls: bool = False, timeout: float = DEFAULT_TIMEOUT) -> Response | None:
    """One request's bytes on a fresh connection, and the response."""
    with H1Client(address, tls=tls, timeout=timeout) as client:
        client.send(data)
        return client.read_response(timeout)
