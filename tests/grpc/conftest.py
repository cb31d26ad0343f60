"""Fixtures for the gRPC suite: real grpcio servers (echo_server.py) behind the real quic-proxy binary, reached
by a real grpcio client over HTTPS (h2) and by tonic over HTTP/3 (examples/grpc_h3_client.rs).

Every process binds port 0 and reports its address (the proxy in JSON log lines, grpcio by the port it
returns); each test starts its own servers and proxy, so tests share nothing and run in any order, repeatedly
and in parallel with other suites. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from echo_server import MAX_MESSAGE, EchoServer
from quic_proxy_testing import ProxyLauncher, RunningProxy, proxy_binary, wait_until

pytest_plugins = ["quic_proxy_testing.plugin"]

HERE = Path(__file__).resolve().parent

# A debug build on a busy 2-core machine: generous, but every call and wait is bounded.
CALL_TIMEOUT = 30.0

# grpcio on the client side: the suite's large messages, and no HTTP proxy from the environment.
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.enable_http_proxy", 0),
]


def h3_client_binary() -> Path:
    """examples/grpc_h3_client: GRPC_H3_CLIENT, else the debug build cargo puts in its target dir."""
    explicit = os.environ.get("GRPC_H3_CLIENT")
    if explicit:
        return Path(explicit)
    return proxy_binary().parent / "examples" / "grpc_h3_client"


@pytest.fixture(scope="session")
def h3_client_bin() -> Path:
    path = h3_client_binary()
    if not path.is_file():
        pytest.fail(f"{path} not found: run `cargo build --example grpc_h3_client` (or set GRPC_H3_CLIENT)")
    return path


@dataclass
class Protos:
    pb2: object
    pb2_grpc: object


@pytest.fixture(scope="session")
def protos(tmp_path_factory: pytest.TempPathFactory) -> Protos:
    """echo.proto compiled by grpcio-tools' protoc into a temporary package directory and imported."""
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("protos")
    status = protoc.main(
        ["protoc", f"-I{HERE}", f"--python_out={out}", f"--grpc_python_out={out}", str(HERE / "echo.proto")]
    )
    assert status == 0, f"protoc failed on echo.proto with status {status}"
    sys.path.insert(0, str(out))
    try:
        return Protos(importlib.import_module("echo_pb2"), importlib.import_module("echo_pb2_grpc"))
    finally:
        sys.path.remove(str(out))


@pytest.fixture
def grpc_server(protos: Protos):
    """Starts grpcio Echo + Health servers named as asked; stops them at teardown."""
    started: list[EchoServer] = []

    def start(name: str, tls: tuple[Path, Path] | None = None) -> EchoServer:
        server = EchoServer(protos.pb2, protos.pb2_grpc, name, tls)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


class Proxy(RunningProxy):
    """quic-proxy with TLS (h2 and HTTP/3 on one port) and its admin listener, and the clients that call it."""

    def __init__(self, *args, cert: Path, h3_client: Path, **kwargs):
        super().__init__(*args, **kwargs)
        self.cert = cert
        self.h3_client = h3_client
        self.channels: list[grpc.Channel] = []

    def channel(self, *options: tuple[str, object]) -> grpc.Channel:
        """A grpcio channel to the proxy over TLS (ALPN h2), trusting only the proxy's certificate."""
        credentials = grpc.ssl_channel_credentials(root_certificates=self.cert.read_bytes())
        channel = grpc.secure_channel(
            f"127.0.0.1:{self.quic_port}",
            credentials,
            options=CHANNEL_OPTIONS + [("grpc.ssl_target_name_override", "localhost"), *options],
        )
        self.channels.append(channel)
        return channel

    def h3(self, call: str, *args: str, timeout: float = CALL_TIMEOUT) -> list[dict]:
        """Runs examples/grpc_h3_client against the proxy's QUIC listener: one JSON line per call."""
        command = [
            str(self.h3_client),
            "--connect",
            f"127.0.0.1:{self.quic_port}",
            "--server-name",
            "localhost",
            "--ca",
            str(self.cert),
            call,
            *args,
        ]
        done = subprocess.run(command, capture_output=True, timeout=timeout, check=False)
        stdout = done.stdout.decode("utf-8", "replace")
        stderr = done.stderr.decode("utf-8", "replace")
        assert done.returncode == 0, f"grpc_h3_client {call} {args} exited {done.returncode}:\n{stdout}\n{stderr}"
        return [json.loads(line) for line in stdout.splitlines() if line.strip()]

    @contextlib.contextmanager
    def h3_held(self, call: str, *args: str, timeout: float = CALL_TIMEOUT):
        """Runs the HTTP/3 client with `--hold`: yields its first JSON line while its connection is still open,
        and closes the connection (by closing the client's stdin) on leaving."""
        command = [
            str(self.h3_client),
            "--connect",
            f"127.0.0.1:{self.quic_port}",
            "--server-name",
            "localhost",
            "--ca",
            str(self.cert),
            call,
            *args,
            "--hold",
        ]
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            ready, _, _ = select.select([process.stdout], [], [], timeout)
            line = process.stdout.readline() if ready else b""
            if not line:
                if process.poll() is None:
                    process.kill()
                process.wait(timeout)
                stderr = process.stderr.read().decode("utf-8", "replace")
                pytest.fail(f"grpc_h3_client {call} {args} printed nothing within {timeout}s:\n{stderr}")
            yield json.loads(line)
            process.stdin.close()
            assert process.wait(timeout) == 0, process.stderr.read().decode("utf-8", "replace")
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout)

    def h3_one(self, call: str, *args: str) -> dict:
        results = self.h3(call, *args)
        assert len(results) == 1, results
        return results[0]

    def backends(self) -> dict[str, dict]:
        """GET /api/backends on the admin listener, by backend name."""
        answer = self.admin_request("GET", "/api/backends")
        assert answer.status == 200, answer.body
        return {b["name"]: b for b in answer.json()["backends"]}

    def wait_backend(self, name: str, predicate: Callable[[dict], bool], what: str, timeout: float = 15.0) -> dict:
        """Polls /api/backends until backend `name` satisfies `predicate`."""
        backend = None

        def satisfied() -> bool:
            nonlocal backend
            backend = self.backends()[name]
            return predicate(backend)

        wait_until(satisfied, lambda: f"backend {name} {what}: {backend}", timeout)
        return backend

    def wait_state(self, name: str, state: str, timeout: float = 15.0) -> dict:
        return self.wait_backend(name, lambda b: b["state"] == state, state, timeout)

    def shutdown(self, *args, **kwargs) -> list[str]:
        """Closes the grpcio channels first, then stops the proxy as every proxy is stopped."""
        for channel in self.channels:
            channel.close()
        return super().shutdown(*args, **kwargs)


def backend_entry(server: EchoServer, tls_ca: Path | None = None) -> dict:
    """The proxy's backend entry for a grpcio server: h2c, or h2 by ALPN over TLS verified against `tls_ca`."""
    if tls_ca is None:
        return {"name": server.name, "url": f"http://{server.address}", "protocol": "h2c"}
    return {
        "name": server.name,
        "url": f"https://{server.address}",
        "protocol": "h2",
        "tls": {"ca_file": str(tls_ca), "server_name": "localhost"},
    }


@pytest.fixture
def proxy_factory(h3_client_bin: Path, cert_pair: tuple[Path, Path], proxy_launcher: ProxyLauncher):
    """Starts quic-proxy with `backends` (entries as backend_entry makes them) and any other top-level sections.
    At teardown each proxy's channels are closed, and it gets SIGTERM and must exit 0 without being killed, and
    must never have panicked (the shared launcher)."""
    cert, key = cert_pair

    def start(backends: list[dict], **sections) -> Proxy:
        config = {
            "server": {
                "address": "127.0.0.1:0",
                "fallback_address": "127.0.0.1:0",
                "tls": {"cert_file": str(cert), "key_file": str(key)},
                "drain_timeout": "2s",
            },
            "backends": backends,
            "telemetry": {
                "metrics": {"address": "127.0.0.1:0"},
                "logging": {"level": "info", "format": "json"},
            },
        }
        config.update(sections)
        return proxy_launcher.start(config, cls=Proxy, cert=cert, h3_client=h3_client_bin)

    return start
