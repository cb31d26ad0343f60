"""Let's Encrypt's test CA, pebble, and its mock DNS server, pebble-challtestsrv (both from Debian's `pebble`
package), each run for one test on loopback ports of its own.

Neither program reports the ports it bound, so each is given ports the kernel has just handed out (bound to port
0 and held by this process until the program starts: `Ports`). When a port turns out to be taken after all the
program is started again on fresh ones: pebble exits then, challtestsrv only logs it, so challtestsrv counts as
started only once a DNS record set through its management port is answered on its DNS port.

pebble validates every challenge at the names' addresses (challtestsrv answers 127.0.0.1 for every A query and
nothing for AAAA) on the two ports it is told: `http_port` for http-01, `tls_port` for tls-alpn-01. Its own
listeners (the ACME directory, the management one with the CA's roots) serve a certificate from a trustme CA made
per instance, whose PEM the proxy gets as `directory_ca_file`.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from dnslib import QTYPE, DNSRecord

from quic_proxy_testing.ports import bind_tcp_and_udp

# pebble and challtestsrv start in well under a second; generous, but bounded.
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
# A port handed out by the kernel and taken by another process before the program bound it: rare, retried.
START_ATTEMPTS = 5
POLL = 0.05
IN_USE = "address already in use"


class Ports:
    """Ports the kernel handed out on 127.0.0.1, held by this process's sockets until `release`: until then no
    other reservation gets them, and right after it the program told to use them binds them."""

    def __init__(self) -> None:
        self._held: list[socket.socket] = []

    def tcp(self) -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self._held.append(sock)
        return sock.getsockname()[1]

    def tcp_and_udp(self) -> int:
        """A port free for both TCP and UDP, as HTTPS and QUIC (or DNS) share one."""
        tcp, udp = bind_tcp_and_udp()
        self._held += [tcp, udp]
        return tcp.getsockname()[1]

    def release(self) -> None:
        for sock in self._held:
            sock.close()
        self._held.clear()


def closed_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on (handed out by the kernel, then closed)."""
    ports = Ports()
    port = ports.tcp()
    ports.release()
    return port


class Program:
    """A child process whose output (Go's log, on stdout) goes to a file in the test's directory."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None):
        self.args = args
        self.log = log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def ended(self) -> bool:
        return self.popen.poll() is not None

    def port_taken(self) -> bool:
        return IN_USE in self.output()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(STOP_TIMEOUT)


def start(name: str, launch: Callable[[int], Program], ready: Callable[[Program], bool]) -> Program:
    """Starts a program with `launch(attempt)` until `ready(program)` is true within START_TIMEOUT, trying fresh
    ports (a new `launch`) when it reports a port taken; fails on any other end or after START_ATTEMPTS."""
    for attempt in range(START_ATTEMPTS):
        program = launch(attempt)
        deadline = time.monotonic() + START_TIMEOUT
        while not program.ended() and not program.port_taken() and time.monotonic() < deadline:
            if ready(program):
                return program
            time.sleep(POLL)
        program.stop()
        if not program.port_taken():
            pytest.fail(f"{name} ({' '.join(program.args)}) not ready within {START_TIMEOUT}s:\n{program.output()}")
    pytest.fail(f"{name} found its ports taken {START_ATTEMPTS} times")


class ChallTestSrv:
    """pebble-challtestsrv as a DNS server only: every A query is answered 127.0.0.1, AAAA queries get nothing,
    and its challenge servers are off (the proxy answers the challenges)."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.dns_port = 0
        self.management_port = 0
        self.program = start("pebble-challtestsrv", self._launch, self._answers)

    @property
    def dns_address(self) -> str:
        return f"127.0.0.1:{self.dns_port}"

    def _launch(self, attempt: int) -> Program:
        ports = Ports()
        self.dns_port, self.management_port = ports.tcp_and_udp(), ports.tcp()
        ports.release()
        args = [
            "pebble-challtestsrv",
            "-defaultIPv4", "127.0.0.1",
            "-defaultIPv6", "",
            "-dns01", self.dns_address,
            "-http01", "",
            "-https01", "",
            "-tlsalpn01", "",
            "-management", f"127.0.0.1:{self.management_port}",
        ]  # fmt: skip
        return Program(args, self.workdir / f"challtestsrv-{attempt}.log")

    def _answers(self, program: Program) -> bool:
        """Whether a record set through this instance's management port comes back from its DNS port, which
        proves both ports are this process's."""
        probe, address = "probe.challtestsrv.test", f"127.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}.7"
        body = json.dumps({"host": probe, "addresses": [address]}).encode()
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{self.management_port}/add-a", data=body, timeout=1).close()
            reply = DNSRecord.question(probe, "A").send("127.0.0.1", self.dns_port, timeout=1)
        except OSError:
            return False
        return any(str(rr.rdata) == address for rr in DNSRecord.parse(reply).rr if rr.rtype == QTYPE.A)

    def stop(self) -> None:
        self.program.stop()


@dataclass
class Eab:
    """An External Account Binding key: its id and the HMAC key, base64url without padding (as pebble and the
    proxy's `eab.hmac_key` take it)."""

    kid: str
    hmac_key: str

    @staticmethod
    def new(kid: str = "kid-1") -> Eab:
        return Eab(kid, base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode())


class Pebble:
    """pebble validating challenges at 127.0.0.1 on `http_port` (http-01) and `tls_port` (tls-alpn-01), resolving
    names through `dns_address` (challtestsrv), issuing certificates valid for `validity` seconds (pebble's own
    default, five years, when None); with `eab`, accounts must be bound to that key."""

    def __init__(
        self,
        workdir: Path,
        dns_address: str,
        http_port: int,
        tls_port: int,
        validity: int | None = None,
        eab: Eab | None = None,
    ):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        self.ca_file = workdir / "pebble-listener-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        listener = ca.issue_cert("127.0.0.1", "localhost")
        self.cert_file, self.key_file = workdir / "pebble-listener.crt", workdir / "pebble-listener.key"
        self.cert_file.write_bytes(b"".join(pem.bytes() for pem in listener.cert_chain_pems))
        listener.private_key_pem.write_to_path(str(self.key_file))
        self._context = ssl.create_default_context(cafile=str(self.ca_file))
        self.dns_address, self.http_port, self.tls_port = dns_address, http_port, tls_port
        self.validity, self.eab = validity, eab
        self.listen_port = self.management_port = 0
        self.program = start("pebble", self._launch, self._answers)

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.listen_port}/dir"

    def _config(self) -> dict:
        config = {
            "listenAddress": f"127.0.0.1:{self.listen_port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(self.cert_file),
            "privateKey": str(self.key_file),
            "httpPort": self.http_port,
            "tlsPort": self.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": self.eab is not None,
        }
        if self.eab is not None:
            config["externalAccountMACKeys"] = {self.eab.kid: self.eab.hmac_key}
        if self.validity is not None:
            config["certificateValidityPeriod"] = self.validity
        return {"pebble": config}

    def _launch(self, attempt: int) -> Program:
        ports = Ports()
        self.listen_port, self.management_port = ports.tcp(), ports.tcp()
        config = self.workdir / "pebble-config.json"
        config.write_text(json.dumps(self._config(), indent=1))
        ports.release()
        return Program(
            ["pebble", "-config", str(config), "-dnsserver", self.dns_address],
            self.workdir / f"pebble-{attempt}.log",
            # Validate at once (no random sleep before each validation); never reject a good nonce.
            {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"},
        )

    def _get(self, url: str) -> bytes:
        with urllib.request.urlopen(url, context=self._context, timeout=5) as answer:
            return answer.read()

    def _answers(self, program: Program) -> bool:
        try:
            directory = json.loads(self._get(self.directory_url))
            self.root_pem()  # the management listener is up too
        except OSError:
            return False
        return "newAccount" in directory

    def root_pem(self) -> str:
        """The root that signs this instance's intermediate (pebble makes new ones at every start), from its
        management listener; the only certificate clients trust, so a verified handshake also proves the proxy
        sent the intermediate along."""
        return self._get(f"https://127.0.0.1:{self.management_port}/roots/0").decode()

    def intermediate_pem(self) -> str:
        return self._get(f"https://127.0.0.1:{self.management_port}/intermediates/0").decode()

    def write_root(self, path: Path) -> Path:
        path.write_text(self.root_pem())
        return path

    def log(self) -> str:
        return self.program.output()

    def stop(self) -> None:
        self.program.stop()
