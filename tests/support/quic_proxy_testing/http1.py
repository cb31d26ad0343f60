"""Plain HTTP/1.1 requests on a fresh connection each (http.client), for admin APIs and demo backends."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass

REQUEST_TIMEOUT = 10.0


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self):
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def http_request(
    method: str,
    address: str | tuple[str, int],
    path: str,
    headers: dict | None = None,
    body: bytes | None = None,
    timeout: float = REQUEST_TIMEOUT,
) -> Answer:
    """One request to `address` ("host:port", IPv6 hosts in brackets, or (host, port)) on a connection of its
    own; any status is an answer, only transport failures raise."""
    if isinstance(address, str):
        host, port = address.rsplit(":", 1)
        address = (host, int(port))
    connection = http.client.HTTPConnection(*address, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        connection.close()
