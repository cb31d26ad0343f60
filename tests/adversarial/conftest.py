"""Fixtures for the adversarial suite: the real quic-proxy binary, started per test with the config the test
needs, in front of raw Python backends that record what reached them (or the proxy's own demo backends, the
shared demo_backend fixture).

Every process binds port 0 and the fixtures read the bound addresses from the proxy's JSON log lines, so
tests share nothing and can run in any order, repeatedly and in parallel with other suites. proxy_bin,
cert_pair and demo_backend are the shared quic_proxy_testing package's fixtures (tests/support).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import Proxy, proxy_config
from quic_proxy_testing import ProxyLauncher
from rawbackend import RawBackend

pytest_plugins = ["quic_proxy_testing.plugin"]

# The proxy drains for up to drain_timeout (3 s in these configs) on SIGTERM; a debug build on a busy machine
# gets some slack beyond that before teardown calls it hung.
EXIT_TIMEOUT = 15.0


@pytest.fixture
def raw_backend():
    """Starts raw backends (see rawbackend.RawBackend); all are stopped at teardown."""
    started: list[RawBackend] = []

    def start(name: str = "raw", **kwargs) -> RawBackend:
        backend = RawBackend(name, **kwargs)
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.close()


@pytest.fixture
def proxy_factory(proxy_bin: Path, cert_pair: tuple[Path, Path], tmp_path: Path):
    """Starts quic-proxy in front of the given backends with `overrides` laid over the base config. At
    teardown each proxy still running gets SIGTERM and must exit 0 without being killed, and none may have
    panicked; a proxy the test stopped or killed itself is judged by that test."""
    with ProxyLauncher(proxy_bin, tmp_path, stop_timeout=EXIT_TIMEOUT, judge_early_exit=False) as launcher:

        def start(backends, overrides: dict | None = None) -> Proxy:
            pairs = [(b.name, b.url) for b in backends]
            return launcher.start(proxy_config(*cert_pair, pairs, overrides), cls=Proxy)

        yield start


@pytest.fixture
def proxy_with_raw(raw_backend, proxy_factory):
    """One raw backend and a proxy in front of it, for tests that need nothing special of either."""
    backend = raw_backend("raw")
    proxy = proxy_factory([backend])
    return proxy, backend
