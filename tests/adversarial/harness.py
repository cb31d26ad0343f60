"""The proxy under attack: its config, its process, and what its admin listener and /proc say about it.

Starting, stopping and reading the proxy's log are the shared quic_proxy_testing package's (tests/support);
this adds what attacks need on top: the base config, (host, port) addresses and the checks after an attack.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Callable

import h1raw
from h3raw import H3Client
from quic_proxy_testing import RunningProxy, poll_until
from quic_proxy_testing import start_proxy as start_any_proxy


def merge(base: dict, overrides: dict) -> dict:
    """`overrides` laid over `base`, section by section; a None value removes the key."""
    result = copy.deepcopy(base)
    for key, value in overrides.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def proxy_config(cert: Path, key: Path, backends: list[tuple[str, str]], overrides: dict | None = None) -> dict:
    """The config every test starts from: every listener on 127.0.0.1 port 0, short drain so teardown is quick,
    health checks off unless a test turns them on."""
    base = {
        "server": {
            "address": "127.0.0.1:0",
            "fallback_address": "127.0.0.1:0",
            "tls": {"cert_file": str(cert), "key_file": str(key)},
            "drain_timeout": "3s",
        },
        "backends": [{"name": name, "url": url} for name, url in backends],
        "load_balancer": {"algorithm": "round_robin"},
        "telemetry": {
            "metrics": {"address": "127.0.0.1:0"},
            "logging": {"level": "info", "format": "json"},
        },
    }
    return merge(base, overrides or {})


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


class Proxy(RunningProxy):
    """The proxy with every listener; addresses as (host, port), as the raw clients take them."""

    request_timeout = 5.0

    @property
    def http(self) -> tuple[str, int]:
        return _address(self.http_address)

    @property
    def https(self) -> tuple[str, int]:
        return _address(self.https_address)

    @property
    def quic(self) -> tuple[str, int]:
        return _address(self.quic_address)

    @property
    def admin(self) -> tuple[str, int]:
        return _address(self.admin_address)

    @property
    def pid(self) -> int:
        return self.process.popen.pid

    # --- admin listener ---------------------------------------------------------------------------------

    def admin_get(self, path: str, timeout: float | None = None) -> tuple[int, str]:
        answer = self.admin_request("GET", path, timeout=timeout)
        return answer.status, answer.text

    def backends_state(self) -> dict[str, dict]:
        status, body = self.admin_get("/api/backends")
        assert status == 200, body
        return {b["name"]: b for b in json.loads(body)["backends"]}

    def wait_backends(self, predicate: Callable[[dict[str, dict]], bool], timeout: float) -> dict[str, dict]:
        """Polls /api/backends until `predicate` holds; returns the last state either way."""
        state: dict[str, dict] = {}

        def holds() -> bool:
            nonlocal state
            state = self.backends_state()
            return predicate(state)

        poll_until(holds, timeout, interval=0.1)
        return state

    def metrics(self):
        """/metrics as (name, labels, value) samples."""
        return self.metric_samples()

    # --- the process ------------------------------------------------------------------------------------

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS in /proc status")

    # --- health -----------------------------------------------------------------------------------------

    def assert_serving(self, path: str = "/after", h3: bool = True) -> None:
        """The proxy is alive, never panicked, and still answers ordinary requests on a fresh connection
        over HTTP/1.1 (and HTTP/3)."""
        assert self.running(), f"the proxy exited ({self.process.popen.returncode}); log:\n{self.tail()}"
        response = h1raw.exchange(self.http, h1raw.request_bytes("GET", path))
        assert response is not None and response.status == 200, f"plain HTTP/1.1 GET {path}: {response!r}"
        if h3:
            with H3Client.connect(self.quic) as client:
                stream = client.request("GET", path)
                assert stream.status == 200, f"HTTP/3 GET {path}: {stream.describe()} {client.describe_close()}"
        assert not self.panics(), "the proxy panicked:\n" + "\n".join(self.panics())


def start_proxy(proxy_bin: Path, config: dict, workdir: Path, name: str = "quic-proxy") -> Proxy:
    """A proxy of its own (see the proxy_factory fixture for the usual way); the caller stops it."""
    return start_any_proxy(proxy_bin, config, workdir, name=name, cls=Proxy)

