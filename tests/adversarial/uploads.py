"""One request whose body the test sends piece by piece, the same way over HTTP/1.1, HTTPS (HTTP/1.1 and
HTTP/2) and HTTP/3, so slow and stalled clients are tested alike on every listener."""

from __future__ import annotations

import time

import h1raw
from h2raw import H2Client
from h3raw import H3Client, request_fields

PROTOCOLS = ["http1", "https-http1", "http2", "http3"]


class Upload:
    protocol: str

    def send(self, data: bytes) -> bool:
        """False once the proxy closed or reset the request (or already answered it)."""
        raise NotImplementedError

    def finish(self) -> None:
        """Ends the request body where the protocol has a way to say so (HTTP/2 END_STREAM, HTTP/3 FIN);
        HTTP/1.1 bodies end with their last Content-Length byte."""

    def status(self, wait: float = 0.0) -> int | None:
        """The response status if a response head has arrived (waiting up to `wait` for one)."""
        raise NotImplementedError

    def ended_by_proxy(self) -> bool:
        """The proxy closed the connection or reset the stream."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class H1Upload(Upload):
    def __init__(self, address, tls: bool, path: str, length: int):
        self.protocol = "https-http1" if tls else "http1"
        self.client = h1raw.H1Client(address, tls=tls)
        self.response: h1raw.Response | None = None
        self.client.send(h1raw.request_bytes("POST", path, [("Content-Length", str(length))]))

    def send(self, data: bytes) -> bool:
        return self.status() is None and not self.client.eof and self.client.try_send(data)

    def status(self, wait: float = 0.0) -> int | None:
        if self.response is None and not self.client.eof:
            try:
                self.response = self.client.read_response(timeout=max(wait, 0.01))
            except (TimeoutError, ConnectionError):
                pass
        return self.response.status if self.response else None

    def ended_by_proxy(self) -> bool:
        self.status()
        return self.client.eof

    def wait_closed(self, timeout: float) -> bool:
        return self.client.wait_closed(timeout)

    def close(self) -> None:
        self.client.close()


class H2Upload(Upload):
    protocol = "http2"

    def __init__(self, address, path: str, length: int):
        self.client = H2Client(address)
        fields = [(":method", "POST"), (":scheme", "https"), (":authority", "localhost"), (":path", path)]
        self.stream_id = self.client.send_headers(fields + [("content-length", str(length))])

    def send(self, data: bytes) -> bool:
        if self.ended_by_proxy() or self.status() is not None:
            return False
        try:
            self.client.send_data(self.stream_id, data, timeout=0.5)
        except (TimeoutError, ConnectionError):
            return False
        return True

    def finish(self) -> None:
        self.client.send_data(self.stream_id, b"", end_stream=True)

    def status(self, wait: float = 0.0) -> int | None:
        stream = self.client.streams[self.stream_id]
        self.client.wait(lambda: stream.headers is not None or stream.finished or self.client.closed, max(wait, 0.01))
        return stream.status

    def ended_by_proxy(self) -> bool:
        self.status()
        return self.client.closed or self.client.streams[self.stream_id].reset_code is not None

    def close(self) -> None:
        self.client.close()


class H3Upload(Upload):
    protocol = "http3"

    def __init__(self, address, path: str, length: int):
        self.client = H3Client.connect(address)
        self.stream_id = self.client.new_stream()
        self.client.send_headers(self.stream_id, request_fields("POST", path, extra=[("content-length", str(length))]))

    def send(self, data: bytes) -> bool:
        if self.ended_by_proxy() or self.status() is not None:
            return False
        return self.client.send_data(self.stream_id, data)

    def finish(self) -> None:
        self.client.finish(self.stream_id)

    def status(self, wait: float = 0.0) -> int | None:
        if wait:
            self.client.wait_head(self.stream_id, wait)
        return self.client.streams[self.stream_id].status

    def ended_by_proxy(self) -> bool:
        stream = self.client.streams[self.stream_id]
        return self.client.terminated is not None or stream.reset_code is not None or stream.stop_code is not None

    def close(self) -> None:
        self.client.close()


def open_upload(proxy, protocol: str, path: str, length: int) -> Upload:
    if protocol == "http1":
        return H1Upload(proxy.http, False, path, length)
    if protocol == "https-http1":
        return H1Upload(proxy.https, True, path, length)
    if protocol == "http2":
        return H2Upload(proxy.https, path, length)
    if protocol == "http3":
        return H3Upload(proxy.quic, path, length)
    raise ValueError(protocol)


def answered_or_ended(upload: Upload, timeout: float) -> tuple[int | None, bool, float]:
    """Waits until the proxy answers the request or ends it; (status, ended by the proxy, seconds waited)."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        status = upload.status(wait=0.1)
        ended = upload.ended_by_proxy()
        if status is not None or ended or time.monotonic() >= deadline:
            return status, ended, time.monotonic() - started
