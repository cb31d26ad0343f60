"""gRPC health probes (`health_check: {type: grpc}`) against grpcio-health-checking's Health service: the
serving status a server reports takes its backend out of rotation and brings it back, seen on the admin API
and by real gRPC clients over h2 and HTTP/3; `grpc_service` picks the service the probes ask about."""

from __future__ import annotations

import time

import grpc
import pytest

import h2wire
from conftest import CALL_TIMEOUT, backend_entry

SERVICE = "quicproxy.test.Echo"
# Short enough for a quick suite, with room for a debug build on a busy machine to answer a probe in time.
PROBES = {
    "type": "grpc",
    "interval": "300ms",
    "timeout": "300ms",
    "unhealthy_threshold": 2,
    "healthy_threshold": 1,
}


def probed(proxy, *names: str) -> None:
    """Waits until every named backend has been probed and found healthy."""
    for name in names:
        proxy.wait_backend(
            name, lambda b: b["last_check"] is not None and b["state"] == "healthy", "probed and healthy"
        )


def answered_by(stub, pb2, calls: int, label: str) -> list[str]:
    return [stub.Unary(pb2.EchoRequest(text=f"{label}-{n}"), timeout=CALL_TIMEOUT).server for n in range(calls)]


def test_not_serving_takes_a_backend_out_and_serving_brings_it_back(grpc_server, proxy_factory, protos):
    alpha, beta = grpc_server("alpha"), grpc_server("beta")
    proxy = proxy_factory([backend_entry(alpha), backend_entry(beta)], health_check=PROBES)
    probed(proxy, "alpha", "beta")
    stub, pb2 = protos.pb2_grpc.EchoStub(proxy.channel()), protos.pb2
    assert set(answered_by(stub, pb2, 6, "both")) == {"alpha", "beta"}

    alpha.set_serving("", False)
    down = proxy.wait_state("alpha", "unhealthy")
    assert "serving status 2" in down["last_error"], down
    assert proxy.backends()["beta"]["state"] == "healthy"
    assert answered_by(stub, pb2, 10, "failover-h2") == ["beta"] * 10
    results = proxy.h3("unary", "--text", "failover-h3", "--count", "6")
    assert [r["replies"][0]["server"] for r in results] == ["beta"] * 6

    alpha.set_serving("", True)
    proxy.wait_state("alpha", "healthy")
    assert "alpha" in answered_by(stub, pb2, 6, "back-h2")
    # Without grpc_service, the probes ask about the server as a whole.
    assert set(alpha.health.asked()) == {""}


def test_no_serving_backend_answers_503_unavailable(grpc_server, proxy_factory, protos, cert_pair):
    server = grpc_server("only")
    proxy = proxy_factory(
        [backend_entry(server)], health_check=PROBES, load_balancer={"when_all_unhealthy": "fail_closed"}
    )
    probed(proxy, "only")
    stub, pb2 = protos.pb2_grpc.EchoStub(proxy.channel()), protos.pb2

    server.set_serving("", False)
    proxy.wait_state("only", "unhealthy")
    with pytest.raises(grpc.RpcError) as failed:
        stub.Unary(pb2.EchoRequest(text="refused-h2"), timeout=CALL_TIMEOUT)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    wire = h2wire.call(
        proxy.quic_port,
        "/quicproxy.test.Echo/Unary",
        pb2.EchoRequest(text="refused-raw").SerializeToString(),
        tls_ca=cert_pair[0],
    )
    # The proxy answers a gRPC call as gRPC: trailers-only, grpc-status UNAVAILABLE (14) with the HTTP status
    # it stands for in grpc-message, so every client library reads it (and may retry it) the same way.
    assert wire.headers[":status"] == "200", wire
    assert wire.headers["grpc-status"] == "14", wire
    assert wire.headers["grpc-message"].startswith("503 "), wire
    result = proxy.h3_one("unary", "--text", "refused-h3")
    assert result["wire"]["status"] == 200, result
    assert result["code"] == 14 and "503" in result["message"], result
    assert not server.calls.seen("refused-h2") and not server.calls.seen("refused-h3")

    server.set_serving("", True)
    proxy.wait_state("only", "healthy")
    assert stub.Unary(pb2.EchoRequest(text="served-h2"), timeout=CALL_TIMEOUT).server == "only"
    assert proxy.h3_one("unary", "--text", "served-h3")["code"] == 0


def test_grpc_service_selects_the_service_probed(grpc_server, proxy_factory):
    server = grpc_server("svc")
    server.set_serving(SERVICE, True)
    proxy = proxy_factory([backend_entry(server)], health_check={**PROBES, "grpc_service": SERVICE})
    probed(proxy, "svc")
    assert server.health.wait_checks(2) == [SERVICE, SERVICE]

    # The server as a whole going NOT_SERVING is not what these probes ask about: three more probes, each a
    # success, and the backend never leaves rotation.
    server.set_serving("", False)
    start = proxy.backends()["svc"]["consecutive_successes"]
    deadline = time.monotonic() + 15.0
    previous = start
    while previous < start + 3:
        backend = proxy.backends()["svc"]
        assert backend["state"] == "healthy", backend
        assert backend["consecutive_successes"] >= previous, f"a probe failed: {backend}"
        previous = backend["consecutive_successes"]
        assert time.monotonic() < deadline, f"fewer than 3 probes in 15s: {backend}"
        time.sleep(0.05)

    server.set_serving(SERVICE, False)
    down = proxy.wait_state("svc", "unhealthy")
    assert "serving status 2" in down["last_error"], down
    server.set_serving(SERVICE, True)
    proxy.wait_state("svc", "healthy")
    assert set(server.health.asked()) == {SERVICE}


def test_unknown_service_is_unhealthy(grpc_server, proxy_factory):
    """grpcio answers NOT_FOUND for a service it has no status for: the probe fails on the gRPC status."""
    server = grpc_server("nosvc")
    proxy = proxy_factory([backend_entry(server)], health_check={**PROBES, "grpc_service": "no.such.Service"})
    down = proxy.wait_state("nosvc", "unhealthy")
    assert "grpc-status 5" in down["last_error"], down
    assert set(server.health.asked()) == {"no.such.Service"}


def test_probes_reach_a_tls_backend_over_h2(grpc_server, proxy_factory, cert_pair):
    """An https:// backend speaking h2 by ALPN: the probes go through the same TLS transport as requests."""
    server = grpc_server("tls-probed", tls=cert_pair)
    proxy = proxy_factory([backend_entry(server, tls_ca=cert_pair[0])], health_check=PROBES)
    probed(proxy, "tls-probed")
    server.set_serving("", False)
    down = proxy.wait_state("tls-probed", "unhealthy")
    assert "serving status 2" in down["last_error"], down
    server.set_serving("", True)
    proxy.wait_state("tls-probed", "healthy")
    assert proxy.h3_one("unary", "--text", "tls-probed-h3")["replies"][0]["server"] == "tls-probed"
