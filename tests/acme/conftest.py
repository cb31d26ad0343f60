"""Fixtures for the automatic HTTPS tests: the real quic-proxy binary getting certificates over ACME (RFC 8555)
from pebble, Let's Encrypt's test CA, which resolves the names through pebble-challtestsrv and validates them
at the proxy's own listeners (pebble.py); and a demo backend behind the proxy.

pebble must know the proxy's ports before the proxy starts (it validates http-01 on the plain listener and
tls-alpn-01 on the TLS one), and the proxy's config names pebble's directory, so an ACME site starts in this
order: the proxy's ports reserved (bound to port 0 on 127.0.0.1, TCP and UDP, and held), pebble started with
them, the config written, the ports released and the proxy started on them. If the proxy still finds a port
taken, all of it starts again on fresh ones. Every test has its own processes, ports and directories, so tests
share nothing and run in any order, repeatedly and in parallel with other suites.
"""

from __future__ import annotations

import copy
from datetime import datetime
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from pebble import START_ATTEMPTS, ChallTestSrv, Eab, Pebble, Ports
from quic_proxy_testing import DemoBackend, Process, ProxyLauncher, RunningProxy, write_config
from quic_proxy_testing.proxy import STARTED

pytest_plugins = ["quic_proxy_testing.plugin"]

NAMES = ["a.test", "b.test"]
# Issuance from pebble without its sleeps takes well under a second; a debug build on a busy 2-core machine
# gets much more, but bounded.
ISSUE_TIMEOUT = 30.0
REQUEST_TIMEOUT = 30.0
ISSUED = "ACME certificate issued"
FAILED = "ACME order failed"
LOADED = "ACME certificate loaded from storage"


def serial(text: str) -> int:
    """A serial number as the proxy writes it (hex, maybe with colons) as an integer."""
    return int(text.replace(":", ""), 16)


def timestamp(value: float | str) -> float:
    """A time as the proxy logs or lists it, seconds since the epoch or RFC 3339 text, in seconds."""
    return datetime.fromisoformat(value).timestamp() if isinstance(value, str) else float(value)


def not_after(certificate: x509.Certificate) -> float:
    return certificate.not_valid_after_utc.timestamp()


class Proxy(RunningProxy):
    """quic-proxy with HTTPS and QUIC on one port, plain HTTP/1.1 and its admin listener."""

    request_timeout = REQUEST_TIMEOUT

    @property
    def http_port(self) -> int:
        return self.port("http")

    def state(self) -> dict:
        answer = self.admin_request("GET", "/api/state")
        assert answer.status == 200, answer.text
        return answer.json()

    def acme_names(self) -> dict[str, dict]:
        """/api/state's acme.names, by name."""
        return {entry["name"]: entry for entry in self.state()["acme"]["names"]}

    def orders(self, result: str) -> float:
        return self.metric("acme_orders_total", result=result)

    def expiry(self, name: str, source: str) -> float | None:
        """The tls_certificate_expiry_timestamp_seconds series of `name` from `source` (at most one), if any."""
        values = [
            sample.value
            for sample in self.metric_samples()
            if sample.name == "tls_certificate_expiry_timestamp_seconds"
            and sample.labels.get("name") == name
            and sample.labels.get("source") == source
        ]
        assert len(values) <= 1, f"{name} from {source}: expiry series {values}"
        return values[0] if values else None

    def wait_logged(self, message: str, name: str, timeout: float = ISSUE_TIMEOUT) -> dict:
        """The first log line `message` about `name` (its `name` field)."""
        return self.process.wait_for(
            lambda e: e.get("message") == message and e.get("name") == name, f"{message!r} for {name}", timeout
        )

    def logged(self, message: str, name: str) -> list[dict]:
        return self.process.logged(lambda e: e.get("message") == message and e.get("name") == name)


def proxy_config(
    origin: DemoBackend,
    tls: dict,
    *,
    address: str = "127.0.0.1:0",
    fallback_address: str = "127.0.0.1:0",
    redirect_to_https: bool = False,
) -> dict:
    """HTTPS and QUIC on `address`, plain HTTP/1.1 on `fallback_address`, the admin listener on port 0, every
    request to `origin`."""
    server = {"address": address, "fallback_address": fallback_address, "drain_timeout": "2s", "tls": tls}
    if redirect_to_https:
        server["redirect_to_https"] = True
    return {
        "server": server,
        "backends": [{"name": "origin", "url": origin.url}],
        "telemetry": {
            "metrics": {"address": "127.0.0.1:0"},
            "logging": {"level": "info", "format": "json"},
        },
    }


def on_any_ports(config: dict) -> dict:
    """`config` with its HTTPS/QUIC and plain listeners on port 0: for a proxy that needs no validation."""
    config = copy.deepcopy(config)
    config["server"]["address"] = config["server"]["fallback_address"] = "127.0.0.1:0"
    return config


def launch(launcher: ProxyLauncher, config: dict) -> Proxy | None:
    """Starts a proxy on `config` like `launcher.start` (and so stopped and judged by it at the end), except that
    it is None, stopped, when the proxy exited because an address of its was taken."""
    name = f"quic-proxy-{len(launcher.started)}"
    path = launcher.workdir / f"{name}.yaml"
    write_config(path, config)
    process = Process(name, [str(launcher.proxy_bin), "--config", str(path)], cwd=launcher.workdir)
    try:
        started = process.wait_for_or_exit(lambda e: e.get("message") == STARTED, repr(STARTED))
    except BaseException:
        process.stop()
        raise
    if started is None:
        process.stop()
        if "address already in use" in process.stderr().lower():
            return None
        pytest.fail(f"{name} exited with {process.popen.returncode} before it started:\n{process.stderr()}")
    proxy = Proxy(process, path, config)
    proxy.wait_started()
    launcher.started.append(proxy)
    return proxy


@pytest.fixture
def origin(demo_backend) -> DemoBackend:
    """The one demo backend every proxy sends requests to; set up before the proxies, so it outlives them."""
    return demo_backend("origin")


@pytest.fixture
def challtestsrv(tmp_path: Path) -> Iterator[ChallTestSrv]:
    workdir = tmp_path / "challtestsrv"
    workdir.mkdir()
    server = ChallTestSrv(workdir)
    yield server
    server.stop()


@pytest.fixture
def pebble_factory(challtestsrv: ChallTestSrv, tmp_path: Path) -> Iterator[Callable[..., Pebble]]:
    """Starts pebbles resolving through `challtestsrv`: `pebble_factory(http_port, tls_port, validity=None,
    eab=None)` (see Pebble); every one is stopped at teardown."""
    started: list[Pebble] = []

    def start(http_port: int, tls_port: int, validity: int | None = None, eab: Eab | None = None) -> Pebble:
        pebble = Pebble(
            tmp_path / f"pebble-{len(started)}", challtestsrv.dns_address, http_port, tls_port, validity, eab
        )
        started.append(pebble)
        return pebble

    yield start
    for pebble in started:
        pebble.stop()


@dataclass
class Site:
    """A proxy getting its certificates from `pebble`; `root` is pebble's root as a file clients trust."""

    proxy: Proxy
    pebble: Pebble
    root: Path

    def acme(self) -> dict:
        return self.proxy.config["server"]["tls"]["acme"]


@pytest.fixture
def acme_site(origin: DemoBackend, pebble_factory, proxy_launcher: ProxyLauncher, tmp_path: Path):
    """Starts a proxy with `server.tls.acme` for `domains` over `challenges` from a pebble of its own:
    `acme_site(domains, challenges, validity=None, eab=None, acme={}, redirect_to_https=False)`, where
    `validity` and `eab` are pebble's (see Pebble) and `acme` has more keys for the proxy's acme section. The
    storage is tmp_path/storage. Returns once the proxy has started, not once it has its certificates."""

    def start(
        domains: list[str],
        challenges: list[str],
        *,
        validity: int | None = None,
        eab: Eab | None = None,
        acme: dict | None = None,
        redirect_to_https: bool = False,
    ) -> Site:
        for _ in range(START_ATTEMPTS):
            ports = Ports()
            tls_port, http_port = ports.tcp_and_udp(), ports.tcp()
            pebble = pebble_factory(http_port, tls_port, validity, eab)
            settings = {
                "directory": pebble.directory_url,
                "directory_ca_file": str(pebble.ca_file),
                "email": "ops@example.test",
                "domains": domains,
                "storage": str(tmp_path / "storage"),
                "challenges": challenges,
                **(acme or {}),
            }
            config = proxy_config(
                origin,
                {"acme": settings},
                address=f"127.0.0.1:{tls_port}",
                fallback_address=f"127.0.0.1:{http_port}",
                redirect_to_https=redirect_to_https,
            )
            ports.release()
            proxy = launch(proxy_launcher, config)
            if proxy is not None:
                return Site(proxy, pebble, pebble.write_root(pebble.workdir / "root.pem"))
            pebble.stop()
        pytest.fail(f"the proxy found its ports taken {START_ATTEMPTS} times")

    return start


@dataclass
class FileCert:
    cert_file: Path
    key_file: Path
    certificate: x509.Certificate


@pytest.fixture
def file_certs(tmp_path: Path) -> tuple[Path, dict[str, FileCert]]:
    """A CA (its PEM file) and a certificate with key from it for each of NAMES, as files."""
    ca = trustme.CA()
    ca_file = tmp_path / "files-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    certs = {}
    for name in NAMES:
        issued = ca.issue_cert(name)
        cert_file, key_file = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
        cert_file.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
        issued.private_key_pem.write_to_path(str(key_file))
        certs[name] = FileCert(cert_file, key_file, x509.load_pem_x509_certificate(issued.cert_chain_pems[0].bytes()))
    return ca_file, certs
