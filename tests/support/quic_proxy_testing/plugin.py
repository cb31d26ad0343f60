"""pytest fixtures every suite that runs the proxy shares; a suite's conftest.py loads them with

    pytest_plugins = ["quic_proxy_testing.plugin"]

and may override any of them (e.g. with a wider scope) by defining a fixture of the same name.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .backends import DemoBackend, start_demo_backend
from .binaries import proxy_binary
from .proxy import ProxyLauncher


@pytest.fixture(scope="session")
def proxy_bin() -> Path:
    path = proxy_binary()
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
def demo_backend(proxy_bin: Path, tmp_path: Path) -> Iterator[Callable[..., DemoBackend]]:
    """Starts demo backends: `demo_backend(name, listen="127.0.0.1:0")`; every one is stopped at teardown."""
    started: list[DemoBackend] = []

    def start(name: str, listen: str = "127.0.0.1:0") -> DemoBackend:
        backend = start_demo_backend(proxy_bin, name, tmp_path, listen)
        started.append(backend)
        return backend

    try:
        yield start
    finally:
        for backend in started:
            backend.stop()


@pytest.fixture
def backends(demo_backend) -> list[DemoBackend]:
    """Three fresh demo backends, backend1 to backend3, so no other proxy holds pooled connections to them."""
    return [demo_backend(f"backend{n}") for n in (1, 2, 3)]


@pytest.fixture
def proxy_launcher(proxy_bin: Path, tmp_path: Path) -> Iterator[ProxyLauncher]:
    """Starts proxies for one test (`proxy_launcher.start(config, ...)`); at teardown each gets SIGTERM and must
    exit 0 without being killed, and must never have panicked.

    Fixtures a proxy depends on (backends) should be set up before this one, so that they outlive it."""
    with ProxyLauncher(proxy_bin, tmp_path) as launcher:
        yield launcher
