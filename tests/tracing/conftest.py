"""Fixtures for the tracing tests: the real quic-proxy binary, its demo backends (which answer with the request
headers they received, so a test sees the `traceparent` a backend got), a real OTLP collector (rotel), and
sockets that stand for a dead backend or a collector that is down or stuck.

Every process binds port 0 and reports its address (the proxy and backends in JSON log lines, rotel through
/proc, see collector.py); each test starts its own, so tests share nothing and run in any order, repeatedly and
in parallel with other suites.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from curl_cffi import CurlHttpVersion, CurlOpt, requests
from curl_cffi.const import CurlIpResolve

from collector import Collector
from quic_proxy_testing import ProxyLauncher, RunningProxy, wait_until

pytest_plugins = ["quic_proxy_testing.plugin"]

ADMIN_TOKEN = "tracing-suite-admin-token"
# A debug build on a busy 2-core machine: generous, but every request is bounded.
REQUEST_TIMEOUT = 30

# What curl_cffi reports as the response's HTTP version (CURLINFO_HTTP_VERSION).
CURL_VERSIONS = {"h1": 2, "h2": 3, "h3": 30}
CURL_ASKS = {"h1": CurlHttpVersion.V1_1, "h2": CurlHttpVersion.V2_0, "h3": CurlHttpVersion.V3ONLY}


@dataclass
class Answer:
    """A response through the proxy, and what the demo backend said it received (when it answered)."""

    status: int
    http_version: int
    body: bytes

    @property
    def seen(self) -> dict:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        """The one value of a request header as the backend received it."""
        values = self.seen["headers"].get(name)
        if values is None:
            return None
        assert len(values) == 1, f"the backend received {len(values)} {name} headers: {values}"
        return values[0]


class Proxy(RunningProxy):
    """quic-proxy with every listener: plain HTTP/1.1, HTTPS and HTTP/3, and the admin listener."""

    admin_token = ADMIN_TOKEN

    def url_for(self, protocol: str, path: str) -> str:
        if protocol == "h1":
            return f"http://{self.http_address}{path}"
        # `localhost` because the certificate names it; curl is kept to IPv4 below, where the proxy listens.
        return self.url(path)

    def request(self, protocol: str, path: str, headers: dict | None = None) -> Answer:
        """GET `path` over `protocol` (h1: plain HTTP/1.1, h2: HTTPS, h3: HTTP/3 only, no fallback)."""
        response = requests.get(
            self.url_for(protocol, path),
            headers=headers or {},
            http_version=CURL_ASKS[protocol],
            verify=False,
            timeout=REQUEST_TIMEOUT,
            curl_options={CurlOpt.IPRESOLVE: CurlIpResolve.V4},
        )
        assert response.http_version == CURL_VERSIONS[protocol], f"{protocol} answered as {response.http_version}"
        return Answer(response.status_code, response.http_version, response.content)

    def wait_metric(self, name: str, predicate: Callable[[float], bool], what: str, timeout: float = 15.0) -> float:
        value = None

        def holds() -> bool:
            nonlocal value
            value = self.metric(name)
            return predicate(value)

        wait_until(holds, lambda: f"{name} is {value}, expected {what}", timeout)
        return value

    def wait_tracing_on(self, endpoint: str) -> None:
        """Waits until the tracer for `endpoint` is installed: requests from then on are traced."""
        self.process.wait_for(
            lambda e: e.get("message") == "tracing on" and str(e.get("endpoint", "")).rstrip("/") == endpoint,
            f"tracing on towards {endpoint}",
        )


def tracing(endpoint: str, protocol: str = "grpc", **settings) -> dict:
    return {"otlp_endpoint": endpoint, "protocol": protocol, **settings}


def proxy_config(cert: Path, key: Path, backends: list[tuple[str, str]], tracing_section: dict | None) -> dict:
    """Every listener on 127.0.0.1 port 0, round robin, health checks off, the admin API with a token."""
    config = {
        "server": {
            "address": "127.0.0.1:0",
            "fallback_address": "127.0.0.1:0",
            "tls": {"cert_file": str(cert), "key_file": str(key)},
            "drain_timeout": "2s",
        },
        "backends": [{"name": name, "url": url} for name, url in backends],
        "load_balancer": {"algorithm": "round_robin", "retries": 2},
        "admin": {"token": ADMIN_TOKEN},
        "telemetry": {
            "metrics": {"address": "127.0.0.1:0"},
            "logging": {"level": "info", "format": "json"},
        },
    }
    if tracing_section is not None:
        config["telemetry"]["tracing"] = tracing_section
    return config


@pytest.fixture
def collector(tmp_path: Path):
    """Starts rotel collectors; all are stopped at teardown."""
    started: list[Collector] = []

    def start(name: str = "rotel") -> Collector:
        started.append(Collector(tmp_path, name))
        return started[-1]

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def backend(demo_backend):
    """Starts demo backends (`quic-proxy backend`); returns (name, url). All are stopped at teardown."""

    def start(name: str) -> tuple[str, str]:
        started = demo_backend(name)
        return started.name, started.url

    return start


class HeldBody:
    """A backend that sends its response head at once and its body only when the test releases it, and keeps
    the headers of the request it got."""

    body = b"held until released\n"

    def __init__(self):
        self.released = threading.Event()
        self.headers: dict[str, str] = {}
        held = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                held.headers = {k.lower(): v for k, v in self.headers.items()}
                self.send_response(200)
                self.send_header("Content-Length", str(len(held.body)))
                self.end_headers()
                self.wfile.flush()
                if held.released.wait(REQUEST_TIMEOUT):
                    self.wfile.write(held.body)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), name="held-body", daemon=True).start()

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def held_body():
    started: list[HeldBody] = []

    def start() -> HeldBody:
        started.append(HeldBody())
        return started[-1]

    yield start
    for backend in started:
        backend.close()


@pytest.fixture
def closed_port():
    """Ports that refuse connections: each socket is bound (so nothing else can take its port) and never
    listens, so a connect to it is answered with a reset at once."""
    held: list[socket.socket] = []

    def take() -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        held.append(sock)
        return sock.getsockname()[1]

    yield take
    for sock in held:
        sock.close()


class StuckCollector:
    """A collector that accepts connections and reads what it is sent, but never answers."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received = bytearray()
        self._connections: list[socket.socket] = []
        self._cond = threading.Condition()
        self._closed = False
        threading.Thread(target=self._accept, name="stuck-collector", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with self._cond:
                if self._closed:
                    connection.close()
                    return
                self._connections.append(connection)
            threading.Thread(target=self._read, args=(connection,), daemon=True).start()

    def _read(self, connection: socket.socket) -> None:
        while True:
            try:
                data = connection.recv(65536)
            except OSError:
                return
            if not data:
                return
            with self._cond:
                self.received += data
                self._cond.notify_all()

    def wait_received(self, marker: bytes, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while marker not in self.received:
                left = deadline - time.monotonic()
                if left <= 0:
                    got = bytes(self.received[:200])
                    pytest.fail(f"the stuck collector got no {marker!r} within {timeout}s, only {got!r}")
                self._cond.wait(left)

    def close(self) -> None:
        """Closes every connection: an export in progress fails at once."""
        with self._cond:
            self._closed = True
            connections, self._connections = self._connections, []
        self.listener.close()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            connection.close()


@pytest.fixture
def stuck_collector():
    started: list[StuckCollector] = []

    def start() -> StuckCollector:
        started.append(StuckCollector())
        return started[-1]

    yield start
    for stuck in started:
        stuck.close()


@pytest.fixture
def proxy_factory(cert_pair: tuple[Path, Path], proxy_launcher: ProxyLauncher):
    """Starts quic-proxy in front of `backends` (name, url) with `tracing_section` as telemetry.tracing. When
    tracing is on, waits until the tracer is installed, so the test's first request is traced. At teardown each
    proxy gets SIGTERM and must exit 0 without being killed, and must never have panicked (the shared launcher)."""

    def start(backends: list[tuple[str, str]], tracing_section: dict | None, **overrides) -> Proxy:
        config = proxy_config(*cert_pair, backends, tracing_section)
        config.update(overrides)
        proxy = proxy_launcher.start(config, cls=Proxy)
        if tracing_section is not None and tracing_section.get("enabled", True):
            proxy.wait_tracing_on(tracing_section.get("otlp_endpoint") or tracing_section["jaeger_endpoint"])
        return proxy

    return start
