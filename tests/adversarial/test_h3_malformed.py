"""Malformed HTTP/3 per RFC 9114 4.1-4.4, 6.2, 7.2 and RFC 9204: what a lenient proxy would pass on.

Field sections are QPACK-encoded by hand, so names, values, pseudo-header fields and their order are exactly
what each case says. Malformed requests (4.1.2, 4.2, 4.3) must be answered 400 or reset with H3_MESSAGE_ERROR
and never reach a backend; frame sequences the protocol forbids are connection errors with the code the RFC
names. After every case the proxy must still serve a normal request and must not have panicked.
"""

from __future__ import annotations

import pytest

from h3raw import (
    CANCEL_PUSH,
    CONTROL_STREAM,
    DATA,
    GOAWAY,
    H3_CLOSED_CRITICAL_STREAM,
    H3_FRAME_ERROR,
    H3_FRAME_UNEXPECTED,
    H3_MESSAGE_ERROR,
    H3_MISSING_SETTINGS,
    H3_REQUEST_INCOMPLETE,
    H3_SETTINGS_ERROR,
    H3_STREAM_CREATION_ERROR,
    HEADERS,
    MAX_PUSH_ID,
    PUSH_PROMISE,
    PUSH_STREAM,
    QPACK_DECOMPRESSION_FAILED,
    SETTINGS,
    H3Client,
    data_frame,
    encode_fields,
    frame,
    headers_frame,
    literal_field_line,
    settings_payload,
    varint,
)

STREAM_TIMEOUT = 10.0
# A connection error is sent as soon as the offending frame is read; this only bounds waiting for one.
CLOSE_TIMEOUT = 5.0


def base(path: str = "/malformed", method: str = "GET") -> list[tuple[str, str]]:
    return [(":method", method), (":scheme", "https"), (":authority", "localhost"), (":path", path)]


def without(fields: list[tuple[str, str]], name: str) -> list[tuple[str, str]]:
    return [(n, v) for n, v in fields if n != name]


def replaced(fields: list[tuple[str, str]], name: str, value: str) -> list[tuple[str, str]]:
    return [(n, value if n == name else v) for n, v in fields]


MALFORMED_FIELD_SECTIONS = {
    # RFC 9114 4.3: pseudo-header fields defined for responses must not appear in requests.
    "status-in-request": base() + [(":status", "200")],
    # RFC 9114 4.3.1 / RFC 9110 7.1: the asterisk form is for OPTIONS only.
    "asterisk-path-with-get": replaced(base(), ":path", "*"),
    "uppercase-field-name": base() + [("X-Upper", "1")],
    "missing-method": without(base(), ":method"),
    "missing-scheme": without(base(), ":scheme"),
    "missing-path": without(base(), ":path"),
    "empty-path": replaced(base(), ":path", ""),
    "path-not-origin-form": replaced(base(), ":path", "malformed"),
    "no-authority-and-no-host": without(base(), ":authority"),
    "authority-and-host-disagree": base() + [("host", "other.example")],
    "authority-with-userinfo": replaced(base(), ":authority", "user:pass@localhost"),
    "unknown-pseudo-header": base() + [(":smuggled", "1")],
    "pseudo-header-after-regular-field": [(":method", "GET"), ("x-first", "1"), (":scheme", "https"),
                                          (":authority", "localhost"), (":path", "/malformed")],
    "repeated-path": base() + [(":path", "/other")],
    "repeated-method": base() + [(":method", "POST")],
    # RFC 9114 4.2: connection-specific fields.
    "connection": base() + [("connection", "keep-alive")],
    "transfer-encoding": base() + [("transfer-encoding", "chunked")],
    "keep-alive": base() + [("keep-alive", "timeout=5")],
    "proxy-connection": base() + [("proxy-connection", "keep-alive")],
    "upgrade": base() + [("upgrade", "websocket")],
    "te-not-trailers": base() + [("te", "gzip")],
    # RFC 9114 4.2 / RFC 9110 5.5: CR, LF and NUL are never valid in a field value; names are tokens.
    "crlf-in-value": base() + [("x-inject", "a\r\nx-smuggled: 1")],
    "lf-in-value": base() + [("x-inject", "a\nx-smuggled: 1")],
    "nul-in-value": base() + [("x-nul", "a\x00b")],
    "space-in-name": base() + [("bad name", "1")],
    "colon-in-name": base() + [("x:colon", "1")],
    "invalid-content-length": base("/malformed", "POST") + [("content-length", "12a")],
    "conflicting-content-lengths": base("/malformed", "POST") + [("content-length", "1"), ("content-length", "2")],
    # RFC 9114 4.4: CONNECT carries :authority and neither :scheme nor :path.
    "connect-without-authority": [(":method", "CONNECT")],
    "connect-with-scheme-and-path": base(method="CONNECT"),
}


# Sections pylsqpack cannot express (it refuses empty names), given as raw QPACK field sections.
RAW_MALFORMED_SECTIONS = {
    "empty-name": encode_fields(base()) + literal_field_line(b"", b"1"),
    "name-with-high-bytes": encode_fields(base()) + literal_field_line(b"x-\xff", b"1"),
}


def refused_as_malformed(client: H3Client, stream_id: int, also: frozenset[int] = frozenset()) -> str | None:
    """None when the proxy refused the request as RFC 9114 4.1.2 says (400, or a stream error
    H3_MESSAGE_ERROR) or with one of the statuses in `also`; else what it did instead."""
    stream = client.wait_stream(stream_id, STREAM_TIMEOUT)
    if client.terminated is not None:
        return f"the proxy closed the whole connection: {client.describe_close()}"
    if stream.status == 400 or stream.status in also or stream.reset_code == H3_MESSAGE_ERROR:
        return None
    return f"expected 400 or a stream reset with H3_MESSAGE_ERROR, got {stream.describe()}"


@pytest.mark.parametrize("fields", list(MALFORMED_FIELD_SECTIONS.values()), ids=list(MALFORMED_FIELD_SECTIONS))
def test_a_malformed_request_is_refused_and_never_forwarded(proxy_with_raw, fields):
    proxy, backend = proxy_with_raw
    with H3Client.connect(proxy.quic) as client:
        stream_id = client.new_stream()
        client.send(stream_id, headers_frame(fields), end=True)
        # A proxy that refuses every CONNECT with 405 refuses malformed ones too; that is no forwarding.
        is_connect = (":method", "CONNECT") in fields
        problem = refused_as_malformed(client, stream_id, frozenset({405}) if is_connect else frozenset())
    assert backend.wait_for(lambda seen: seen, 0.3) is False, "forwarded:\n" + backend.describe()
    assert problem is None, problem
    proxy.assert_serving()


@pytest.mark.parametrize("section", list(RAW_MALFORMED_SECTIONS.values()), ids=list(RAW_MALFORMED_SECTIONS))
def test_a_malformed_raw_field_section_is_refused_and_never_forwarded(proxy_with_raw, section):
    proxy, backend = proxy_with_raw
    with H3Client.connect(proxy.quic) as client:
        stream_id = client.new_stream()
        client.send(stream_id, frame(HEADERS, section), end=True)
        problem = refused_as_malformed(client, stream_id)
    assert backend.wait_for(lambda seen: seen, 0.3) is False, "forwarded:\n" + backend.describe()
    assert problem is None, problem
    proxy.assert_serving()


def test_options_with_asterisk_path_is_not_malformed(proxy_with_raw):
    """The control case for asterisk-path-with-get: OPTIONS * is a valid request (RFC 9110 9.3.7)."""
    proxy, backend = proxy_with_raw
    with H3Client.connect(proxy.quic) as client:
        stream_id = client.new_stream()
        client.send(stream_id, headers_frame(replaced(base(method="OPTIONS"), ":path", "*")), end=True)
        stream = client.wait_stream(stream_id, STREAM_TIMEOUT)
    assert client.terminated is None, client.describe_close()
    assert stream.status is not None and stream.status != 400 and stream.ended, stream.describe()
    proxy.assert_serving()


TRAILERS = headers_frame([("x-trailer", "1")])
HEAD = headers_frame(base("/frames", "POST"))

# RFC 9114 4.1 (frame order), 7.1 (framing), 7.2.x (frames not allowed on request streams), RFC 9204 (QPACK).
CONNECTION_ERRORS_ON_REQUEST_STREAMS = {
    "data-before-headers": (data_frame(b"early") + HEAD, {H3_FRAME_UNEXPECTED}),
    "settings-on-request-stream": (frame(SETTINGS, b"") + HEAD, {H3_FRAME_UNEXPECTED}),
    "goaway-on-request-stream": (frame(GOAWAY, varint(0)) + HEAD, {H3_FRAME_UNEXPECTED}),
    "max-push-id-on-request-stream": (frame(MAX_PUSH_ID, varint(4)) + HEAD, {H3_FRAME_UNEXPECTED}),
    "cancel-push-on-request-stream": (frame(CANCEL_PUSH, varint(0)) + HEAD, {H3_FRAME_UNEXPECTED}),
    "push-promise-from-a-client": (HEAD + frame(PUSH_PROMISE, varint(0) + encode_fields(base())), {H3_FRAME_UNEXPECTED}),
    "http2-priority-frame": (frame(0x2, b"\x00" * 5) + HEAD, {H3_FRAME_UNEXPECTED}),
    "http2-ping-frame": (frame(0x6, b"\x00" * 8) + HEAD, {H3_FRAME_UNEXPECTED}),
    "http2-window-update-frame": (frame(0x8, b"\x00" * 4) + HEAD, {H3_FRAME_UNEXPECTED}),
    "http2-continuation-frame": (HEAD + frame(0x9, b"\x00"), {H3_FRAME_UNEXPECTED}),
    "headers-after-trailers": (HEAD + data_frame(b"body") + TRAILERS + TRAILERS, {H3_FRAME_UNEXPECTED}),
    "data-after-trailers": (HEAD + data_frame(b"body") + TRAILERS + data_frame(b"late"), {H3_FRAME_UNEXPECTED}),
    # A dynamic-table reference when the proxy allowed no dynamic table.
    "qpack-dynamic-reference": (frame(HEADERS, b"\x02\x00\x80"), {QPACK_DECOMPRESSION_FAILED}),
    "qpack-garbage": (frame(HEADERS, b"\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff"), {QPACK_DECOMPRESSION_FAILED}),
}


@pytest.mark.parametrize(
    "payload, codes",
    list(CONNECTION_ERRORS_ON_REQUEST_STREAMS.values()),
    ids=list(CONNECTION_ERRORS_ON_REQUEST_STREAMS),
)
def test_a_forbidden_frame_sequence_on_a_request_stream_is_a_connection_error(proxy_with_raw, payload, codes):
    proxy, backend = proxy_with_raw
    with H3Client.connect(proxy.quic) as client:
        stream_id = client.new_stream()
        client.send(stream_id, payload, end=True)
        client.wait(lambda: client.terminated is not None, CLOSE_TIMEOUT)
        stream = client.streams[stream_id]
        outcome = f"{client.describe_close()}; {stream.describe()}"
    assert client.terminated is not None, f"the connection stayed open: {outcome}"
    assert client.terminated.error_code in codes, f"expected {[hex(c) for c in codes]}: {outcome}"
    assert not any(r.complete for r in backend.seen()), "forwarded:\n" + backend.describe()
    proxy.assert_serving()


def test_a_frame_truncated_by_the_end_of_its_stream_is_refused(proxy_with_raw):
    """RFC 9114 7.1: a truncated last frame is H3_FRAME_ERROR; a server may also reset the incomplete request
    with H3_REQUEST_INCOMPLETE (4.1)."""
    proxy, backend = proxy_with_raw
    section = encode_fields(base())
    with H3Client.connect(proxy.quic) as client:
        stream_id = client.new_stream()
        client.send(stream_id, varint(HEADERS) + varint(len(section) + 100) + section, end=True)
        client.wait(lambda: client.terminated is not None or client.streams[stream_id].finished, STREAM_TIMEOUT)
        stream = client.streams[stream_id]
        outcome = f"{client.describe_close()}; {stream.describe()}"
    closed = client.terminated is not None and client.terminated.error_code == H3_FRAME_ERROR
    assert closed or stream.reset_code in (H3_REQUEST_INCOMPLETE, H3_MESSAGE_ERROR), outcome
    assert backend.seen() == [], backend.describe()
    proxy.assert_serving()


def test_reserved_and_unknown_frame_types_on_a_request_stream_are_ignored(proxy_with_raw):
    """RFC 9114 7.2.8, 9: frames of unknown types, grease included, are ignored wherever they appear."""
    proxy, backend = proxy_with_raw
    grease = frame(0x21 + 0x1F * 7, b"grease") + frame(0x2F, b"") + frame(0x1234, b"unknown")
    with H3Client.connect(proxy.quic) as client:
        stream_id = client.new_stream()
        payload = grease + HEAD + grease + data_frame(b"first") + grease + data_frame(b"second") + grease
        client.send(stream_id, payload, end=True)
        stream = client.wait_stream(stream_id, STREAM_TIMEOUT)
    assert client.terminated is None, client.describe_close()
    assert stream.status == 200, stream.describe()
    (seen,) = backend.seen()
    assert seen.complete and bytes(seen.body) == b"firstsecond", seen.describe()
    proxy.assert_serving()


def control_stream_case(proxy, send) -> H3Client:
    client = H3Client.connect(proxy.quic, send_settings=False)
    send(client)
    client.wait(lambda: client.terminated is not None, CLOSE_TIMEOUT)
    return client


SETTINGS_FRAME = frame(SETTINGS, settings_payload({0x1: 0, 0x7: 0}))

# RFC 9114 6.2.1, 6.2.2, 7.2.4, 7.2.4.1.
CONTROL_STREAM_ERRORS = {
    "first-frame-not-settings": (lambda c: c.open_uni(CONTROL_STREAM, frame(GOAWAY, varint(0))), H3_MISSING_SETTINGS),
    "second-settings-frame": (lambda c: c.open_uni(CONTROL_STREAM, SETTINGS_FRAME + SETTINGS_FRAME), H3_FRAME_UNEXPECTED),
    "data-on-control-stream": (lambda c: c.open_uni(CONTROL_STREAM, SETTINGS_FRAME + data_frame(b"x")), H3_FRAME_UNEXPECTED),
    "headers-on-control-stream": (
        lambda c: c.open_uni(CONTROL_STREAM, SETTINGS_FRAME + headers_frame(base())),
        H3_FRAME_UNEXPECTED,
    ),
    "second-control-stream": (
        lambda c: (c.open_uni(CONTROL_STREAM, SETTINGS_FRAME), c.open_uni(CONTROL_STREAM, SETTINGS_FRAME)),
        H3_STREAM_CREATION_ERROR,
    ),
    "control-stream-closed": (lambda c: c.open_uni(CONTROL_STREAM, SETTINGS_FRAME, end=True), H3_CLOSED_CRITICAL_STREAM),
    "push-stream-from-a-client": (
        lambda c: (c.open_uni(CONTROL_STREAM, SETTINGS_FRAME), c.open_uni(PUSH_STREAM, varint(0))),
        H3_STREAM_CREATION_ERROR,
    ),
    "http2-setting-identifier": (
        lambda c: c.open_uni(CONTROL_STREAM, frame(SETTINGS, settings_payload({0x2: 1}))),
        H3_SETTINGS_ERROR,
    ),
}


@pytest.mark.parametrize("send, code", list(CONTROL_STREAM_ERRORS.values()), ids=list(CONTROL_STREAM_ERRORS))
def test_a_broken_control_stream_is_a_connection_error(proxy_with_raw, send, code):
    proxy, _ = proxy_with_raw
    client = control_stream_case(proxy, send)
    try:
        assert client.terminated is not None, "the connection stayed open"
        assert client.terminated.error_code == code, f"expected {hex(code)}: {client.describe_close()}"
    finally:
        client.close()
    proxy.assert_serving()


def test_an_oversized_field_section_gets_431(raw_backend, proxy_factory):
    backend = raw_backend("raw")
    proxy = proxy_factory([backend], {"quic": {"max_header_bytes": "16KiB"}})
    with H3Client.connect(proxy.quic) as client:
        stream_id = client.new_stream()
        client.send(stream_id, headers_frame(base() + [("x-big", "b" * 20_000)]), end=True)
        stream = client.wait_stream(stream_id, STREAM_TIMEOUT)
    assert client.terminated is None, client.describe_close()
    assert stream.status == 431, stream.describe()
    assert backend.seen() == [], backend.describe()
    proxy.assert_serving()


def test_many_small_fields_within_the_size_limit_do_not_hurt_the_proxy(proxy_with_raw):
    """2,000 tiny fields: either refused (431) or forwarded intact; nothing in between."""
    proxy, backend = proxy_with_raw
    fields = base() + [(f"x-f{index}", "v") for index in range(2000)]
    with H3Client.connect(proxy.quic) as client:
        stream_id = client.new_stream()
        client.send(stream_id, headers_frame(fields), end=True)
        stream = client.wait_stream(stream_id, STREAM_TIMEOUT)
    assert client.terminated is None, client.describe_close()
    assert stream.status in (200, 431), stream.describe()
    if stream.status == 200:
        (seen,) = backend.seen()
        assert sum(1 for name, _ in seen.headers if name.startswith("x-f")) == 2000
    else:
        assert backend.seen() == [], backend.describe()
    proxy.assert_serving()
