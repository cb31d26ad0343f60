"""The proxy under attack: its config, its process, and what its admin listener and /proc say about it.

Process handling and the start-up log parsing are the interop suite's (tests/interop/conftest.py); they are
loaded under another module name so that suite's conftest never meets this one in a pytest session.
"""

from __future__ import annotations

import copy
import http.client
import importlib.util
import json
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h1raw
from h3raw import H3Client

ROOT = Path(__file__).resolve().parents[2]

_spec = importlib.util.spec_from_file_location("interop_fixtures", ROOT / "tests" / "interop" / "conftest.py")
interop = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = interop  # dataclasses look their module up there
_spec.loader.exec_module(interop)
Process, binary = interop.Process, interop.binary

PANIC = "panicked at"


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


@dataclass
class Proxy:
    process: Process
    http: tuple[str, int]
    https: tuple[str, int]
    quic: tuple[str, int]
    admin: tuple[str, int]
    config: dict

    @property
    def pid(self) -> int:
        return self.process.popen.pid

    # --- admin listener ---------------------------------------------------------------------------------

    def admin_get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        connection = http.client.HTTPConnection(*self.admin, timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read().decode("utf-8", "replace")
        finally:
            connection.close()

    def backends_state(self) -> dict[str, dict]:
        status, body = self.admin_get("/api/backends")
        assert status == 200, body
        return {b["name"]: b for b in json.loads(body)["backends"]}

    def wait_backends(self, predicate: Callable[[dict[str, dict]], bool], timeout: float) -> dict[str, dict]:
        """Polls /api/backends until `predicate` holds; returns the last state either way."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.backends_state()
            if predicate(state) or time.monotonic() >= deadline:
                return state
            time.sleep(0.1)

    def metrics(self) -> list[tuple[str, dict[str, str], float]]:
        status, body = self.admin_get("/metrics")
        assert status == 200, body
        samples = []
        for line in body.splitlines():
            if not line or line.startswith("#"):
                continue
            match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)", line)
            if match is None:
                continue
            labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', match.group(3) or ""))
            samples.append((match.group(1), labels, float(match.group(4))))
        return samples

    def metric(self, name: str, **labels: str) -> float:
        """The sum of every sample of `name` whose labels include `labels`."""
        return sum(
            value
            for sample, sample_labels, value in self.metrics()
            if sample == name and all(sample_labels.get(k) == v for k, v in labels.items())
        )

    # --- the process ------------------------------------------------------------------------------------

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS in /proc status")

    def panics(self) -> list[str]:
        return [line for line in self.process.stderr().splitlines() if PANIC in line]

    def sigterm(self) -> None:
        self.process.popen.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.process.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def running(self) -> bool:
        return self.process.popen.poll() is None

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

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.process.stderr().splitlines()[-lines:])


def start_proxy(proxy_bin: Path, config: dict, workdir: Path, name: str = "quic-proxy") -> Proxy:
    path = workdir / f"{name}.yaml"
    # JSON is YAML: the config is written as JSON so nothing here needs a YAML library.
    path.write_text(json.dumps(config, indent=1) + "\n")
    process = Process(name, [str(proxy_bin), "--config", str(path)], cwd=workdir)
    try:
        proxy = Proxy(
            process=process,
            http=_address(process.wait_for_message("HTTP/1.1 listener bound")["address"]),
            https=_address(process.wait_for_message("HTTPS listener bound (h2, http/1.1)")["address"]),
            quic=_address(process.wait_for_message("QUIC listener bound (h3)")["address"]),
            admin=_address(
                process.wait_for(
                    lambda e: str(e.get("message", "")).startswith("admin listener bound"), "the admin listener"
                )["address"]
            ),
            config=config,
        )
        process.wait_for_message("quic-proxy started")
    except BaseException:
        process.stop()
        raise
    return proxy


@dataclass
class DemoBackend:
    """The proxy's own demo backend (`quic-proxy backend`)."""

    name: str
    address: str
    process: Process

    @property
    def url(self) -> str:
        return f"http://{self.address}"


def start_demo_backend(proxy_bin: Path, name: str, workdir: Path) -> DemoBackend:
    process = Process(name, [str(proxy_bin), "backend", "--listen", "127.0.0.1:0", "--name", name], cwd=workdir)
    try:
        event = process.wait_for_message("demo backend listening")
    except BaseException:
        process.stop()
        raise
    return DemoBackend(name, event["address"], process)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Polls `predicate` until it holds or `timeout` passes; the result of the last look."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return predicate()
        time.sleep(interval)
