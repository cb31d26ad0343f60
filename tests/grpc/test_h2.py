"""A real gRPC client (grpcio) over HTTPS with HTTP/2 to the proxy, real grpcio servers behind it over h2c (and
over h2 by ALPN on TLS): unary and streaming calls, status codes and messages, trailers, deadlines, large
messages."""

from __future__ import annotations

import hashlib
import queue
import time
from concurrent import futures

import grpc
import pytest

import h2wire
from conftest import CALL_TIMEOUT, backend_entry
from echo_server import pattern

MIB = 1024 * 1024


@pytest.fixture
def echo(grpc_server, proxy_factory, protos):
    """A grpcio server behind the proxy over h2c, and a grpcio stub talking to the proxy over TLS."""
    server = grpc_server("echo-1")
    proxy = proxy_factory([backend_entry(server)])
    return server, proxy, protos.pb2_grpc.EchoStub(proxy.channel()), protos.pb2


def sha256(*chunks: bytes) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def test_unary_call_with_metadata_and_trailers(echo):
    """grpcio's server resets any request without `TE: trailers`, so every call in this suite also shows the
    proxy passes that header on."""
    server, _, stub, pb2 = echo
    payload = pattern(10_000)
    reply, call = stub.Unary.with_call(
        pb2.EchoRequest(text="unary-h2", payload=payload, reply_bytes=3000),
        metadata=(("x-test-id", "unary-h2"), ("x-test-bin", b"\x01\x02\xff")),
        timeout=CALL_TIMEOUT,
    )
    assert call.code() == grpc.StatusCode.OK
    assert reply.text == "unary-h2" and reply.server == "echo-1"
    assert reply.received_bytes == len(payload) and reply.received_sha256 == sha256(payload)
    assert reply.payload == pattern(3000)
    # The server saw the call come through the proxy over HTTP/2, with the client's metadata.
    assert reply.via == "2 quic-proxy"
    seen = server.calls.get("unary-h2")
    assert seen.metadata.get("x-test-id") == "unary-h2"
    assert seen.metadata.get("x-test-bin") == b"\x01\x02\xff"
    # Initial metadata from the response head, trailing metadata (text and binary) from the trailers.
    assert ("x-echo-server", "echo-1") in call.initial_metadata()
    trailing = dict(call.trailing_metadata())
    assert trailing.get("x-echo-trailer") == "done unary-h2"
    assert trailing.get("x-echo-trailer-bin") == b"\x00\xffbinary\r\n"


def test_server_streaming(echo):
    _, _, stub, pb2 = echo
    replies = list(
        stub.ServerStream(pb2.EchoRequest(text="stream-h2", replies=40, reply_bytes=2000), timeout=CALL_TIMEOUT)
    )
    assert [r.index for r in replies] == list(range(40))
    assert all(r.payload == pattern(2000) and r.text == "stream-h2" for r in replies)


def test_client_streaming(echo):
    _, _, stub, pb2 = echo
    chunks = [pattern(8000 + n) for n in range(25)]
    reply = stub.ClientStream(
        iter([pb2.EchoRequest(text="client-stream-h2", payload=c) for c in chunks]), timeout=CALL_TIMEOUT
    )
    assert reply.received_messages == 25
    assert reply.received_bytes == sum(len(c) for c in chunks)
    assert reply.received_sha256 == sha256(*chunks)


def test_bidi_streaming_ping_pong(echo):
    """Each request goes out only after the reply to the previous one arrived: the proxy has to stream both
    directions as they go, buffering neither body whole."""
    _, _, stub, pb2 = echo
    outgoing: queue.Queue = queue.Queue()
    done = object()

    def requests():
        while True:
            item = outgoing.get(timeout=CALL_TIMEOUT)
            if item is done:
                return
            yield item

    outgoing.put(pb2.EchoRequest(text="bidi-h2#0", payload=pattern(100)))
    received = []
    for reply in stub.Bidi(requests(), timeout=CALL_TIMEOUT):
        received.append(reply)
        if len(received) < 10:
            outgoing.put(pb2.EchoRequest(text=f"bidi-h2#{len(received)}", payload=pattern(100 + len(received))))
        else:
            outgoing.put(done)
    assert [r.text for r in received] == [f"bidi-h2#{n}" for n in range(10)]
    assert [r.received_bytes for r in received] == [100 + n for n in range(10)]


MESSAGES = [
    "plain ascii message",
    "naïve café – 100% done ✓ 日本語",
    "percent %25 and %zz and a trailing %",
]
CODES = [
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INTERNAL,
]


@pytest.mark.parametrize("message", MESSAGES)
def test_error_status_and_message_arrive_intact(echo, message):
    """Fail answers trailers-only (status in the response head); FailStream sends replies first, then the
    status in the trailers. Both reach the client with the code and the (percent-decoded) message intact."""
    _, _, stub, pb2 = echo
    for code in CODES:
        with pytest.raises(grpc.RpcError) as failed:
            stub.Fail(
                pb2.EchoRequest(text=f"fail-{code.name}", fail_code=code.value[0], fail_message=message),
                timeout=CALL_TIMEOUT,
            )
        assert failed.value.code() == code
        assert failed.value.details() == message

    stream = stub.FailStream(
        pb2.EchoRequest(
            text="fail-stream-h2", replies=3, fail_code=grpc.StatusCode.ABORTED.value[0], fail_message=message
        ),
        timeout=CALL_TIMEOUT,
    )
    received = []
    with pytest.raises(grpc.RpcError) as failed:
        for reply in stream:
            received.append(reply.index)
    assert received == [0, 1, 2]
    assert failed.value.code() == grpc.StatusCode.ABORTED
    assert failed.value.details() == message


def test_deadline_reaches_the_server(echo):
    server, _, stub, pb2 = echo
    reply = stub.Deadline(pb2.EchoRequest(text="deadline-h2"), timeout=5.0)
    assert 0 < reply.time_remaining < 5.0, reply.time_remaining
    assert 0 < server.calls.get("deadline-h2").time_remaining < 5.0


def test_call_past_its_deadline_ends_deadline_exceeded(echo):
    """The server would wait a minute; the call ends DEADLINE_EXCEEDED soon after its one-second deadline (the
    bound below only tells that from a hang), and the server's call ends then too: it got the deadline."""
    server, _, stub, pb2 = echo
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as failed:
        stub.Deadline(pb2.EchoRequest(text="deadline-exceeded-h2", wait_ms=60_000), timeout=1.0)
    elapsed = time.monotonic() - started
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 10.0, f"the call took {elapsed:.1f}s to fail"
    seen = server.calls.get("deadline-exceeded-h2")
    assert seen.wait_cancelled(), "the server never learnt that the call ended"


def test_large_messages_both_ways(echo):
    _, _, stub, pb2 = echo
    big = pattern(4 * MIB)
    reply = stub.Unary(pb2.EchoRequest(text="large-h2", payload=big, reply_bytes=4 * MIB), timeout=CALL_TIMEOUT)
    assert reply.received_bytes == len(big) and reply.received_sha256 == sha256(big)
    assert len(reply.payload) == 4 * MIB and reply.payload == big

    chunks = [pattern(MIB + n) for n in range(4)]
    summary = stub.ClientStream(
        iter([pb2.EchoRequest(text="large-stream-h2", payload=c) for c in chunks]), timeout=CALL_TIMEOUT
    )
    assert summary.received_sha256 == sha256(*chunks)
    replies = list(
        stub.ServerStream(
            pb2.EchoRequest(text="large-replies-h2", replies=3, reply_bytes=4 * MIB), timeout=CALL_TIMEOUT
        )
    )
    assert [len(r.payload) for r in replies] == [4 * MIB] * 3 and all(r.payload == big for r in replies)


def test_concurrent_calls_share_connections(echo):
    """Many calls at once over one client connection, multiplexed by the proxy onto its h2c connection."""
    _, _, stub, pb2 = echo
    with futures.ThreadPoolExecutor(max_workers=8) as pool:
        calls = [
            pool.submit(stub.Unary, pb2.EchoRequest(text=f"concurrent-{n}", reply_bytes=n), timeout=CALL_TIMEOUT)
            for n in range(40)
        ]
        replies = [c.result(timeout=CALL_TIMEOUT) for c in calls]
    assert sorted(r.text for r in replies) == sorted(f"concurrent-{n}" for n in range(40))
    assert all(len(r.payload) == int(r.text.split("-")[1]) for r in replies)


def test_backend_over_tls_with_h2_by_alpn(grpc_server, proxy_factory, protos, cert_pair):
    """An https:// backend: the proxy verifies the grpcio server's certificate and speaks h2 chosen by ALPN."""
    server = grpc_server("echo-tls", tls=cert_pair)
    proxy = proxy_factory([backend_entry(server, tls_ca=cert_pair[0])])
    stub, pb2 = protos.pb2_grpc.EchoStub(proxy.channel()), protos.pb2
    reply = stub.Unary(pb2.EchoRequest(text="tls-backend", payload=pattern(5000)), timeout=CALL_TIMEOUT)
    assert reply.server == "echo-tls" and reply.received_sha256 == sha256(pattern(5000))
    replies = list(stub.ServerStream(pb2.EchoRequest(text="tls-stream", replies=5), timeout=CALL_TIMEOUT))
    assert [r.index for r in replies] == list(range(5))
    with pytest.raises(grpc.RpcError) as failed:
        stub.Fail(pb2.EchoRequest(text="tls-fail", fail_code=5, fail_message="gone ✗"), timeout=CALL_TIMEOUT)
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND and failed.value.details() == "gone ✗"


def test_trailers_only_and_trailers_are_relayed_as_the_server_sent_them(echo, cert_pair):
    """Frame by frame: the proxy's HTTP/2 answer has the server's shape (a trailers-only answer stays one
    HEADERS frame that ends the stream; a normal one ends with trailers) and grpc-message's exact bytes."""
    server, proxy, _, pb2 = echo
    message = "naïve café – 100% done ✓"
    failing = pb2.EchoRequest(text="wire-fail", fail_code=9, fail_message=message).SerializeToString()
    direct = h2wire.call(server.port, "/quicproxy.test.Echo/Fail", failing)
    assert direct.head_ended_stream, f"the server did not answer trailers-only: {direct}"
    proxied = h2wire.call(proxy.quic_port, "/quicproxy.test.Echo/Fail", failing, tls_ca=cert_pair[0])
    assert proxied.head_ended_stream, f"trailers-only answer reshaped by the proxy: {proxied}"
    assert proxied.data == b"" and proxied.trailers is None
    assert proxied.headers.get("grpc-status") == "9"
    assert proxied.headers.get("grpc-message") == direct.headers.get("grpc-message")
    assert proxied.headers.get("content-type") == "application/grpc"

    ok = pb2.EchoRequest(text="wire-ok").SerializeToString()
    proxied = h2wire.call(proxy.quic_port, "/quicproxy.test.Echo/Unary", ok, tls_ca=cert_pair[0])
    assert not proxied.head_ended_stream and "grpc-status" not in proxied.headers
    assert proxied.trailers is not None and proxied.trailers.get("grpc-status") == "0", proxied
    assert proxied.trailers.get("x-echo-trailer") == "done wire-ok"
    reply = pb2.EchoReply.FromString(proxied.data[5:])
    assert reply.text == "wire-ok" and reply.via == "2 quic-proxy"


def test_cancelled_call_is_cancelled_on_the_server(echo):
    """A client that gives up on a streaming call mid-way: the proxy passes the cancellation on, and the
    server's handler learns of it at once instead of running to its end."""
    server, _, stub, pb2 = echo
    call = stub.ServerStream(pb2.EchoRequest(text="cancel-h2", replies=2, wait_ms=60_000), timeout=CALL_TIMEOUT)
    assert [next(call).index, next(call).index] == [0, 1]
    call.cancel()
    assert server.calls.get("cancel-h2").wait_cancelled(), "the server never learnt that the call was cancelled"
