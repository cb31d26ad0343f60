"""A real grpcio server (HTTP/2 in clear text, which the proxy reaches with `protocol: h2c`) with the Echo
service of echo.proto and grpcio-health-checking's Health service.

It runs in the test process, so tests read what it saw (deadlines, cancellations, the metadata and Via the
proxy passed on, the services the proxy's probes asked about) directly, each wait bounded.
"""

from __future__ import annotations

import hashlib
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

# 4 MiB payloads plus their framing exceed grpcio's default 4 MiB receive limit; the suite's large-message
# tests need a little more on both sides.
MAX_MESSAGE = 16 * 1024 * 1024
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
]

_BLOCK = bytes(range(251))


def pattern(size: int) -> bytes:
    """`size` bytes where byte i is i % 251: what the server sends as reply payloads, so a client can check them."""
    return (_BLOCK * (size // len(_BLOCK) + 1))[:size]


@dataclass
class Observed:
    """One call as the server saw it."""

    method: str
    text: str
    metadata: dict[str, str | bytes]
    time_remaining: float | None
    # Set when the call ended, whichever way (completed, cancelled by the client, past its deadline).
    ended: threading.Event = field(default_factory=threading.Event)
    # For the methods asked to wait: whether the call ended (cancelled, or out of time) while the handler
    # waited, set before `waited` is.
    cancelled_while_waiting: bool | None = None
    waited: threading.Event = field(default_factory=threading.Event)

    def wait_cancelled(self, timeout: float = 10.0) -> bool:
        """True once the handler's wait ended because the call did, within `timeout`."""
        return self.waited.wait(timeout) and bool(self.cancelled_while_waiting)


class Calls:
    """What a server saw, by request text; tests give every call a unique text."""

    def __init__(self) -> None:
        self._by_text: dict[str, Observed] = {}
        self._cond = threading.Condition()

    def add(self, observed: Observed) -> None:
        with self._cond:
            self._by_text[observed.text] = observed
            self._cond.notify_all()

    def get(self, text: str, timeout: float = 10.0) -> Observed:
        deadline = time.monotonic() + timeout
        with self._cond:
            while text not in self._by_text:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"the server saw no call with text {text!r} within {timeout}s")
                self._cond.wait(left)
            return self._by_text[text]

    def seen(self, text: str) -> bool:
        with self._cond:
            return text in self._by_text


class RecordingHealth(health.HealthServicer):
    """grpcio-health-checking's servicer, noting which service each Check asked about."""

    def __init__(self) -> None:
        super().__init__()
        self._asked: list[str] = []
        self._cond = threading.Condition()

    def Check(self, request, context):
        with self._cond:
            self._asked.append(request.service)
            self._cond.notify_all()
        return super().Check(request, context)

    def asked(self) -> list[str]:
        with self._cond:
            return list(self._asked)

    def wait_checks(self, count: int, timeout: float = 10.0) -> list[str]:
        """Waits until `count` more checks than now have arrived; returns the services they asked about."""
        deadline = time.monotonic() + timeout
        with self._cond:
            start = len(self._asked)
            while len(self._asked) < start + count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self._asked) - start} of {count} health checks within {timeout}s")
                self._cond.wait(left)
            return self._asked[start : start + count]


def _sha256(chunks: list[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def make_servicer(pb2: ModuleType, pb2_grpc: ModuleType, name: str, calls: Calls):
    """The Echo servicer for the modules compiled from echo.proto."""

    class Echo(pb2_grpc.EchoServicer):
        def _observe(self, method: str, request, context) -> Observed:
            metadata = dict(context.invocation_metadata())
            remaining = context.time_remaining()
            observed = Observed(method, request.text, metadata, remaining)
            context.add_callback(observed.ended.set)
            calls.add(observed)
            return observed

        def _reply(self, request, context, **fields) -> object:
            metadata = dict(context.invocation_metadata())
            remaining = context.time_remaining()
            return pb2.EchoReply(
                text=request.text,
                payload=pattern(request.reply_bytes),
                server=name,
                time_remaining=-1.0 if remaining is None else remaining,
                via=str(metadata.get("via", "")),
                **fields,
            )

        def Unary(self, request, context):
            self._observe("Unary", request, context)
            context.send_initial_metadata((("x-echo-server", name),))
            context.set_trailing_metadata(
                (("x-echo-trailer", f"done {request.text}"), ("x-echo-trailer-bin", b"\x00\xffbinary\r\n"))
            )
            return self._reply(
                request,
                context,
                received_messages=1,
                received_bytes=len(request.payload),
                received_sha256=_sha256([request.payload]),
            )

        def ServerStream(self, request, context):
            observed = self._observe("ServerStream", request, context)
            for index in range(request.replies):
                yield self._reply(request, context, index=index)
            if request.wait_ms:
                observed.cancelled_while_waiting = observed.ended.wait(request.wait_ms / 1000)
                observed.waited.set()

        def ClientStream(self, request_iterator, context):
            chunks: list[bytes] = []
            first = None
            for request in request_iterator:
                first = first or request
                chunks.append(request.payload)
            if first is None:
                first = pb2.EchoRequest()
            self._observe("ClientStream", first, context)
            return self._reply(
                first,
                context,
                received_messages=len(chunks),
                received_bytes=sum(len(c) for c in chunks),
                received_sha256=_sha256(chunks),
            )

        def Bidi(self, request_iterator, context):
            observed = None
            for index, request in enumerate(request_iterator):
                if observed is None:
                    observed = self._observe("Bidi", request, context)
                yield self._reply(
                    request,
                    context,
                    index=index,
                    received_messages=1,
                    received_bytes=len(request.payload),
                    received_sha256=_sha256([request.payload]),
                )

        def Fail(self, request, context):
            self._observe("Fail", request, context)
            context.abort(status_code(request.fail_code), request.fail_message)

        def FailStream(self, request, context):
            self._observe("FailStream", request, context)
            for index in range(request.replies):
                yield self._reply(request, context, index=index)
            context.abort(status_code(request.fail_code), request.fail_message)

        def Deadline(self, request, context):
            observed = self._observe("Deadline", request, context)
            if request.wait_ms:
                observed.cancelled_while_waiting = observed.ended.wait(request.wait_ms / 1000)
                observed.waited.set()
            return self._reply(request, context)

    return Echo()


def status_code(number: int) -> grpc.StatusCode:
    """The grpc.StatusCode with this number."""
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    raise ValueError(f"no gRPC status code {number}")


class EchoServer:
    """A running grpcio server on 127.0.0.1 with a port the OS chose: HTTP/2 in clear text, or over TLS with
    the certificate and key in `tls`."""

    def __init__(self, pb2: ModuleType, pb2_grpc: ModuleType, name: str, tls: tuple[Path, Path] | None = None):
        self.name = name
        self.calls = Calls()
        self.health = RecordingHealth()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=SERVER_OPTIONS)
        pb2_grpc.add_EchoServicer_to_server(make_servicer(pb2, pb2_grpc, name, self.calls), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if tls is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            cert, key = tls
            credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
            self.port = self.server.add_secure_port("127.0.0.1:0", credentials)
        assert self.port, "grpcio could not bind 127.0.0.1:0"
        self.server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set_serving(self, service: str, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        self.health.set(service, status)

    def stop(self) -> None:
        self.server.stop(grace=None).wait(10)
