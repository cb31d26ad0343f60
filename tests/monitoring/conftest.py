"""Fixtures for the monitoring tests: the real proxy, demo backends and a real Prometheus, plus traffic.

One proxy serves the whole session. Prometheus starts scraping it before any traffic, then the traffic runs
in phases (HTTP/1.1, HTTP/2, HTTP/3, errors, a failing backend, a dead backend); the moment each phase's
events are in Prometheus is recorded, so the report can say after which event each query first had data. After the phases a
background load keeps every rate non-zero while the dashboard queries run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from curl_cffi import CurlHttpVersion, CurlOpt, requests
from curl_cffi.const import CurlIpResolve
from ruamel.yaml import YAML

from quic_proxy_testing import ROOT, START_TIMEOUT, DemoBackend, ProxyLauncher, RunningProxy, start_demo_backend

# proxy_bin and cert_pair are the shared package's (tests/support); backends is overridden below (session-wide).
pytest_plugins = ["quic_proxy_testing.plugin"]

MONITORING = ROOT / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "quic-proxy-dashboard.json"
PROMETHEUS_DIR = MONITORING / "prometheus"

JOB = "quic-proxy"  # the job name alerts.yml selects
SCRAPE_SECONDS = 1
SCRAPE_INTERVAL = f"{SCRAPE_SECONDS}s"
REQUEST_TIMEOUT = 15
PROMETHEUS_START_TIMEOUT = 60.0
HEALTH_CHANGE_TIMEOUT = 20.0
IPV4 = {CurlOpt.IPRESOLVE: CurlIpResolve.V4}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: scripts/test.sh installs Debian's prometheus package")
    return path


# --- the proxy's /metrics ------------------------------------------------------------------------------

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_scrape(text: str) -> dict[str, float]:
    """Series (name plus label set, as written) to value."""
    series = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            series[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return series


def metric_names(series: dict[str, float]) -> set[str]:
    return {key.split("{", 1)[0] for key in series}


def load_yaml(path: Path):
    """A YAML file as plain Python data (merge keys resolved), with ruamel.yaml's safe loader."""
    return YAML(typ="safe", pure=True).load(path.read_text())


def http_get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


# --- traffic --------------------------------------------------------------------------------------------


@dataclass
class Stack:
    proxy: RunningProxy
    dead_address: str
    # Phase name -> the proxy's /metrics right after it; insertion order is the order the phases ran.
    scrapes: dict[str, str] = field(default_factory=dict)
    # Phase name -> a moment (Unix time) by which Prometheus had scraped twice since the phase ended, so
    # queries evaluated then see the phase's events, rates included.
    moments: dict[str, float] = field(default_factory=dict)
    # The demo backends behind the proxy, for phases that change how one behaves.
    backends: list[DemoBackend] = field(default_factory=list)

    def scrape(self) -> str:
        return self.proxy.scrape_metrics()

    def h1(self, method: str, path: str, **kwargs) -> requests.Response:
        return requests.request(
            method, f"http://{self.proxy.http_address}{path}", http_version=CurlHttpVersion.V1_1,
            timeout=REQUEST_TIMEOUT, **kwargs,
        )

    def tls(self, method: str, path: str, version: CurlHttpVersion, **kwargs) -> requests.Response:
        # A fresh session per request: each QUIC connection closes straight away, and the proxy records its
        # RTT and packet counts at close.
        return requests.request(
            method, self.proxy.url(path), http_version=version, verify=False, timeout=REQUEST_TIMEOUT,
            curl_options=IPV4, **kwargs,
        )

    def h2(self, method: str, path: str, **kwargs) -> requests.Response:
        return self.tls(method, path, CurlHttpVersion.V2_0, **kwargs)

    def h3(self, method: str, path: str, **kwargs) -> requests.Response:
        return self.tls(method, path, CurlHttpVersion.V3ONLY, **kwargs)

    def wait_for_series(self, pattern: str, what: str, timeout: float = HEALTH_CHANGE_TIMEOUT) -> None:
        """Polls the proxy's /metrics (bounded) until a series line matches `pattern`."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern, re.M)
        while True:
            text = self.scrape()
            if regex.search(text):
                return
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {timeout}s; last scrape:\n{text}")
            time.sleep(0.2)


# Request bodies stay above 64 KiB: HTTP/3 requests with a smaller body (read ahead whole by the proxy) get
# no response from the proxy at the time of writing, and these tests are about metrics, not that bug.
BODY = 70_000


def normal_requests(stack: Stack, send) -> None:
    """GETs, a POST with a body and a larger response: fills the size histograms beyond the first bucket."""
    for path in ("/", "/hello?x=1", "/bytes/20000"):
        r = send("GET", path)
        assert r.status_code == 200, r.text
    r = send("POST", "/upload", data=os.urandom(BODY))
    assert r.status_code == 200, r.text


def phase_http1(stack: Stack) -> None:
    normal_requests(stack, stack.h1)


def phase_http2(stack: Stack) -> None:
    normal_requests(stack, stack.h2)


def phase_http3(stack: Stack) -> None:
    normal_requests(stack, stack.h3)
    for _ in range(3):
        assert stack.h3("GET", "/").http_version == 30
    # QUIC connections are recorded when they close; the proxy has seen them close once the gauge is back
    # at zero.
    stack.wait_for_series(r'^connections_open\{protocol="h3"\} 0$', "closed HTTP/3 connection")


def phase_quic_handshake_failure(stack: Stack) -> None:
    # A client that verifies the certificate rejects the self-signed one and aborts the handshake.
    with pytest.raises(Exception):
        requests.get(
            stack.proxy.url("/"), http_version=CurlHttpVersion.V3ONLY, timeout=REQUEST_TIMEOUT, curl_options=IPV4
        )
    stack.wait_for_series(r"^quic_handshake_failures_total \d", "failed QUIC handshake")


def phase_errors(stack: Stack) -> None:
    for code in (500, 502, 503):
        assert stack.h1("GET", f"/status/{code}").status_code == code
    assert stack.h3("GET", "/status/500").status_code == 500


def phase_backend_fails_health(stack: Stack) -> None:
    backend = stack.backends[2]
    backend.fail_probes()
    stack.wait_for_series(
        rf'^backend_health\{{[^}}]*backend="{backend.name}"[^}}]*\}} 0$', f"{backend.name} marked unhealthy"
    )


def phase_dead_backend(stack: Stack) -> None:
    # Passive checks eject the only backend after 5 failed connects; later requests fail open.
    for _ in range(8):
        assert stack.h1("GET", "/dead/x").status_code >= 500
    stack.wait_for_series(r"^upstream_fail_open_requests_total\{", "fail-open request")


def phase_retry(stack: Stack) -> None:
    # Round robin alternates between the dead and the live backend; the dead one's failures are retried.
    for _ in range(4):
        assert stack.h1("GET", "/flaky/x").status_code == 200
    stack.wait_for_series(r"^proxy_retries_total\{", "retried request")


def phase_route_actions(stack: Stack) -> None:
    # The /old/* route answers with its redirect; nothing reaches a backend.
    moved = stack.h1("GET", "/old/page", allow_redirects=False)
    assert moved.status_code == 302 and moved.headers["location"] == "/new/old/page", moved.headers
    stack.wait_for_series(r'^route_actions_total\{[^}]*action="redirect"[^}]*\} [1-9]', "redirect counted")


PHASES = {
    "HTTP/1.1 requests": phase_http1,
    "HTTP/2 requests": phase_http2,
    "HTTP/3 requests (connections closed)": phase_http3,
    "failed QUIC handshake (client rejects the certificate)": phase_quic_handshake_failure,
    "5xx responses": phase_errors,
    "backend3 fails its health checks": phase_backend_fails_health,
    "route to a dead port (connect errors, passive ejection, fail-open)": phase_dead_backend,
    "upstream with a dead and a live backend (retries)": phase_retry,
    "a route's redirect (route actions)": phase_route_actions,
}
BASELINE = "start-up (first health-check round done)"


class Load:
    """Steady traffic of every kind the dashboard shows, so rates stay non-zero while queries run."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.rounds = 0
        self.thread = threading.Thread(target=self._run, name="monitoring-load", daemon=True)

    def _run(self) -> None:
        s = self.stack
        while not self.stop.is_set():
            try:
                s.h1("GET", "/")
                s.h1("POST", "/upload", data=b"x" * BODY)
                s.h2("GET", "/bytes/5000")
                s.h3("GET", "/")
                s.h3("POST", "/upload", data=b"y" * BODY)
                s.h1("GET", "/status/500")
                s.h1("GET", "/dead/x")
                s.h1("GET", "/flaky/x")
                s.h1("GET", "/old/x", allow_redirects=False)
                self.rounds += 1
            except Exception as error:  # keep loading; the tests report what went wrong if data is missing
                self.errors.append(repr(error))
            # Pacing, not synchronisation: a light load on a shared 2-core machine.
            self.stop.wait(0.2)

    def __enter__(self) -> "Load":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(2 * REQUEST_TIMEOUT)


# --- the proxy ------------------------------------------------------------------------------------------


def proxy_config(cert: Path, key: Path, backends: list[DemoBackend], dead: str) -> str:
    q = json.dumps
    live = [f"  - name: {q(b.name)}\n    url: {q('http://' + b.address)}" for b in backends]
    return f"""server:
  address: "127.0.0.1:0"
  fallback_address: "127.0.0.1:0"
  # One certificate from files: tls_certificate_expiry_timestamp_seconds has its name with source="file".
  tls:
    cert_file: {q(str(cert))}
    key_file: {q(str(key))}
backends:
{chr(10).join(live)}
load_balancer:
  algorithm: "round_robin"
# Fast probes so a failing backend turns unhealthy within a second or two.
health_check:
  enabled: true
  interval: "300ms"
  timeout: "250ms"
  unhealthy_threshold: 2
  healthy_threshold: 1
upstreams:
  dead:
    backends:
      - name: "dead1"
        url: {q('http://' + dead)}
    health_check:
      enabled: false
  flaky:
    load_balancer:
      algorithm: "round_robin"
      retries: 1
    backends:
      - name: "flaky-dead"
        url: {q('http://' + dead)}
      - name: "flaky-live"
        url: {q('http://' + backends[0].address)}
    health_check:
      enabled: false
routes:
  - path: "/dead/*"
    upstream: "dead"
  - path: "/flaky/*"
    upstream: "flaky"
  # A route with actions, so route_actions_total has series.
  - path: "/old/*"
    redirect:
      to: "/new{{path}}"
quic:
  # Every new connection gets a Retry packet, so the Retry counter has data.
  retry: "always"
  idle_timeout: "5s"
timeouts:
  connect: "2s"
telemetry:
  metrics:
    address: "127.0.0.1:0"
  logging:
    level: "info"
    format: "json"
"""


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("monitoring")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def dead_address():
    """A port nothing listens on and nothing else can take: bound, never listening, so connects are refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield "127.0.0.1:%d" % sock.getsockname()[1]
    finally:
        sock.close()


@pytest.fixture(scope="session")
def backends(proxy_bin: Path, workdir: Path):
    """The three demo backends of the session's proxies."""
    started: list[DemoBackend] = []
    try:
        for n in (1, 2, 3):
            started.append(start_demo_backend(proxy_bin, f"backend{n}", workdir))
        yield started
    finally:
        for backend in started:
            backend.stop()


@contextlib.contextmanager
def running_proxy(
    proxy_bin: Path, cert_pair: tuple[Path, Path], backends: list[DemoBackend], dead_address: str, workdir: Path
) -> Iterator[RunningProxy]:
    """quic-proxy with the monitoring config, started in `workdir`; it must exit 0 on SIGTERM afterwards."""
    with ProxyLauncher(proxy_bin, workdir) as launcher:
        yield launcher.start(
            proxy_config(*cert_pair, backends, dead_address), name="quic-proxy", config_path=workdir / "proxy.yaml"
        )


@pytest.fixture(scope="session")
def proxy(proxy_bin: Path, cert_pair, backends: list[DemoBackend], dead_address: str, workdir: Path):
    with running_proxy(proxy_bin, cert_pair, backends, dead_address, workdir) as running:
        yield running


@pytest.fixture
def fresh_proxy(proxy_bin: Path, cert_pair, backends: list[DemoBackend], dead_address: str, tmp_path: Path):
    """A proxy of its own for one test, started just now: nothing but that test has sent it traffic."""
    with running_proxy(proxy_bin, cert_pair, backends, dead_address, tmp_path) as running:
        yield running


# --- Prometheus -----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Prometheus:
    def __init__(self, binary: str, directory: Path, target: str):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / "prometheus.yml"
        # Loading the real alert rules also proves a real Prometheus accepts them, not only promtool.
        self.config.write_text(
            f"""global:
  scrape_interval: {SCRAPE_INTERVAL}
  scrape_timeout: {SCRAPE_INTERVAL}
  evaluation_interval: {SCRAPE_INTERVAL}
rule_files:
  - {json.dumps(str(PROMETHEUS_DIR / "alerts.yml"))}
scrape_configs:
  - job_name: {JOB}
    static_configs:
      - targets: [{json.dumps(target)}]
"""
        )
        self.popen: subprocess.Popen | None = None
        self.log = directory / "prometheus.log"
        self.address = ""
        self._start(binary)

    def _start(self, binary: str) -> None:
        # Prometheus cannot listen on port 0 and report the port, so a port is picked free and Prometheus
        # retried on another one if something took it in between.
        for _attempt in range(5):
            port = free_port()
            self.address = f"127.0.0.1:{port}"
            storage = self.directory / f"data-{port}"
            with self.log.open("ab") as log:
                self.popen = subprocess.Popen(
                    [
                        binary,
                        f"--config.file={self.config}",
                        f"--storage.tsdb.path={storage}",
                        f"--web.listen-address={self.address}",
                        "--log.level=info",
                    ],
                    cwd=self.directory, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                )
            if self._wait_ready():
                return
            if self.popen.poll() is None:
                self.stop()
                pytest.fail(f"Prometheus not ready within {PROMETHEUS_START_TIMEOUT}s:\n{self.log.read_text()}")
            if "address already in use" not in self.log.read_text():
                pytest.fail(f"Prometheus exited with {self.popen.returncode}:\n{self.log.read_text()}")
        pytest.fail("Prometheus found no free port in 5 attempts")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + PROMETHEUS_START_TIMEOUT
        while time.monotonic() < deadline and self.popen.poll() is None:
            try:
                if http_get(f"http://{self.address}/-/ready", timeout=2)[0] == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.2)
        return False

    def query(self, expr: str, at: float | None = None) -> dict:
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        url = f"http://{self.address}/api/v1/query?" + urllib.parse.urlencode(params)
        status, body = http_get(url)
        answer = json.loads(body)
        if status != 200 or answer.get("status") != "success":
            raise AssertionError(f"query failed ({status}): {expr}\n{body.decode()}")
        return answer["data"]

    def scraped_twice_since(self, moment: float, timeout: float = 20.0) -> float:
        """Polls (bounded) until two scrapes started after `moment`; returns the second one's time."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(f'timestamp(up{{job="{JOB}"}})')["result"]
            # Scrapes are 1s apart, so the latest one being over 1s after `moment` means two are.
            if result and float(result[0]["value"][1]) > moment + SCRAPE_SECONDS:
                return float(result[0]["value"][1]) + 0.001
            if time.monotonic() > deadline:
                pytest.fail(f"Prometheus did not scrape the proxy twice within {timeout}s:\n{self.log.read_text()}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.popen and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)


@pytest.fixture(scope="session")
def live(proxy, backends: list[DemoBackend], workdir: Path, dead_address: str):
    """Prometheus scraping the proxy while the traffic phases run; yields with the background load running."""
    prometheus = Prometheus(tool("prometheus"), workdir / "prometheus", proxy.admin_address)
    try:
        stack = Stack(proxy, dead_address, backends=backends)
        deadline = time.monotonic() + START_TIMEOUT
        while http_get(f"http://{proxy.admin_address}/ready")[0] != 200:
            assert time.monotonic() < deadline, "the proxy never became ready"
            time.sleep(0.1)
        stack.scrapes[BASELINE] = stack.scrape()
        stack.moments[BASELINE] = prometheus.scraped_twice_since(time.time())
        for name, phase in PHASES.items():
            # Twice, with scrapes in between: a series is born holding its first increments, which rate()
            # cannot see, so only the second round shows up in rates.
            phase(stack)
            prometheus.scraped_twice_since(time.time())
            phase(stack)
            stack.scrapes[name] = stack.scrape()
            stack.moments[name] = prometheus.scraped_twice_since(time.time())
        with Load(stack) as load:
            yield stack, prometheus, load
    finally:
        prometheus.stop()
        shutil.rmtree(workdir / "prometheus", ignore_errors=True)


# --- the dashboard --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


# Filled by the tests, printed at the end of the run: which events each dashboard query depended on.
REPORT: list[str] = []


def pytest_terminal_summary(terminalreporter) -> None:
    if REPORT:
        terminalreporter.section("dashboard queries and the events their metrics needed")
        for line in REPORT:
            terminalreporter.write_line(line)
