"""The clients the tests judge the proxy by, each reporting the certificate chain it was served:

- curl over TCP (HTTPS: h2 or http/1.1), verifying against a CA file with the name sent as SNI, never -k;
- Python's ssl for a bare TCP handshake with any SNI or none;
- aioquic for HTTP/3 over QUIC.

Every proxy listener is on 127.0.0.1; the names (a.test, ...) are only sent, never resolved.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent
from cryptography import x509

# A debug build on a busy 2-core machine: generous, but every request is bounded.
REQUEST_TIMEOUT = 20.0
PEM = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


@dataclass
class Served:
    """A response status and the certificate chain the server sent, leaf first."""

    status: int
    chain: list[x509.Certificate]

    @property
    def certificate(self) -> x509.Certificate:
        return self.chain[0]


def dns_names(certificate: x509.Certificate) -> list[str]:
    return certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )


def curl_get(port: int, name: str, cafile: Path, path: str = "/") -> Served:
    """GET https://NAME:PORT/PATH with curl, NAME resolved to 127.0.0.1; the chain must verify against `cafile`
    for NAME (curl fails otherwise, and so does this)."""
    done = subprocess.run(
        [
            "curl", "-sS", "--max-time", str(REQUEST_TIMEOUT),
            "--cacert", str(cafile),
            "--resolve", f"{name}:{port}:127.0.0.1",
            "-o", "/dev/null",
            "-w", "%{http_code}\n%{certs}",
            f"https://{name}:{port}{path}",
        ],
        capture_output=True,
        text=True,
        timeout=REQUEST_TIMEOUT + 5,
    )  # fmt: skip
    assert done.returncode == 0, f"curl https://{name}:{port}{path} exited {done.returncode}: {done.stderr}"
    status, _, certs = done.stdout.partition("\n")
    return Served(int(status), [x509.load_pem_x509_certificate(pem.encode()) for pem in PEM.findall(certs)])


def tls_certificate(port: int, server_name: str | None, cafile: Path | None = None) -> x509.Certificate:
    """The certificate the TCP listener on 127.0.0.1:`port` presents to a handshake with SNI `server_name` (None:
    no SNI at all). With `cafile` the chain must verify against it, and the name too; without, nothing is
    verified (the caller compares the certificate itself)."""
    if cafile is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cafile=str(cafile))
        context.check_hostname = server_name is not None
    with (
        socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT) as sock,
        context.wrap_socket(sock, server_hostname=server_name) as tls,
    ):
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


class _H3Client(QuicConnectionProtocol):
    """HTTP/3 GETs on one QUIC connection, answered with their status once the response stream ends."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._http = H3Connection(self._quic)
        self._status: dict[int, int] = {}
        self._waiting: dict[int, asyncio.Future[int]] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        for http_event in self._http.handle_event(event):
            self._h3_event(http_event)

    def _h3_event(self, event: H3Event) -> None:
        if isinstance(event, HeadersReceived):
            self._status.setdefault(event.stream_id, int(dict(event.headers)[b":status"]))
        if isinstance(event, (HeadersReceived, DataReceived)) and event.stream_ended:
            waiting = self._waiting.pop(event.stream_id, None)
            if waiting is not None and not waiting.done():
                waiting.set_result(self._status[event.stream_id])

    def chain(self) -> list[x509.Certificate]:
        # aioquic keeps what the server sent only on its TLS context.
        tls = self._quic.tls
        return [tls._peer_certificate, *tls._peer_certificate_chain]

    async def get(self, authority: str, path: str) -> int:
        stream_id = self._quic.get_next_available_stream_id()
        waiting: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting[stream_id] = waiting
        self._http.send_headers(
            stream_id,
            [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", authority.encode()),
                (b":path", path.encode()),
            ],
            end_stream=True,
        )
        self.transmit()
        return await waiting


async def _h3_get(port: int, server_name: str | None, cafile: Path | None, path: str) -> Served:
    configuration = QuicConfiguration(
        is_client=True,
        alpn_protocols=H3_ALPN,
        server_name=server_name,
        verify_mode=ssl.CERT_NONE if cafile is None else ssl.CERT_REQUIRED,
        idle_timeout=REQUEST_TIMEOUT,
    )
    if cafile is not None:
        configuration.load_verify_locations(cafile=str(cafile))
    # Without a server name aioquic uses the host, an IP address, which it never sends as SNI.
    async with connect("127.0.0.1", port, configuration=configuration, create_protocol=_H3Client) as client:
        status = await client.get(f"{server_name or '127.0.0.1'}:{port}", path)
        return Served(status, client.chain())


def h3_get(port: int, server_name: str | None, cafile: Path | None = None, path: str = "/") -> Served:
    """GET over HTTP/3 to 127.0.0.1:`port` (UDP) with SNI `server_name` (None: no SNI). With `cafile` the chain
    must verify against it for that name (aioquic fails the handshake otherwise); without, nothing is verified."""
    return asyncio.run(asyncio.wait_for(_h3_get(port, server_name, cafile, path), REQUEST_TIMEOUT))
