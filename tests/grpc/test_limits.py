"""Large trailing metadata from a gRPC server, relayed to clients over h2 and HTTP/3: within the proxy's
limits it arrives whole, and past them it must never arrive cut short as if nothing happened."""

from __future__ import annotations

import pytest

from conftest import CALL_TIMEOUT, backend_entry

KIB = 1024
# grpcio refuses response metadata over 16 KiB by default; these tests are about the proxy's limits.
LARGE_METADATA = (("grpc.max_metadata_size", 256 * KIB), ("grpc.absolute_max_metadata_size", 256 * KIB))


@pytest.fixture
def echo(grpc_server, proxy_factory, protos):
    server = grpc_server("echo-limits")
    proxy = proxy_factory([backend_entry(server)])
    return proxy, protos.pb2_grpc.EchoStub(proxy.channel(*LARGE_METADATA)), protos.pb2


def trailer_call(stub, pb2, text: str) -> dict:
    """Unary echoes `text` into the x-echo-trailer trailer, followed by x-echo-trailer-bin."""
    _, call = stub.Unary.with_call(pb2.EchoRequest(text=text), timeout=CALL_TIMEOUT)
    return dict(call.trailing_metadata())


def test_large_trailers_arrive_whole(echo):
    proxy, stub, pb2 = echo
    text = "t" * (12 * KIB)
    trailing = trailer_call(stub, pb2, text)
    assert trailing.get("x-echo-trailer") == f"done {text}"
    assert trailing.get("x-echo-trailer-bin") == b"\x00\xffbinary\r\n"
    result = proxy.h3_one("unary", "--text", text)
    assert result["metadata"]["x-echo-trailer"] == [f"done {text}"]
    assert result["metadata"]["x-echo-trailer-bin"] == [b"\x00\xffbinary\r\n".hex()]


# The h2 crate cuts trailers over its header list limit instead of refusing them; the proxy's HTTP/2 client
# raises that limit to 64 KiB, the bound of HTTP/1.1 response heads, so gRPC metadata well past 16 KiB arrives.
def test_trailers_over_16_kib_are_not_cut_short(echo):
    proxy, stub, pb2 = echo
    text = "t" * (17 * KIB)
    trailing = trailer_call(stub, pb2, text)
    assert trailing.get("x-echo-trailer") == f"done {text}", sorted(trailing)
    assert trailing.get("x-echo-trailer-bin") == b"\x00\xffbinary\r\n"
    result = proxy.h3_one("unary", "--text", text)
    assert result["metadata"].get("x-echo-trailer") == [f"done {text}"], sorted(result["metadata"])
