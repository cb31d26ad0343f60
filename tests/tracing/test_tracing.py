"""OpenTelemetry tracing, end to end: real clients (curl's HTTP/1.1, HTTP/2 and HTTP/3 stacks), the real proxy,
demo backends that answer with the headers they received, and rotel as the collector.

Each request's trace id is taken from the proxy's access log line (or from the client's own traceparent), and
the spans are looked up in what the collector received, so every assertion is about what crossed the wire.
"""

from __future__ import annotations

import secrets
import threading
import time

import pytest

from collector import Span, render
from conftest import tracing

SERVER, CLIENT = "SPAN_KIND_SERVER", "SPAN_KIND_CLIENT"
UNSET, ERROR = "STATUS_CODE_UNSET", "STATUS_CODE_ERROR"


def new_traceparent(flags: str = "01") -> tuple[str, str, str]:
    """A client's traceparent: (header, trace id, parent span id)."""
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{parent_id}-{flags}", trace_id, parent_id


def split_traceparent(value: str) -> tuple[str, str, str]:
    """(trace id, span id, flags) of a well-formed version-00 traceparent."""
    version, trace_id, span_id, flags = value.split("-")
    assert version == "00" and len(trace_id) == 32 and len(span_id) == 16 and len(flags) == 2, value
    assert int(trace_id, 16) != 0 and int(span_id, 16) != 0, value
    return trace_id, span_id, flags


def one(spans: list[Span], kind: str) -> Span:
    matching = [s for s in spans if s.kind == kind]
    assert len(matching) == 1, f"expected one {kind} span:\n{render(spans)}"
    return matching[0]


@pytest.mark.parametrize("otlp", ["grpc", "http"])
def test_a_retried_http3_request_is_one_trace_with_both_attempts(otlp, collector, backend, closed_port, proxy_factory):
    """The headline: a dead backend first, a live one second, round robin with retries. The HTTP/3 request
    succeeds on the retry, and the collector gets one server span with two client spans under it."""
    rotel = collector()
    dead_port = closed_port()
    live = backend("live")
    settings = tracing(
        rotel.endpoint(otlp),
        otlp,
        sampling_ratio=1.0,
        service_name="edge-under-test",
        resource_attributes={"deployment.environment": "test"},
        queue_size=2048,
        export_timeout="10s",
    )
    proxy = proxy_factory([("dead", f"http://127.0.0.1:{dead_port}"), live], settings)

    answer = proxy.request("h3", "/retried?attempt=any")
    assert answer.status == 200, answer.body
    assert answer.seen["backend"] == "live"
    access = proxy.access_log("/retried")
    assert access["backend"] == "live" and access["protocol"] == "h3", access
    trace_id = access["trace_id"]
    spans = rotel.wait_for_trace(trace_id, 3)
    print(f"\nHTTP/3 request retried after a refused connect, exported over OTLP/{otlp}:\n{render(spans)}")

    assert len(spans) == 3, render(spans)
    server = one(spans, SERVER)
    first, second = sorted(
        (s for s in spans if s.kind == CLIENT), key=lambda s: s.attributes["http.request.resend_count"]
    )

    assert server.resource["service.name"] == "edge-under-test"
    assert server.resource["deployment.environment"] == "test"
    assert isinstance(server.resource["service.version"], str) and server.resource["service.version"]
    assert server.scope.startswith("quic-proxy ")

    assert server.parent_id == "", "a request without traceparent starts a trace"
    assert server.name == "GET default"
    assert server.status_code == UNSET
    attributes = dict(server.attributes)
    assert attributes.pop("server.address") == "localhost", "the host alone; the port goes in server.port"
    port = attributes.pop("server.port")
    assert isinstance(port, int) and 0 < port < 65536, f"the port the client addressed: {port!r}"
    # The request's ID, the one the access log (and the client, and the backend) got.
    assert attributes.pop("quic_proxy.request_id") == access["request_id"]
    assert attributes == {
        "http.request.method": "GET",
        "http.response.status_code": 200,
        "network.protocol.name": "http",
        "network.protocol.version": "3",
        "client.address": "127.0.0.1",
        "url.path": "/retried",
        "http.route": "default",
        "quic_proxy.upstream": "default",
    }

    for attempt in (first, second):
        assert attempt.name == "upstream attempt"
        assert attempt.parent_id == server.span_id, render(spans)
        assert attempt.attributes["http.request.method"] == "GET"
        assert attempt.attributes["server.address"] == "127.0.0.1"
        assert attempt.attributes["quic_proxy.upstream"] == "default"
    assert first.span_id != second.span_id

    assert first.attributes["http.request.resend_count"] == 0
    assert first.attributes["quic_proxy.backend"] == "dead"
    assert first.attributes["server.port"] == dead_port
    assert first.attributes["error.type"] == "connection refused"
    assert "http.response.status_code" not in first.attributes
    assert first.status_code == ERROR and "connection refused" in first.status_message

    assert second.attributes["http.request.resend_count"] == 1
    assert second.attributes["quic_proxy.backend"] == "live"
    assert second.attributes["server.port"] == int(live[1].rsplit(":", 1)[1])
    assert second.attributes["http.response.status_code"] == 200
    assert "error.type" not in second.attributes
    assert second.status_code == UNSET

    # The attempts run one after the other inside the request, which ends once the body has been delivered.
    assert server.start_ns <= first.start_ns <= first.end_ns <= second.start_ns <= second.end_ns <= server.end_ns

    # The backend was told the live attempt's span is its parent.
    assert answer.header("traceparent") == f"00-{trace_id}-{second.span_id}-01"
    assert answer.header("tracestate") is None

    proxy.wait_metric("tracing_spans_exported_total", lambda v: v >= 3, "at least 3")
    assert proxy.metric("tracing_spans_dropped_total") == 0
    assert proxy.metric("tracing_export_failures_total") == 0


@pytest.mark.parametrize("protocol", ["h1", "h2", "h3"])
def test_the_server_span_lasts_until_the_body_is_delivered(protocol, collector, held_body, proxy_factory):
    """The attempt's span ends with the backend's response head; the request's span only once the body went
    out, which here is after the test let the backend send it."""
    rotel = collector()
    held = held_body()
    proxy = proxy_factory([("held", held.url)], tracing(rotel.endpoint("grpc")))

    answers: list = []

    def fetch() -> None:
        try:
            answers.append(proxy.request(protocol, "/held"))
        except BaseException as error:  # reported by the assertion below
            answers.append(error)

    client_thread = threading.Thread(target=fetch)
    client_thread.start()
    # The access log line is written once the response head is on its way to the client.
    trace_id = proxy.access_log("/held", timeout=30)["trace_id"]
    released = time.time_ns()
    held.released.set()
    client_thread.join(60)
    assert len(answers) == 1 and not isinstance(answers[0], BaseException), answers
    assert (answers[0].status, answers[0].body) == (200, held.body)

    spans = rotel.wait_for_trace(trace_id, 2)
    server, client = one(spans, SERVER), one(spans, CLIENT)
    assert client.end_ns <= released <= server.end_ns, render(spans)
    assert held.headers["traceparent"] == f"00-{trace_id}-{client.span_id}-01"


def test_the_client_trace_context_is_continued(collector, backend, proxy_factory):
    """A sampled client traceparent: same trace, the server span a child of the client's span, and the
    client's tracestate on the spans and at the backend. Configured with the Jaeger alias of the endpoint."""
    rotel = collector()
    proxy = proxy_factory([backend("b1")], {"jaeger_endpoint": rotel.endpoint("grpc")})
    traceparent, trace_id, parent_id = new_traceparent()
    tracestate = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"

    answer = proxy.request("h2", "/continued", {"traceparent": traceparent, "tracestate": tracestate})
    assert answer.status == 200, answer.body
    assert proxy.access_log("/continued")["trace_id"] == trace_id

    spans = rotel.wait_for_trace(trace_id, 2)
    server, client = one(spans, SERVER), one(spans, CLIENT)
    assert server.parent_id == parent_id
    assert client.parent_id == server.span_id
    assert server.trace_state == client.trace_state == tracestate
    assert server.attributes["network.protocol.version"] == "2"
    assert answer.header("traceparent") == f"00-{trace_id}-{client.span_id}-01"
    assert answer.header("tracestate") == tracestate


def test_an_invalid_client_traceparent_starts_a_new_trace(collector, backend, proxy_factory):
    rotel = collector()
    proxy = proxy_factory([backend("b1")], tracing(rotel.endpoint("http"), "http"))
    broken = "00-" + "A" * 32 + "-" + "b" * 16 + "-01"  # upper-case hex is not a traceparent

    answer = proxy.request("h1", "/invalid", {"traceparent": broken, "tracestate": "vendor=state"})
    assert answer.status == 200, answer.body
    trace_id, span_id, flags = split_traceparent(answer.header("traceparent"))
    assert trace_id != "a" * 32 and flags == "01"
    assert answer.header("tracestate") is None, "a tracestate without a valid traceparent is dropped"
    assert proxy.access_log("/invalid")["trace_id"] == trace_id

    spans = rotel.wait_for_trace(trace_id, 2)
    assert one(spans, SERVER).parent_id == ""
    assert one(spans, CLIENT).span_id == span_id


def test_sampling_ratio_zero_records_only_sampled_parents(collector, backend, proxy_factory):
    rotel = collector()
    proxy = proxy_factory([backend("b1")], tracing(rotel.endpoint("http"), "http", sampling_ratio=0))

    # New traces are not recorded, but the backend still gets a trace context (not sampled).
    unsampled = proxy.request("h3", "/new-trace")
    assert unsampled.status == 200, unsampled.body
    new_trace, _, flags = split_traceparent(unsampled.header("traceparent"))
    assert flags == "00"
    assert proxy.access_log("/new-trace")["trace_id"] == new_trace

    # A client that did not sample is followed too.
    traceparent, not_sampled, _ = new_traceparent("00")
    answer = proxy.request("h1", "/parent-not-sampled", {"traceparent": traceparent})
    assert answer.status == 200, answer.body
    trace_id, _, flags = split_traceparent(answer.header("traceparent"))
    assert (trace_id, flags) == (not_sampled, "00")

    # A sampled client is recorded whatever the ratio.
    traceparent, sampled, parent_id = new_traceparent("01")
    answer = proxy.request("h1", "/parent-sampled", {"traceparent": traceparent})
    assert answer.status == 200, answer.body
    spans = rotel.wait_for_trace(sampled, 2)
    assert one(spans, SERVER).parent_id == parent_id
    assert answer.header("traceparent") == f"00-{sampled}-{one(spans, CLIENT).span_id}-01"

    # Spans leave in the order they ended, through one queue and one export at a time, so had the two
    # earlier requests been recorded, their spans would have reached the collector before these.
    received = {s.trace_id for s in rotel.spans()}
    assert new_trace not in received and not_sampled not in received, render(rotel.spans())
    assert len(rotel.spans()) == 2, render(rotel.spans())
    proxy.wait_metric("tracing_spans_exported_total", lambda v: v == 2, "2: the sampled request's spans")
    assert proxy.metric("tracing_spans_dropped_total") == 0


def test_an_unsampled_client_is_followed_at_full_sampling(collector, backend, proxy_factory):
    rotel = collector()
    proxy = proxy_factory([backend("b1")], tracing(rotel.endpoint("grpc"), sampling_ratio=1.0))

    traceparent, not_sampled, _ = new_traceparent("00")
    answer = proxy.request("h3", "/not-sampled", {"traceparent": traceparent})
    assert answer.status == 200, answer.body
    trace_id, _, flags = split_traceparent(answer.header("traceparent"))
    assert (trace_id, flags) == (not_sampled, "00")

    answer = proxy.request("h3", "/sampled")
    assert answer.status == 200, answer.body
    sampled = proxy.access_log("/sampled")["trace_id"]
    rotel.wait_for_trace(sampled, 2)
    assert not rotel.trace(not_sampled), "spans leave in order: the unsampled request would have come first"


def test_every_protocol_and_route_is_named_and_errors_are_marked(collector, backend, closed_port, proxy_factory):
    """The server span names the matched route and the client's protocol. A 5xx, from the backend or from the
    proxy when the only backend refuses connections, marks the spans as errors; a 4xx is no server error."""
    rotel = collector()
    web, api = backend("web"), backend("api1")
    dead_port = closed_port()
    proxy = proxy_factory(
        [web],
        tracing(rotel.endpoint("grpc")),
        upstreams={
            "api": {"backends": [{"name": api[0], "url": api[1]}]},
            "broken": {
                "backends": [{"name": "dead", "url": f"http://127.0.0.1:{dead_port}"}],
                "load_balancer": {"retries": 0},
            },
        },
        routes=[
            {"host": "localhost", "path": "/api/*", "upstream": "api"},
            {"path": "/broken/*", "upstream": "broken"},
        ],
    )

    cases = [
        ("h1", "/page", 200, "GET default", "default", "1.1"),
        ("h2", "/api/items", 200, "GET localhost /api/*", "api", "2"),
        ("h3", "/api/users", 200, "GET localhost /api/*", "api", "3"),
        ("h3", "/broken/x", 502, "GET * /broken/*", "broken", "3"),
        ("h2", "/status/503", 503, "GET default", "default", "2"),
        ("h1", "/status/404", 404, "GET default", "default", "1.1"),
    ]
    answers = []
    for protocol, path, status, *_ in cases:
        answer = proxy.request(protocol, path)
        assert answer.status == status, (path, answer.body)
        answers.append((answer, proxy.access_log(path)["trace_id"]))

    for (protocol, path, status, name, upstream, version), (answer, trace_id) in zip(cases, answers):
        spans = rotel.wait_for_trace(trace_id, 2)
        server, client = one(spans, SERVER), one(spans, CLIENT)
        assert server.name == name, render(spans)
        assert server.attributes["http.route"] == name.split(" ", 1)[1]
        assert server.attributes["network.protocol.version"] == version
        assert server.attributes["http.response.status_code"] == status
        assert server.attributes["quic_proxy.upstream"] == upstream
        assert server.attributes["url.path"] == path
        assert client.parent_id == server.span_id
        if status == 200:
            assert server.status_code == client.status_code == UNSET, render(spans)
            assert answer.header("traceparent") == f"00-{trace_id}-{client.span_id}-01"
        elif status == 502:
            assert server.status_code == ERROR and "connection refused" in server.status_message, render(spans)
            assert client.status_code == ERROR and client.attributes["error.type"] == "connection refused"
            assert "http.response.status_code" not in client.attributes
        elif status == 503:
            assert server.status_code == client.status_code == ERROR, render(spans)
            assert client.attributes["http.response.status_code"] == 503
        else:
            # A 4xx is the client's problem to the server span, and a failed call to the client span.
            assert server.status_code == UNSET and client.status_code == ERROR, render(spans)
            assert client.attributes["http.response.status_code"] == 404


def test_an_unreachable_collector_costs_only_counters(backend, closed_port, proxy_factory):
    """Nothing listens at the endpoint: every request still succeeds promptly, and every span is counted as
    dropped after failed exports."""
    proxy = proxy_factory(
        [backend("b1")], tracing(f"http://127.0.0.1:{closed_port()}", "grpc", export_timeout="2s")
    )
    count = 12
    for index in range(count):
        protocol = ("h1", "h2", "h3")[index % 3]
        answer = proxy.request(protocol, f"/unexported/{index}")
        assert answer.status == 200, answer.body

    # Two spans per request (server and one attempt), none of which can be delivered.
    proxy.wait_metric("tracing_spans_dropped_total", lambda v: v == 2 * count, f"{2 * count}")
    assert proxy.metric("tracing_export_failures_total") >= 1
    assert proxy.metric("tracing_spans_exported_total") == 0


def test_a_stuck_collector_never_slows_requests_and_a_full_queue_drops(backend, stuck_collector, proxy_factory):
    """While an export hangs on a collector that never answers, requests go on at full speed; a tiny queue
    overflows and every span that does not fit is counted as dropped, not waited for."""
    stuck = stuck_collector()
    queue_size = 2
    proxy = proxy_factory(
        [backend("b1")],
        tracing(f"http://127.0.0.1:{stuck.port}", "http", queue_size=queue_size, export_timeout="60s"),
    )

    assert proxy.request("h1", "/first").status == 200
    # The first batch is out: the exporter now waits for an answer that never comes.
    stuck.wait_received(b"POST /v1/traces")

    burst = 8
    outcomes: list[int | BaseException] = []

    def one_request(index: int) -> None:
        try:
            outcomes.append(proxy.request(("h1", "h3")[index % 2], f"/burst/{index}").status)
        except BaseException as error:  # reported by the assertion below
            outcomes.append(error)

    # Each request gives up after REQUEST_TIMEOUT (30 s), well inside the 60 s the export may hang: a request
    # that waited for the exporter would fail here.
    threads = [threading.Thread(target=one_request, args=(i,)) for i in range(burst)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert outcomes == [200] * burst, outcomes

    # The queue holds `queue_size` spans; the rest of the burst's spans are dropped while the export hangs.
    at_least = 2 * burst - queue_size
    proxy.wait_metric("tracing_spans_dropped_total", lambda v: v >= at_least, f"at least {at_least}")
    assert proxy.metric("tracing_export_failures_total") == 0, "the stuck export has not failed yet"

    # Once the collector goes away the stuck export fails; every span of the test ends up counted.
    stuck.close()
    proxy.wait_metric("tracing_spans_dropped_total", lambda v: v == 2 * (burst + 1), f"{2 * (burst + 1)}")
    assert proxy.metric("tracing_export_failures_total") >= 1
    assert proxy.metric("tracing_spans_exported_total") == 0


def test_reloads_turn_tracing_on_move_it_and_turn_it_off(collector, backend, proxy_factory):
    first, second = collector("rotel-a"), collector("rotel-b")
    proxy = proxy_factory([backend("b1")], None)

    def passes_through(path: str) -> None:
        traceparent, _, _ = new_traceparent()
        answer = proxy.request("h1", path, {"traceparent": traceparent, "tracestate": "k=v"})
        assert answer.status == 200, answer.body
        assert answer.header("traceparent") == traceparent, "tracing is off: the client's context is untouched"
        assert answer.header("tracestate") == "k=v"

    def traced_into(rotel, path: str) -> str:
        answer = proxy.request("h3", path)
        assert answer.status == 200, answer.body
        trace_id = proxy.access_log(path)["trace_id"]
        spans = rotel.wait_for_trace(trace_id, 2)
        assert answer.header("traceparent") == f"00-{trace_id}-{one(spans, CLIENT).span_id}-01"
        return trace_id

    passes_through("/before")

    # On, by SIGHUP.
    config = proxy.config
    config["telemetry"]["tracing"] = tracing(first.endpoint("grpc"))
    proxy.rewrite(config)
    proxy.sighup()
    proxy.wait_tracing_on(first.endpoint("grpc"))
    traced_into(first, "/on")

    # Elsewhere, and over the other protocol, by the admin API.
    config["telemetry"]["tracing"] = tracing(second.endpoint("http"), "http")
    proxy.rewrite(config)
    report = proxy.reload_via_api()
    assert report["changes"], report
    proxy.wait_tracing_on(second.endpoint("http"))
    moved = traced_into(second, "/moved")
    assert not first.trace(moved), "the old collector gets nothing once the endpoint moved"

    # Off again: the section stays, `enabled: false`.
    config["telemetry"]["tracing"]["enabled"] = False
    proxy.rewrite(config)
    proxy.reload_via_api()
    proxy.process.wait_for_message("tracing off")
    passes_through("/after")


@pytest.mark.parametrize("protocol", ["h1", "h3"])
def test_without_tracing_the_client_context_reaches_the_backend_unchanged(protocol, backend, proxy_factory):
    proxy = proxy_factory([backend("b1")], None)
    traceparent, _, _ = new_traceparent()

    answer = proxy.request(protocol, "/untraced", {"traceparent": traceparent, "tracestate": "congo=t61rcWkgMzE"})
    assert answer.status == 200, answer.body
    assert answer.header("traceparent") == traceparent
    assert answer.header("tracestate") == "congo=t61rcWkgMzE"
    assert proxy.access_log("/untraced").get("trace_id") is None
    assert proxy.metric("tracing_spans_exported_total") == 0
