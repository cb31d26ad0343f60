"""An HTTP/1.1 desync corpus in the style of http-desync-guardian: request framings that parsers disagree on.

Every case is sent on one connection followed by two more requests (`/pipelined`, then `/last` with
`Connection: close`). Whatever the proxy decides, the backend must see exactly what the proxy answered:
each request that reaches the backend complete is one the client got the backend's response for, and each
forwarded head is clean (one framing header, no bare CR, no NUL, no obs-fold, one Host). Cases marked
`reject` are ambiguous by the RFCs' own rules and must be refused (400, or 501 for a transfer coding the
proxy does not know) with the connection closed and nothing forwarded.
"""

from __future__ import annotations

import json
import re

import pytest

import h1raw
from harness import proxy_config, start_proxy
from rawbackend import RawBackend

READ_TIMEOUT = 4.0
REJECT = {400}
REJECT_CODING = {400, 501}

CHUNKED_HELLO = "5\r\nhello\r\n0\r\n\r\n"

# (request template, expectation): `{p}` is the case's path prefix; `reject` sets are the statuses allowed.
CORPUS: dict[str, tuple[str, set[int] | None]] = {
    # Content-Length and Transfer-Encoding together (RFC 9112 6.1: a proxy must not forward both).
    "cl-te": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED_HELLO, REJECT),
    "te-cl": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n" + CHUNKED_HELLO, REJECT),
    "te-mixed-case-cl": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\ntRaNsFeR-eNcOdInG: Chunked\r\nContent-Length: 4\r\n\r\n" + CHUNKED_HELLO, REJECT),
    "cl-te-xchunked": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer-Encoding: xchunked\r\n\r\nhello", REJECT),
    # Transfer-Encoding values where chunked is not simply the final coding.
    "te-chunked-identity": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked, identity\r\n\r\n" + CHUNKED_HELLO, REJECT_CODING),
    "te-identity-chunked": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: identity, chunked\r\n\r\n" + CHUNKED_HELLO, REJECT_CODING),
    "te-xchunked": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: xchunked\r\n\r\n" + CHUNKED_HELLO, REJECT_CODING),
    "te-chunked-twice": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED_HELLO, REJECT_CODING),
    "te-chunked-list-twice": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked, chunked\r\n\r\n" + CHUNKED_HELLO, REJECT_CODING),
    "te-quoted": ('POST {p}/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: "chunked"\r\n\r\n' + CHUNKED_HELLO, REJECT_CODING),
    "te-vertical-tab": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding:\x0bchunked\r\n\r\n" + CHUNKED_HELLO, REJECT_CODING),
    "te-space-before-colon": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding : chunked\r\n\r\n" + CHUNKED_HELLO, REJECT),
    "te-in-http10": ("POST {p}/a HTTP/1.0\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED_HELLO, REJECT),
    # Legal spellings of chunked: forwarded or refused, but framed the same on both sides.
    "te-tab-before-value": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding:\tchunked\r\n\r\n" + CHUNKED_HELLO, None),
    "te-trailing-space": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked \r\n\r\n" + CHUNKED_HELLO, None),
    "te-upper-case-value": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: CHUNKED\r\n\r\n" + CHUNKED_HELLO, None),
    "te-obs-fold": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding:\r\n chunked\r\n\r\n" + CHUNKED_HELLO, None),
    "te-header-obs-fold-after": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n x: y\r\n\r\n" + CHUNKED_HELLO, None),
    # Content-Length spellings.
    "cl-conflicting-headers": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nhello", REJECT),
    "cl-conflicting-list": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5, 4\r\n\r\nhello", REJECT),
    "cl-plus": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: +5\r\n\r\nhello", REJECT),
    "cl-minus": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: -5\r\n\r\nhello", REJECT),
    "cl-hex": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0x5\r\n\r\nhello", REJECT),
    "cl-decimal-point": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5.0\r\n\r\nhello", REJECT),
    "cl-inner-space": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5 5\r\n\r\nhello", REJECT),
    "cl-underscore": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1_0\r\n\r\nhello", REJECT),
    "cl-empty": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nContent-Length:\r\n\r\nhello", REJECT),
    "cl-u64-max": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 18446744073709551615\r\n\r\nhello", REJECT),
    "cl-u64-overflow": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 18446744073709551621\r\n\r\nhello", REJECT),
    "cl-space-before-colon": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nContent-Length : 5\r\n\r\nhello", REJECT),
    "cl-leading-zeros": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0005\r\n\r\nhello", None),
    "cl-surrounding-whitespace": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: \t5 \r\n\r\nhello", None),
    "cl-same-twice": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", None),
    "cl-same-list": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5, 5\r\n\r\nhello", None),
    "cl-obs-fold": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nContent-Length:\r\n 5\r\n\r\nhello", None),
    "get-with-body": ("GET {p}/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello", None),
    # Chunked bodies that lie or overflow.
    "chunk-size-overflow": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n", None),
    "chunk-size-negative": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n", None),
    "chunk-size-hex-prefix": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", None),
    "chunk-size-trailing-space": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n", None),
    "chunk-data-longer-than-size": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n", None),
    "chunk-lf-only": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n", None),
    "chunk-bare-cr": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\rhello\r\n0\r\n\r\n", None),
    "chunk-extension-huge": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5;" + "e" * 100_000 + "\r\nhello\r\n0\r\n\r\n", None),
    "chunk-extension-bare-cr": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\rb\r\nhello\r\n0\r\n\r\n", None),
    "chunk-extension-quoted-crlf": ('POST {p}/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5;a="\r\n"\r\nhello\r\n0\r\n\r\n', None),
    "framing-fields-in-trailers": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\nHost: evil.example\r\n\r\n", None),
    # Heads that are not what they seem.
    "bare-cr-in-value": ("GET {p}/a HTTP/1.1\r\nHost: localhost\r\nX-Foo: a\rb\r\n\r\n", None),
    "bare-cr-line-end": ("GET {p}/a HTTP/1.1\r\nHost: localhost\rX-Foo: b\r\n\r\n", None),
    "nul-in-value": ("GET {p}/a HTTP/1.1\r\nHost: localhost\r\nX-Foo: a\x00b\r\n\r\n", None),
    "nul-in-target": ("GET {p}/a\x00b HTTP/1.1\r\nHost: localhost\r\n\r\n", REJECT),
    "space-in-target": ("GET {p}/a b HTTP/1.1\r\nHost: localhost\r\n\r\n", REJECT),
    "space-in-field-name": ("GET {p}/a HTTP/1.1\r\nHost: localhost\r\nX Foo: 1\r\n\r\n", REJECT),
    "missing-host": ("GET {p}/a HTTP/1.1\r\nX-Foo: 1\r\n\r\n", REJECT),
    "two-hosts": ("GET {p}/a HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n\r\n", REJECT),
    "host-with-space": ("GET {p}/a HTTP/1.1\r\nHost: local host\r\n\r\n", REJECT),
    "host-with-userinfo": ("GET {p}/a HTTP/1.1\r\nHost: user@localhost\r\n\r\n", REJECT),
    "lf-line-endings": ("GET {p}/a HTTP/1.1\nHost: localhost\nX-Foo: 1\n\n", None),
    "head-ends-lf-crlf": ("GET {p}/a HTTP/1.1\r\nHost: localhost\n\r\n", None),
    "leading-empty-lines": ("\r\n\r\nGET {p}/a HTTP/1.1\r\nHost: localhost\r\n\r\n", None),
    "double-spaces-in-request-line": ("GET  {p}/a  HTTP/1.1\r\nHost: localhost\r\n\r\n", None),
    "lower-case-version": ("GET {p}/a http/1.1\r\nHost: localhost\r\n\r\n", REJECT),
    "version-http-1-2": ("GET {p}/a HTTP/1.2\r\nHost: localhost\r\n\r\n", None),
    "expect-100-continue": ("POST {p}/a HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello", None),
}

HEAD_LINE = re.compile(rb"[^\r]\n|\r[^\n]")


@pytest.fixture(scope="module")
def corpus_target(proxy_bin, cert_pair, tmp_path_factory):
    """One proxy and one recording backend for the whole corpus: each case uses its own path prefix, and
    sharing the upstream connection pool across cases is part of the test (a desync in one case would
    surface as a stray request in the next)."""
    backend = RawBackend("corpus")
    workdir = tmp_path_factory.mktemp("desync")
    config = proxy_config(
        *cert_pair,
        [(backend.name, backend.url)],
        {"server": {"header_read_timeout": "2s"}, "load_balancer": {"retries": 0}},
    )
    proxy = start_proxy(proxy_bin, config, workdir)
    yield proxy, backend
    status, killed = proxy.process.stop(15)
    backend.close()
    assert not killed and status == 0, proxy.tail()


def hygiene_problems(seen) -> list[str]:
    problems = []
    head = seen.raw_head[:-4]
    if b"\x00" in seen.raw_head:
        problems.append("NUL in the forwarded head")
    if HEAD_LINE.search(head):
        problems.append("bare CR or LF in the forwarded head")
    if re.search(rb"\r\n[ \t]", head):
        problems.append("obs-fold in the forwarded head")
    if seen.error:
        problems.append(f"the backend could not parse what it got: {seen.error}")
    names = [name.lower() for name, _ in seen.headers]
    if names.count("host") != 1:
        problems.append(f"{names.count('host')} Host fields")
    if "content-length" in names and "transfer-encoding" in names:
        problems.append("both Content-Length and Transfer-Encoding")
    if names.count("content-length") > 1:
        problems.append("more than one Content-Length")
    if [v.lower() for v in seen.header_values("transfer-encoding")] not in ([], ["chunked"]):
        problems.append(f"Transfer-Encoding {seen.header_values('transfer-encoding')}")
    forbidden = {"content-length", "transfer-encoding", "host"} & {name.lower() for name, _ in seen.trailers}
    if forbidden:
        problems.append(f"framing or routing fields forwarded as trailers: {sorted(forbidden)}")
    return problems


def run_case(proxy, backend, listener, case_id, template, tls):
    prefix = f"/{listener}-{case_id}"
    request = template.replace("{p}", prefix).encode("latin-1")
    follow = (
        f"GET {prefix}/pipelined HTTP/1.1\r\nHost: localhost\r\n\r\n"
        f"GET {prefix}/last HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    ).encode()
    responses = []
    with h1raw.H1Client(proxy.https if tls else proxy.http, tls=tls) as client:
        client.try_send(request + follow)
        while True:
            try:
                response = client.read_response(READ_TIMEOUT)
            except (TimeoutError, ConnectionError):
                break
            if response is None:
                break
            responses.append(response)
        closed = client.eof
    return prefix, responses, closed


@pytest.mark.parametrize("tls", [False, True], ids=["http1", "https-http1"])
@pytest.mark.parametrize("case_id", list(CORPUS))
def test_desync_corpus(corpus_target, case_id, tls):
    proxy, backend = corpus_target
    template, reject = CORPUS[case_id]
    listener = "https" if tls else "http"
    earlier = len(backend.seen())
    prefix, responses, closed = run_case(proxy, backend, listener, case_id, template, tls)
    statuses = [r.status for r in responses]
    arrived = backend.seen()[earlier:]
    seen = [r for r in arrived if r.target.startswith(prefix)]
    # An earlier case's aborted upstream request may still be arriving (its head, never its end); one that
    # arrives complete now is one its own case could not account for.
    stray = [r.target for r in arrived if not r.target.startswith(prefix) and r.complete]
    described = f"client saw {statuses}; backend saw " + json.dumps([r.describe() for r in seen])[:3000]

    assert not stray, f"requests of earlier cases completed at the backend during this one: {stray}; {described}"
    for request in seen:
        problems = hygiene_problems(request)
        assert not problems, f"{request.target}: {problems}; {described}"

    answered = sorted(json.loads(r.body)["target"] for r in responses if r.header("x-raw-backend") and r.body)
    completed = sorted(r.target for r in seen if r.complete)
    assert completed == answered, f"the backend completed {completed} but the client was answered {answered}; {described}"

    if reject is not None:
        assert statuses[:1] and statuses[0] in reject, f"expected {sorted(reject)} first; {described}"
        assert len(responses) == 1 and closed, f"the connection went on after a refused request; {described}"
        assert seen == [], f"a refused request reached the backend; {described}"
    assert not proxy.panics(), proxy.panics()
    assert proxy.running(), proxy.tail()


def test_absolute_form_target_wins_over_a_mismatched_host(corpus_target):
    """RFC 9112 3.2.2: the authority of an absolute-form target replaces Host; the backend sees one Host,
    the target's, and an origin-form target."""
    proxy, backend = corpus_target
    request = b"GET http://localhost/absolute-form/a HTTP/1.1\r\nHost: evil.example\r\n\r\n"
    response = h1raw.exchange(proxy.http, request)
    seen = [r for r in backend.seen() if "absolute-form" in r.target]
    if response is not None and response.status == 400:
        assert seen == [], [r.describe() for r in seen]
        proxy.assert_serving()
        return
    assert response is not None and response.status == 200, response
    (request_seen,) = seen
    assert request_seen.target == "/absolute-form/a", request_seen.describe()
    assert request_seen.header_values("host") == ["localhost"], request_seen.describe()
    assert request_seen.header_values("x-forwarded-host") in ([], ["localhost"]), request_seen.describe()
    proxy.assert_serving()
