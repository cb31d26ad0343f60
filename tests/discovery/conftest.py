"""Fixtures for the DNS discovery tests: the real quic-proxy binary resolving its backends' names through a DNS
server the test controls (nameserver.py, on 127.0.0.1), and demo backends (`quic-proxy backend`) that share one
port on several loopback addresses (127.0.0.2, 127.0.0.3, ...: on Linux all of 127.0.0.0/8 is loopback), so a
name resolving to those addresses stands for a Kubernetes headless Service.

Every process binds port 0, or a port the first backend of a group got from port 0, and reports its address
in a JSON log line; each test starts its own, so tests share nothing and run in any order, repeatedly and in
parallel with other suites.
"""

from __future__ import annotations

import http.client
import importlib.util
import ipaddress
import json
import re
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from nameserver import Nameserver

ROOT = Path(__file__).resolve().parents[2]

# Process handling and start-up log parsing are the interop suite's; loaded under another module name so that
# suite's conftest never meets this one in a pytest session.
_spec = importlib.util.spec_from_file_location("interop_fixtures", ROOT / "tests" / "interop" / "conftest.py")
interop = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = interop  # dataclasses look their module up there
_spec.loader.exec_module(interop)
Process = interop.Process

# The interop suite's fixture for the binary under test.
proxy_bin = interop.proxy_bin

ADMIN_TOKEN = "discovery-suite-admin-token"
# A debug build on a busy 2-core machine: generous, but every request is bounded.
REQUEST_TIMEOUT = 30
# The proxy drains for up to drain_timeout (2 s here) on SIGTERM.
EXIT_TIMEOUT = 15.0
# How often a condition is looked at again while waiting for it.
POLL = 0.05
# Another process may hold the group's port on one of the other addresses: the group starts again elsewhere.
GROUP_ATTEMPTS = 20


def endpoint(backend: str, address: str, port: int) -> str:
    """The name the proxy gives the endpoint of `backend` at `address`: `backend@ip:port`, IPv6 in brackets."""
    host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    return f"{backend}@{host}:{port}"


def wait_until(condition: Callable[[], object], what: str, timeout: float) -> object:
    """Polls `condition` until it returns something true; fails after `timeout` seconds saying `what`."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"not within {timeout}s: {what}")
        time.sleep(POLL)


@dataclass
class Group:
    """Demo backends on one port at several loopback addresses; each answers with `x-backend: b-ADDRESS`."""

    port: int
    processes: dict[str, Process] = field(default_factory=dict)

    @staticmethod
    def name(address: str) -> str:
        return f"b-{address}"

    def stop(self, address: str) -> None:
        """Stops the backend at `address`: its port there refuses connections from then on."""
        _, killed = self.processes[address].stop()
        assert not killed, f"the backend at {address} ignored SIGTERM"

    def control(self, address: str, path: str) -> None:
        """Tells the backend at `address` how to behave (`/control/health/500`, ...), directly, not through
        the proxy."""
        host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
        connection = http.client.HTTPConnection(host, self.port, timeout=REQUEST_TIMEOUT)
        try:
            connection.request("POST", path)
            response = connection.getresponse()
            assert response.status == 200, f"{path} at {address}: {response.status} {response.read()!r}"
            response.read()
        finally:
            connection.close()


def listening(process: Process, timeout: float) -> str | None:
    """The address a demo backend bound, or None when it exited first (its address was taken)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in list(process.events):
            if event.get("message") == "demo backend listening":
                return event["address"]
        if process.popen.poll() is not None:
            return None
        time.sleep(POLL)
    pytest.fail(f"{process.name}: not listening within {timeout}s; stderr:\n{process.stderr()}")


@pytest.fixture
def demo_backends(proxy_bin: Path, tmp_path: Path):
    """Starts groups of demo backends, one per address, all on one port; all are stopped at teardown."""
    started: list[Process] = []

    def start(addresses: list[str]) -> Group:
        for _ in range(GROUP_ATTEMPTS):
            group, port = Group(port=0), 0
            for address in addresses:
                host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
                process = Process(
                    Group.name(address),
                    [str(proxy_bin), "backend", "--listen", f"{host}:{port}", "--name", Group.name(address)],
                    cwd=tmp_path,
                )
                started.append(process)
                bound = listening(process, interop.START_TIMEOUT)
                if bound is None:
                    break
                port = int(bound.rsplit(":", 1)[1])
                group.processes[address] = process
            else:
                group.port = port
                return group
            for process in group.processes.values():
                process.stop()
        pytest.fail(f"no port free on all of {addresses} in {GROUP_ATTEMPTS} attempts")

    yield start
    for process in started:
        process.stop()


@dataclass
class Answer:
    status: int
    backend: str | None
    body: bytes


@dataclass
class Proxy:
    process: Process
    config_path: Path
    config: dict
    http: str
    admin: str

    def get(self, path: str = "/") -> Answer:
        """A plain HTTP/1.1 GET through the proxy, on a connection of its own."""
        host, port = self.http.rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=REQUEST_TIMEOUT)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return Answer(response.status, response.getheader("x-backend"), response.read())
        finally:
            connection.close()

    def spread(self, requests: int, path: str = "/") -> Counter:
        """Which demo backends answered `requests` GETs, by name; every one must have answered 200."""
        seen: Counter = Counter()
        for _ in range(requests):
            answer = self.get(path)
            assert answer.status == 200, f"GET {path}: {answer.status} {answer.body[:300]!r}"
            seen[answer.backend] += 1
        return seen

    def admin_request(self, method: str, path: str, headers: dict | None = None) -> tuple[int, str]:
        host, port = self.admin.rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=REQUEST_TIMEOUT)
        try:
            connection.request(method, path, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.read().decode("utf-8", "replace")
        finally:
            connection.close()

    def backends(self, upstream: str = "default") -> dict[str, dict]:
        """GET /api/backends: the backends (endpoints) of `upstream`, by name."""
        status, body = self.admin_request("GET", "/api/backends")
        assert status == 200, body
        return {b["name"]: b for b in json.loads(body)["backends"] if b["upstream"] == upstream}

    def wait_endpoints(self, expected: set[str], timeout: float = 10.0, upstream: str = "default") -> dict:
        """Waits until `upstream` has exactly the backends `expected`; returns them as /api/backends shows."""
        last: dict = {}

        def exact() -> dict | None:
            nonlocal last
            last = self.backends(upstream)
            return last if set(last) == expected else None

        deadline = time.monotonic() + timeout
        while True:
            if exact() is not None:
                return last
            if time.monotonic() >= deadline:
                pytest.fail(f"{upstream} has {sorted(last)} after {timeout}s, expected {sorted(expected)}")
            time.sleep(POLL)

    def metrics(self) -> str:
        status, body = self.admin_request("GET", "/metrics")
        assert status == 200, body
        return body

    def samples(self, metric: str, text: str | None = None) -> dict[str, float]:
        """The samples of `metric` on /metrics by their `backend` label, summed over its other labels."""
        text = self.metrics() if text is None else text
        found: dict[str, float] = {}
        for match in re.finditer(rf"^{metric}\{{([^}}]*)\}} (\S+)$", text, re.MULTILINE):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
            if "backend" in labels:
                found[labels["backend"]] = found.get(labels["backend"], 0.0) + float(match.group(2))
        return found

    def drain(self, upstream: str, name: str) -> dict:
        status, body = self.admin_request(
            "POST", f"/api/backends/{upstream}/{name}/drain", {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert status == 200, f"drain {upstream}/{name}: {status} {body}"
        return json.loads(body)

    def rewrite(self, config: dict) -> None:
        """Replaces the config file atomically (JSON is YAML), for a reload to pick up."""
        staged = self.config_path.with_suffix(".next")
        staged.write_text(json.dumps(config, indent=1) + "\n")
        staged.replace(self.config_path)
        self.config = config

    def reload_via_api(self) -> dict:
        status, body = self.admin_request("POST", "/api/reload", {"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert status == 200, f"POST /api/reload answered {status}: {body}"
        return json.loads(body)

    def sighup(self) -> None:
        self.process.popen.send_signal(signal.SIGHUP)


def proxy_config(
    nameserver: Nameserver, backends: list[tuple[str, str]], dns_refresh: str = "1s", dns_timeout: str = "1s"
) -> dict:
    """Plain HTTP/1.1 and the admin listener on 127.0.0.1 port 0, round robin, health checks off, names
    resolved only through `nameserver`."""
    return {
        "server": {"fallback_address": "127.0.0.1:0", "drain_timeout": "2s"},
        "backends": [{"name": name, "url": url} for name, url in backends],
        "load_balancer": {"algorithm": "round_robin", "retries": 2},
        "discovery": {"dns_refresh": dns_refresh, "nameservers": [nameserver.address], "timeout": dns_timeout},
        "admin": {"token": ADMIN_TOKEN},
        "telemetry": {
            "metrics": {"address": "127.0.0.1:0"},
            "logging": {"level": "info", "format": "json"},
        },
    }


@pytest.fixture
def nameserver():
    server = Nameserver()
    yield server
    server.close()


@pytest.fixture
def proxy_factory(proxy_bin: Path, tmp_path: Path):
    """Starts quic-proxy with a config; at teardown each proxy gets SIGTERM and must exit 0 without being
    killed, and must never have panicked."""
    started: list[Proxy] = []

    def start(config: dict) -> Proxy:
        path = tmp_path / f"quic-proxy-{len(started)}.yaml"
        path.write_text(json.dumps(config, indent=1) + "\n")
        process = Process(f"quic-proxy-{len(started)}", [str(proxy_bin), "--config", str(path)], cwd=tmp_path)
        try:
            proxy = Proxy(
                process=process,
                config_path=path,
                config=config,
                http=process.wait_for_message("HTTP/1.1 listener bound")["address"],
                admin=process.wait_for(
                    lambda e: str(e.get("message", "")).startswith("admin listener bound"), "the admin listener"
                )["address"],
            )
            process.wait_for_message("quic-proxy started")
        except BaseException:
            process.stop()
            raise
        started.append(proxy)
        return proxy

    yield start
    problems = []
    for proxy in started:
        status, killed = proxy.process.stop(EXIT_TIMEOUT)
        stderr = proxy.process.stderr()
        if killed:
            problems.append(f"{proxy.process.name} ignored SIGTERM for {EXIT_TIMEOUT}s")
        elif status != 0:
            problems.append(f"{proxy.process.name} exited {status} on SIGTERM")
        if "panicked at" in stderr:
            problems.append(f"{proxy.process.name} panicked:\n{stderr}")
    assert not problems, "\n".join(problems)
