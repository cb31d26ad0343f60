"""Fixtures for the interop tests: the real quic-proxy binary in front of three demo backends.

Every process binds port 0 and reports the address it got in a JSON log line on stderr; the fixtures read
those lines instead of guessing ports or sleeping. Each test gets its own backends and proxy, so tests
share no state and pass in any order. Starting and stopping them is the shared quic_proxy_testing package's
(tests/support); proxy_bin, cert_pair and backends are its fixtures.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quic_proxy_testing import DemoBackend, ProxyLauncher, RunningProxy

pytest_plugins = ["quic_proxy_testing.plugin"]


class Proxy(RunningProxy):
    """quic-proxy in front of the test's demo backends."""

    def __init__(self, *args, backends: list[DemoBackend], **kwargs):
        super().__init__(*args, **kwargs)
        self.backends = backends


def config_lines(cert: Path, key: Path, backends: list[DemoBackend]) -> list[str]:
    lines = [
        "server:",
        '  address: "127.0.0.1:0"',
        '  fallback_address: "127.0.0.1:0"',
        "  tls:",
        f"    cert_file: {json.dumps(str(cert))}",
        f"    key_file: {json.dumps(str(key))}",
        "backends:",
    ]
    for backend in backends:
        lines += [
            f"  - name: {json.dumps(backend.name)}",
            f'    url: "http://{backend.address}"',
            "    weight: 1",
        ]
    lines += [
        "load_balancer:",
        '  algorithm: "round_robin"',
        "telemetry:",
        "  metrics:",
        '    address: "127.0.0.1:0"',
        "  logging:",
        '    level: "info"',
        '    format: "json"',
    ]
    return lines


@pytest.fixture
def proxy(backends: list[DemoBackend], cert_pair: tuple[Path, Path], proxy_launcher: ProxyLauncher) -> Proxy:
    """quic-proxy in front of the three backends; at teardown it must exit 0 on SIGTERM."""
    return proxy_launcher.start(config_lines(*cert_pair, backends), cls=Proxy, backends=backends)
