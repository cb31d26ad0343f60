"""Fixtures for the interop tests: the real quic-proxy binary in front of three demo backends.

Every process binds port 0 and reports the address it got in a JSON log line on stderr; the fixtures read
those lines instead of guessing ports or sleeping. Each test gets its own backends and proxy, so tests
share no state and pass in any order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Start-up and shutdown of a debug build on a busy 2-core machine; generous, but bounded.
START_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0


def binary() -> Path:
    """The quic-proxy binary under test: QUIC_PROXY_BIN, else the debug build cargo puts in its target dir."""
    explicit = os.environ.get("QUIC_PROXY_BIN")
    if explicit:
        return Path(explicit)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    if not target.is_absolute():
        target = ROOT / target
    return target / "debug" / "quic-proxy"


class Process:
    """A child process whose stderr is read line by line in the background, so waits never block on a pipe."""

    def __init__(self, name: str, args: list[str], cwd: Path):
        self.name = name
        self.args = args
        self.lines: list[str] = []
        self.events: list[dict] = []
        self._eof = False
        self._cond = threading.Condition()
        self.popen = subprocess.Popen(
            args,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "NO_COLOR": "1"},
        )
        self._reader = threading.Thread(target=self._read, name=f"stderr-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stderr is not None
        for raw in self.popen.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            with self._cond:
                self.lines.append(line)
                if isinstance(event, dict):
                    self.events.append(event)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[dict], bool], what: str, timeout: float = START_TIMEOUT) -> dict:
        """The first JSON log line matching `predicate`; fails early if the process closes stderr first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    break
                self._cond.wait(left)
        self.popen.poll()
        state = "exited with %s" % self.popen.returncode if self.popen.returncode is not None else "still running"
        pytest.fail(f"{self.name}: no log line for {what} within {timeout}s ({state}); stderr:\n{self.stderr()}")

    def wait_for_message(self, message: str, timeout: float = START_TIMEOUT) -> dict:
        return self.wait_for(lambda e: e.get("message") == message, repr(message), timeout)

    def stderr(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def stop(self, timeout: float = STOP_TIMEOUT) -> tuple[int, bool]:
        """SIGTERM, then a bounded wait, then SIGKILL; returns (exit status, whether it had to be killed)."""
        killed = False
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                killed = True
                self.popen.kill()
                self.popen.wait(timeout)
        self._reader.join(timeout)
        return self.popen.returncode, killed


@dataclass
class Backend:
    name: str
    address: str
    process: Process

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])


@dataclass
class Proxy:
    process: Process
    http_address: str
    https_address: str
    quic_address: str
    admin_address: str
    backends: list[Backend]

    @property
    def quic_port(self) -> int:
        return int(self.quic_address.rsplit(":", 1)[1])

    @property
    def https_port(self) -> int:
        return int(self.https_address.rsplit(":", 1)[1])

    def url(self, path: str = "/") -> str:
        """HTTPS on the shared TCP/UDP port; `localhost` because curl keys alt-svc entries by host name."""
        return f"https://localhost:{self.quic_port}{path}"

    def access_log(self, path: str, timeout: float = 10.0) -> dict:
        """The proxy's access log line for `path` (written once the response head is out)."""
        return self.process.wait_for(
            lambda e: e.get("target") == "access" and e.get("path") == path,
            f"the access log line of {path}",
            timeout,
        )


@pytest.fixture(scope="session")
def proxy_bin() -> Path:
    path = binary()
    if not path.is_file():
        pytest.fail(f"{path} not found: run `cargo build` first (or set QUIC_PROXY_BIN)")
    return path


@pytest.fixture(scope="session")
def cert_pair(proxy_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, made by the proxy's own tool."""
    out = tmp_path_factory.mktemp("certs")
    done = subprocess.run(
        [str(proxy_bin), "cert", "generate", "--out", str(out), "--hosts", "localhost,127.0.0.1"],
        cwd=out,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")
    cert, key = out / "server.crt", out / "server.key"
    assert cert.is_file() and key.is_file()
    return cert, key


@pytest.fixture
def backends(proxy_bin: Path, tmp_path: Path):
    """Three fresh demo backends, so no other proxy holds pooled connections to them."""
    started: list[Backend] = []
    try:
        for n in (1, 2, 3):
            name = f"backend{n}"
            process = Process(
                name,
                [str(proxy_bin), "backend", "--listen", "127.0.0.1:0", "--name", name],
                cwd=tmp_path,
            )
            # Registered before waiting, so a backend that fails to start is still cleaned up.
            started.append(Backend(name, "", process))
            event = process.wait_for_message("demo backend listening")
            started[-1].address = event["address"]
        yield started
    finally:
        for backend in started:
            backend.process.stop()


def write_config(path: Path, cert: Path, key: Path, backends: list[Backend]) -> None:
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
    path.write_text("\n".join(lines) + "\n")


def started_proxy(process: Process, backends: list[Backend]) -> Proxy:
    """Waits until the proxy `process` has bound every listener and finished starting."""
    proxy = Proxy(
        process=process,
        http_address=process.wait_for_message("HTTP/1.1 listener bound")["address"],
        https_address=process.wait_for_message("HTTPS listener bound (h2, http/1.1)")["address"],
        quic_address=process.wait_for_message("QUIC listener bound (h3)")["address"],
        admin_address=process.wait_for(
            lambda e: str(e.get("message", "")).startswith("admin listener bound"), "the admin listener"
        )["address"],
        backends=backends,
    )
    process.wait_for_message("quic-proxy started")
    return proxy


@pytest.fixture
def proxy(proxy_bin: Path, cert_pair: tuple[Path, Path], backends: list[Backend], tmp_path: Path):
    """quic-proxy in front of the three backends; at teardown it must exit 0 on SIGTERM."""
    config = tmp_path / "proxy.yaml"
    write_config(config, *cert_pair, backends)
    process = Process("quic-proxy", [str(proxy_bin), "--config", str(config)], cwd=tmp_path)
    try:
        running = started_proxy(process, backends)
        yield running
    finally:
        status, killed = process.stop()
    assert not killed, f"quic-proxy ignored SIGTERM for {STOP_TIMEOUT}s; stderr:\n{process.stderr()}"
    assert status == 0, f"quic-proxy exited {status} on SIGTERM; stderr:\n{process.stderr()}"
