"""Fixtures for the DNS discovery tests: the real quic-proxy binary resolving its backends' names through a DNS
server the test controls (nameserver.py, on 127.0.0.1), and demo backends (`quic-proxy backend`) that share one
port on several loopback addresses (127.0.0.2, 127.0.0.3, ...: on Linux all of 127.0.0.0/8 is loopback), so a
name resolving to those addresses stands for a Kubernetes headless Service.

Every process binds port 0, or a port the first backend of a group got from port 0, and reports its address
in a JSON log line; each test starts its own, so tests share nothing and run in any order, repeatedly and in
parallel with other suites.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nameserver import Nameserver
from quic_proxy_testing import (
    POLL,
    DemoBackend,
    ProxyLauncher,
    RunningProxy,
    http_request,
    parse_metrics,
    start_demo_backend,
    wait_until,
)

pytest_plugins = ["quic_proxy_testing.plugin"]

ADMIN_TOKEN = "discovery-suite-admin-token"
# A debug build on a busy 2-core machine: generous, but every request is bounded.
REQUEST_TIMEOUT = 30
# Another process may hold the group's port on one of the other addresses: the group starts again elsewhere.
GROUP_ATTEMPTS = 20


def endpoint(backend: str, address: str, port: int) -> str:
    """The name the proxy gives the endpoint of `backend` at `address`: `backend@ip:port`, IPv6 in brackets."""
    host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    return f"{backend}@{host}:{port}"


@dataclass
class Group:
    """Demo backends on one port at several loopback addresses; each answers with `x-backend: b-ADDRESS`."""

    port: int
    backends: dict[str, DemoBackend] = field(default_factory=dict)

    @staticmethod
    def name(address: str) -> str:
        return f"b-{address}"

    def stop(self, address: str) -> None:
        """Stops the backend at `address`: its port there refuses connections from then on."""
        _, killed = self.backends[address].stop()
        assert not killed, f"the backend at {address} ignored SIGTERM"

    def control(self, address: str, path: str) -> None:
        """Tells the backend at `address` how to behave (`/control/health/500`, ...), directly, not through
        the proxy."""
        self.backends[address].control(path, timeout=REQUEST_TIMEOUT)


@pytest.fixture
def demo_backends(proxy_bin: Path, tmp_path: Path):
    """Starts groups of demo backends, one per address, all on one port; all are stopped at teardown."""
    started: list[DemoBackend] = []

    def start(addresses: list[str]) -> Group:
        for _ in range(GROUP_ATTEMPTS):
            group, port = Group(port=0), 0
            for address in addresses:
                host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
                backend = start_demo_backend(
                    proxy_bin, Group.name(address), tmp_path, f"{host}:{port}", may_exit=True
                )
                if backend is None:
                    break
                started.append(backend)
                port = backend.port
                group.backends[address] = backend
            else:
                group.port = port
                return group
            for backend in group.backends.values():
                backend.stop()
        pytest.fail(f"no port free on all of {addresses} in {GROUP_ATTEMPTS} attempts")

    yield start
    for backend in started:
        backend.stop()


@dataclass
class Answer:
    status: int
    backend: str | None
    body: bytes


class Proxy(RunningProxy):
    """quic-proxy with a plain HTTP/1.1 listener and its admin listener."""

    request_timeout = REQUEST_TIMEOUT
    admin_token = ADMIN_TOKEN

    def get(self, path: str = "/") -> Answer:
        """A plain HTTP/1.1 GET through the proxy, on a connection of its own."""
        answer = http_request("GET", self.http_address, path, timeout=REQUEST_TIMEOUT)
        return Answer(answer.status, answer.headers.get("x-backend"), answer.body)

    def spread(self, requests: int, path: str = "/") -> Counter:
        """Which demo backends answered `requests` GETs, by name; every one must have answered 200."""
        seen: Counter = Counter()
        for _ in range(requests):
            answer = self.get(path)
            assert answer.status == 200, f"GET {path}: {answer.status} {answer.body[:300]!r}"
            seen[answer.backend] += 1
        return seen

    def backends(self, upstream: str = "default") -> dict[str, dict]:
        """GET /api/backends: the backends (endpoints) of `upstream`, by name."""
        answer = self.admin_request("GET", "/api/backends")
        assert answer.status == 200, answer.text
        return {b["name"]: b for b in answer.json()["backends"] if b["upstream"] == upstream}

    def wait_endpoints(self, expected: set[str], timeout: float = 10.0, upstream: str = "default") -> dict:
        """Waits until `upstream` has exactly the backends `expected`; returns them as /api/backends shows."""
        last: dict = {}

        def exact() -> dict | None:
            nonlocal last
            last = self.backends(upstream)
            return last if set(last) == expected else None

        return wait_until(
            exact, lambda: f"{upstream} has {sorted(last)}, expected {sorted(expected)}", timeout, POLL
        )

    def metrics(self) -> str:
        return self.scrape_metrics()

    def samples(self, metric: str, text: str | None = None) -> dict[str, float]:
        """The samples of `metric` on /metrics by their `backend` label, summed over its other labels."""
        found: dict[str, float] = {}
        for sample in parse_metrics(self.metrics() if text is None else text):
            if sample.name == metric and "backend" in sample.labels:
                backend = sample.labels["backend"]
                found[backend] = found.get(backend, 0.0) + sample.value
        return found

    def drain(self, upstream: str, name: str) -> dict:
        answer = self.admin_request(
            "POST", f"/api/backends/{upstream}/{name}/drain", {"Authorization": f"Bearer {self.admin_token}"}
        )
        assert answer.status == 200, f"drain {upstream}/{name}: {answer.status} {answer.text}"
        return answer.json()


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
def proxy_factory(proxy_launcher: ProxyLauncher):
    """Starts quic-proxy with a config; at teardown each proxy gets SIGTERM and must exit 0 without being
    killed, and must never have panicked (the shared launcher)."""

    def start(config: dict) -> Proxy:
        return proxy_launcher.start(config, cls=Proxy)

    return start
