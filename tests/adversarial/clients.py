"""One GET over each listener, answered the same way whatever the protocol, for tests that check the proxy's
answer rather than a protocol's details."""

from __future__ import annotations

from dataclasses import dataclass

import h1raw
from h2raw import H2Client
from h3raw import H3Client

PROTOCOLS = ["http1", "https-http1", "http2", "http3"]


@dataclass
class Outcome:
    """What a client saw: the status (None without a head), the body bytes it got, whether the response
    ended cleanly (complete framing, FIN, END_STREAM), and how it ended otherwise."""

    status: int | None
    headers: list[tuple[str, str]]
    body: bytes
    clean_end: bool
    detail: str

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


def get(proxy, protocol: str, path: str, timeout: float) -> Outcome:
    """GET `path` on a fresh connection; waits up to `timeout` for the response to end one way or another."""
    if protocol in ("http1", "https-http1"):
        address, tls = (proxy.http, False) if protocol == "http1" else (proxy.https, True)
        with h1raw.H1Client(address, tls=tls) as client:
            client.send(h1raw.request_bytes("GET", path))
            try:
                response = client.read_response(timeout)
            except TimeoutError:
                head, body = client.partial, bytes(client.buffer)
                status, headers = (head.status, head.headers) if head else (None, [])
                detail = f"no end of the response within {timeout}s: status {status} {headers}, {len(body)} body bytes"
                return Outcome(status, headers, body, False, detail)
            except ConnectionError as error:
                return Outcome(None, [], b"", False, str(error))
            if response is None:
                return Outcome(None, [], b"", False, "closed without a response")
            return Outcome(response.status, response.headers, response.body, response.complete, repr(response))
    if protocol == "http2":
        with H2Client(proxy.https) as client:
            stream = client.request("GET", path, timeout=timeout)
            headers = [(k.decode(), v.decode("latin-1")) for k, v in stream.headers or []]
            detail = repr(stream) + (f" protocol error: {client.protocol_error}" if client.protocol_error else "")
            clean = stream.ended and stream.reset_code is None and client.protocol_error is None
            return Outcome(stream.status, headers, bytes(stream.data), clean, detail)
    if protocol == "http3":
        with H3Client.connect(proxy.quic) as client:
            stream = client.request("GET", path, timeout=timeout)
            headers = [(k.decode(), v.decode("latin-1")) for k, v in stream.head or []]
            clean = stream.ended and stream.reset_code is None and stream.decode_error is None
            return Outcome(stream.status, headers, bytes(stream.data), clean, stream.describe() + " " + client.describe_close())
    raise ValueError(protocol)
