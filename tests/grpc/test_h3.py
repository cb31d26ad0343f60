"""A real gRPC client over HTTP/3 to the proxy (tonic's client over h3 + quinn: examples/grpc_h3_client.rs),
real grpcio servers behind it over h2c: unary and streaming calls, status codes and messages (trailers-only
answers included), trailers, deadlines (grpc-timeout), large messages."""

from __future__ import annotations

import hashlib

import grpc
import pytest

from conftest import backend_entry
from echo_server import pattern

MIB = 1024 * 1024
OK = grpc.StatusCode.OK.value[0]


@pytest.fixture
def echo(grpc_server, proxy_factory):
    server = grpc_server("echo-h3")
    return server, proxy_factory([backend_entry(server)])


def sha256(*chunks: bytes) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def test_unary_call_with_metadata_and_trailers(echo):
    """grpcio's server resets any request without `TE: trailers`: the proxy passes tonic's on from HTTP/3."""
    server, proxy = echo
    result = proxy.h3_one(
        "unary",
        "--text",
        "unary-h3",
        "--payload-bytes",
        "10000",
        "--reply-bytes",
        "3000",
        "--metadata",
        "x-test-id=unary-h3",
    )
    assert result["code"] == OK, result
    [reply] = result["replies"]
    assert reply["text"] == "unary-h3" and reply["server"] == "echo-h3"
    assert reply["received_bytes"] == 10000 and reply["received_sha256"] == sha256(pattern(10000))
    assert reply["payload_bytes"] == 3000 and reply["payload_intact"]
    # The server saw the call come through the proxy over HTTP/3, with the client's metadata.
    assert reply["via"] == "3 quic-proxy"
    assert server.calls.get("unary-h3").metadata.get("x-test-id") == "unary-h3"
    # Initial metadata in the head, trailing metadata (text and binary) in HTTP/3 trailers.
    assert result["metadata"]["x-echo-server"] == ["echo-h3"]
    assert result["metadata"]["x-echo-trailer"] == ["done unary-h3"]
    assert result["metadata"]["x-echo-trailer-bin"] == [b"\x00\xffbinary\r\n".hex()]
    wire = result["wire"]
    assert wire["status"] == 200 and "grpc-status" not in wire["headers"]
    assert wire["trailers"]["grpc-status"] == ["0"]


def test_server_streaming(echo):
    _, proxy = echo
    result = proxy.h3_one("server-stream", "--text", "stream-h3", "--replies", "40", "--reply-bytes", "2000")
    assert result["code"] == OK, result
    assert [r["index"] for r in result["replies"]] == list(range(40))
    assert all(r["payload_bytes"] == 2000 and r["payload_intact"] for r in result["replies"])


def test_client_streaming(echo):
    _, proxy = echo
    result = proxy.h3_one("client-stream", "--text", "client-stream-h3", "--messages", "25", "--payload-bytes", "8000")
    assert result["code"] == OK, result
    [reply] = result["replies"]
    assert reply["received_messages"] == 25 and reply["received_bytes"] == 25 * 8000
    assert reply["received_sha256"] == sha256(*[pattern(8000)] * 25)


def test_bidi_streaming_ping_pong(echo):
    """The client sends request i only after reply i-1 came back through the proxy."""
    _, proxy = echo
    result = proxy.h3_one("bidi", "--text", "bidi-h3", "--messages", "10", "--payload-bytes", "100")
    assert result["code"] == OK, result
    assert [r["text"] for r in result["replies"]] == [f"bidi-h3#{n}" for n in range(10)]
    assert [r["index"] for r in result["replies"]] == list(range(10))


MESSAGES = [
    "plain ascii message",
    "naïve café – 100% done ✓ 日本語",
    "percent %25 and %zz and a trailing %",
]


@pytest.mark.parametrize("message", MESSAGES)
def test_trailers_only_error_status_and_message(echo, message):
    """A server that fails at once answers trailers-only: over HTTP/3 the status stays in the response's
    only HEADERS frame, and the code and the percent-decoded message reach tonic intact."""
    _, proxy = echo
    for code in (3, 5, 7, 8, 13):
        result = proxy.h3_one("fail", "--text", f"fail-h3-{code}", "--code", str(code), "--message", message)
        assert result["code"] == code and result["message"] == message, result
        wire = result["wire"]
        assert wire["status"] == 200 and wire["headers"]["grpc-status"] == [str(code)], wire
        assert wire["trailers"] is None and wire["body_bytes"] == 0, wire


@pytest.mark.parametrize("message", MESSAGES)
def test_error_after_replies_arrives_in_trailers(echo, message):
    _, proxy = echo
    result = proxy.h3_one(
        "fail-stream", "--text", "fail-stream-h3", "--replies", "3", "--code", "10", "--message", message
    )
    assert [r["index"] for r in result["replies"]] == [0, 1, 2]
    assert result["code"] == 10 and result["message"] == message, result
    wire = result["wire"]
    assert "grpc-status" not in wire["headers"] and wire["trailers"]["grpc-status"] == ["10"], wire


def test_deadline_reaches_the_server(echo):
    """tonic sends the deadline as grpc-timeout; the server sees it, minus the time in transit."""
    server, proxy = echo
    result = proxy.h3_one("deadline", "--text", "deadline-h3", "--timeout-ms", "5000")
    assert result["code"] == OK, result
    assert 0 < result["replies"][0]["time_remaining"] < 5.0, result
    assert 0 < server.calls.get("deadline-h3").time_remaining < 5.0


def test_call_past_its_deadline_ends_deadline_exceeded(echo):
    """Nothing on the client enforces the deadline here (tonic's Grpc leaves that to its channel): the
    DEADLINE_EXCEEDED the client gets is the server's own, so the deadline really travelled through the proxy.
    The server would wait a minute; the bound below only tells the deadline's end from a hang."""
    server, proxy = echo
    result = proxy.h3_one(
        "deadline",
        "--text",
        "deadline-exceeded-h3",
        "--timeout-ms",
        "1000",
        "--wait-ms",
        "60000",
        "--limit-ms",
        "20000",
    )
    assert result["code"] == grpc.StatusCode.DEADLINE_EXCEEDED.value[0], result
    assert result["elapsed_ms"] < 10_000, result
    seen = server.calls.get("deadline-exceeded-h3")
    assert seen.wait_cancelled(), "the server never ended the call"


def test_large_messages_both_ways(echo):
    _, proxy = echo
    big = 4 * MIB
    result = proxy.h3_one("unary", "--text", "large-h3", "--payload-bytes", str(big), "--reply-bytes", str(big))
    assert result["code"] == OK, result
    [reply] = result["replies"]
    assert reply["received_bytes"] == big and reply["received_sha256"] == sha256(pattern(big))
    assert reply["payload_bytes"] == big and reply["payload_intact"]

    result = proxy.h3_one("client-stream", "--text", "large-stream-h3", "--messages", "4", "--payload-bytes", str(MIB))
    assert result["code"] == OK and result["replies"][0]["received_sha256"] == sha256(*[pattern(MIB)] * 4), result
    result = proxy.h3_one("server-stream", "--text", "large-replies-h3", "--replies", "3", "--reply-bytes", str(big))
    assert result["code"] == OK, result
    assert [r["payload_bytes"] for r in result["replies"]] == [big] * 3
    assert all(r["payload_intact"] for r in result["replies"])


def test_calls_in_turn_on_one_connection(echo):
    server, proxy = echo
    results = proxy.h3("unary", "--text", "repeat-h3", "--count", "20", "--reply-bytes", "500")
    assert [r["code"] for r in results] == [OK] * 20
    assert [r["replies"][0]["text"] for r in results] == [f"repeat-h3-{n}" for n in range(20)]
    assert all(server.calls.seen(f"repeat-h3-{n}") for n in range(20))


def test_cancelled_call_is_cancelled_on_the_server(echo):
    """The client stops a streaming call's stream after two replies (H3_REQUEST_CANCELLED) and keeps its
    connection open: the server's handler learns of the cancellation through the proxy."""
    server, proxy = echo
    with proxy.h3_held(
        "server-stream", "--text", "cancel-h3", "--replies", "2", "--wait-ms", "60000", "--cancel-after-replies", "2"
    ) as result:
        assert result["cancelled"] and [r["index"] for r in result["replies"]] == [0, 1], result
        assert server.calls.get("cancel-h3").wait_cancelled(), "the server never learnt that the call was cancelled"
