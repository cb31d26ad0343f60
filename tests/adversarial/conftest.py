"""Fixtures for the adversarial suite: the real quic-proxy binary, started per test with the config the test
needs, in front of raw Python backends that record what reached them (or the proxy's own demo backends).

Every process binds port 0 and the fixtures read the bound addresses from the proxy's JSON log lines, so
tests share nothing and can run in any order, repeatedly and in parallel with other suites.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import DemoBackend, Proxy, interop, proxy_config, start_demo_backend, start_proxy
from rawbackend import RawBackend

# The proxy drains for up to drain_timeout (3 s in these configs) on SIGTERM; a debug build on a busy machine
# gets some slack beyond that before teardown calls it hung.
EXIT_TIMEOUT = 15.0

# The interop suite's fixtures for the binary under test and a certificate made by its own tool.
proxy_bin, cert_pair = interop.proxy_bin, interop.cert_pair


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
def demo_backend(proxy_bin: Path, tmp_path: Path):
    """Starts the proxy's demo backends; all are stopped at teardown."""
    started: list[DemoBackend] = []

    def start(name: str) -> DemoBackend:
        backend = start_demo_backend(proxy_bin, name, tmp_path)
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.process.stop()


@pytest.fixture
def proxy_factory(proxy_bin: Path, cert_pair: tuple[Path, Path], tmp_path: Path):
    """Starts quic-proxy in front of the given backends with `overrides` laid over the base config. At
    teardown each proxy still running gets SIGTERM and must exit 0 without being killed."""
    started: list[Proxy] = []

    def start(backends, overrides: dict | None = None) -> Proxy:
        pairs = [(b.name, b.url) for b in backends]
        config = proxy_config(*cert_pair, pairs, overrides)
        proxy = start_proxy(proxy_bin, config, tmp_path, name=f"quic-proxy-{len(started)}")
        started.append(proxy)
        return proxy

    yield start
    problems = []
    for proxy in started:
        was_running = proxy.running()
        status, killed = proxy.process.stop(EXIT_TIMEOUT)
        if killed:
            problems.append(f"the proxy ignored SIGTERM for {EXIT_TIMEOUT}s; log tail:\n{proxy.tail()}")
        elif was_running and status != 0:
            problems.append(f"the proxy exited {status} on SIGTERM; log tail:\n{proxy.tail()}")
        if proxy.panics():
            problems.append("the proxy panicked:\n" + "\n".join(proxy.panics()))
    assert not problems, "\n\n".join(problems)


@pytest.fixture
def proxy_with_raw(raw_backend, proxy_factory):
    """One raw backend and a proxy in front of it, for tests that need nothing special of either."""
    backend = raw_backend("raw")
    proxy = proxy_factory([backend])
    return proxy, backend
