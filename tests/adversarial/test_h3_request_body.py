"""HTTP/3 request bodies that lie about their length, and request trailers (RFC 9114 4.1.2, 4.1)."""

from __future__ import annotations

import pytest

from h3raw import H3Client, data_frame, headers_frame, request_fields

STREAM_TIMEOUT = 10.0
# How long a backend is given to finish a request the proxy should have aborted, had it not.
LATE_COMPLETION = 1.5


def lying_request(client: H3Client, declared: int, frames: list[int], path: str) -> int:
    """A POST declaring `declared` bytes whose body is DATA frames of the given sizes, then FIN."""
    stream_id = client.new_stream()
    client.send(stream_id, headers_frame(request_fields("POST", path, extra=[("content-length", str(declared))])))
    for index, size in enumerate(frames):
        client.send(stream_id, data_frame(bytes([0x61 + index % 26]) * size), end=index == len(frames) - 1)
    return stream_id


def refusal_problem(client: H3Client, stream_id: int, what: str) -> str | None:
    """RFC 9114 4.1.2: a body that does not match Content-Length is malformed: 400 or a stream error.
    None when the proxy answered so, else what it did instead."""
    stream = client.wait_stream(stream_id, STREAM_TIMEOUT)
    if client.terminated is not None:
        return f"{what}: the proxy closed the whole connection: {client.describe_close()}"
    if stream.status == 400 or stream.reset_code is not None:
        return None
    return f"{what}: expected 400 or a stream reset, got {stream.describe()}"


@pytest.mark.parametrize(
    "declared, frames, tries",
    [
        pytest.param(100_000, [20_000] * 10, 10, id="twice-the-declared-length-streamed"),
        pytest.param(100_000, [20_000] * 5 + [1], 3, id="one-byte-over-streamed"),
        pytest.param(100_000, [20_000] * 2 + [10_000], 3, id="shorter-streamed"),
    ],
)
def test_a_streamed_body_that_mismatches_content_length_never_completes_at_the_backend(
    proxy_with_raw, declared, frames, tries
):
    """Bodies past the small-body pre-read are streamed: the proxy may start forwarding, but must abort the
    upstream request so the backend never holds a body it takes for complete, and must not panic."""
    proxy, backend = proxy_with_raw
    problems = []
    with H3Client.connect(proxy.quic) as client:
        for attempt in range(tries):
            if client.terminated is not None:
                problems.append(f"attempt {attempt} not made: {client.describe_close()}")
                break
            stream_id = lying_request(client, declared, frames, f"/lying/{attempt}")
            problems.append(refusal_problem(client, stream_id, f"attempt {attempt}"))

    assert not proxy.panics(), "the proxy panicked:\n" + "\n".join(proxy.panics())
    assert not any(problems), "\n".join(p for p in problems if p)
    completed = backend.wait_for(lambda seen: any(r.complete for r in seen), LATE_COMPLETION)
    assert not completed, "a backend received a mismatched body as a complete request:\n" + backend.describe()
    state = proxy.wait_backends(lambda s: s["raw"]["in_flight"] == 0, 5)
    assert state["raw"]["in_flight"] == 0, state
    proxy.assert_serving()


@pytest.mark.parametrize(
    "declared, frames",
    [
        pytest.param(1000, [1000, 1000], id="longer"),
        pytest.param(1000, [999, 2], id="one-byte-over"),
        pytest.param(1000, [500], id="shorter"),
        pytest.param(0, [1], id="zero-declared-one-sent"),
    ],
)
def test_a_small_body_that_mismatches_content_length_never_reaches_a_backend(proxy_with_raw, declared, frames):
    """README: bodies up to 64 KiB are checked before anything is forwarded."""
    proxy, backend = proxy_with_raw
    with H3Client.connect(proxy.quic) as client:
        stream_id = lying_request(client, declared, frames, "/small-lie")
        problem = refusal_problem(client, stream_id, "small body")
    assert problem is None, problem
    assert backend.seen() == [], "the request reached a backend:\n" + backend.describe()
    proxy.assert_serving()


def test_a_body_without_content_length_is_forwarded_whole(proxy_with_raw):
    """The control case: no Content-Length, several DATA frames, FIN: the backend gets every byte."""
    proxy, backend = proxy_with_raw
    with H3Client.connect(proxy.quic) as client:
        stream_id = client.new_stream()
        client.send(stream_id, headers_frame(request_fields("POST", "/whole")))
        for index in range(5):
            client.send(stream_id, data_frame(b"z" * 30_000), end=index == 4)
        stream = client.wait_stream(stream_id, STREAM_TIMEOUT)
    assert stream.status == 200, stream.describe()
    (seen,) = backend.seen()
    assert seen.complete and len(seen.body) == 150_000, seen.describe()
    proxy.assert_serving()


@pytest.mark.parametrize(
    "announce",
    [[], [("trailer", "x-checksum, grpc-status")]],
    ids=["unannounced", "announced-in-trailer-field"],
)
def test_request_trailers_over_http3_reach_an_http1_backend(proxy_with_raw, announce):
    """gRPC and similar protocols put their status in trailers: the proxy must forward them in a chunked
    request (RFC 9112 7.1.2), not drop them, whether or not the request announced them in a Trailer field
    (RFC 9110 6.6.2 only says a sender SHOULD)."""
    proxy, backend = proxy_with_raw
    with H3Client.connect(proxy.quic) as client:
        stream = client.request(
            "POST",
            "/trailers",
            headers=[("te", "trailers"), ("content-type", "application/grpc")] + announce,
            body=b"payload-bytes",
            trailers=[(b"x-checksum", b"abc123"), (b"grpc-status", b"0")],
        )
    assert stream.status == 200, stream.describe()
    (seen,) = backend.seen()
    assert seen.complete and bytes(seen.body) == b"payload-bytes", seen.describe()
    assert ("x-checksum", "abc123") in seen.trailers and ("grpc-status", "0") in seen.trailers, (
        f"the backend saw no trailers: {seen.describe()}"
    )
    proxy.assert_serving()


def test_request_trailers_after_a_large_streamed_body_reach_the_backend(proxy_with_raw):
    proxy, backend = proxy_with_raw
    body = b"q" * 200_000
    with H3Client.connect(proxy.quic) as client:
        stream = client.request("POST", "/trailers-large", body=body, trailers=[(b"x-digest", b"sha-256=x")])
    assert stream.status == 200, stream.describe()
    (seen,) = backend.seen()
    assert seen.complete and len(seen.body) == len(body), seen.describe()
    assert ("x-digest", "sha-256=x") in seen.trailers, f"the backend saw no trailers: {seen.describe()}"
    proxy.assert_serving()
