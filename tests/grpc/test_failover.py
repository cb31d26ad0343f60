"""A backend that refuses connections, next to a healthy one, with no health checks to take it out first: the
README promises further attempts on other backends after a connect error, for every method. gRPC request
bodies never declare their length (grpcio, tonic and grpc-go send no Content-Length), so the proxy cannot keep
a copy of them for a retry: the transport hands back a request it never sent (no connection could be had), and
that goes to the next backend."""

from __future__ import annotations

import socket

import pytest

from conftest import CALL_TIMEOUT, backend_entry

@pytest.fixture
def refusing_backend():
    """A backend entry whose port refuses connections: bound once by the OS, then closed."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    return {"name": "refusing", "url": f"http://127.0.0.1:{port}", "protocol": "h2c"}


@pytest.fixture
def half_dead(grpc_server, proxy_factory, refusing_backend):
    server = grpc_server("alive")
    return server, proxy_factory([refusing_backend, backend_entry(server)], load_balancer={"retries": 2})


def test_h2_calls_fail_over_from_a_refusing_backend(half_dead, protos):
    _, proxy = half_dead
    stub, pb2 = protos.pb2_grpc.EchoStub(proxy.channel()), protos.pb2
    servers = [stub.Unary(pb2.EchoRequest(text=f"failover-h2-{n}"), timeout=CALL_TIMEOUT).server for n in range(4)]
    assert servers == ["alive"] * 4


def test_h3_calls_fail_over_from_a_refusing_backend(half_dead):
    _, proxy = half_dead
    results = proxy.h3("unary", "--text", "failover-h3", "--count", "4")
    assert [(r["code"], r["wire"]["status"]) for r in results] == [(0, 200)] * 4, results
