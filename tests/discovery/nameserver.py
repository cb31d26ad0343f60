"""An authoritative DNS server on 127.0.0.1 whose answers a test sets while the proxy runs: addresses (A and
AAAA), NXDOMAIN, SERVFAIL, an empty answer, or silence (queries dropped, so the resolver times out). It serves
UDP and TCP on one port, as a resolver may use either, and counts the queries it receives per name, so a test
can tell when the proxy asked again.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
import time

import pytest
from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord

from quic_proxy_testing.ports import bind_tcp_and_udp

TTL = 1


def fqdn(name: str) -> str:
    name = name.lower()
    return name if name.endswith(".") else name + "."


class Nameserver:
    """Answers for names set with `answer`, `refuse` and `drop`; any other name is NXDOMAIN."""

    def __init__(self):
        self._cond = threading.Condition()
        # fqdn -> list of addresses, or one of "nxdomain", "servfail", "drop"
        self._zone: dict[str, list[str] | str] = {}
        self._queries: list[tuple[str, str]] = []
        self._connections: list[socket.socket] = []
        self.udp, self.tcp = self._bind()
        self.port = self.udp.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        threading.Thread(target=self._serve_udp, name="dns-udp", daemon=True).start()
        threading.Thread(target=self._serve_tcp, name="dns-tcp", daemon=True).start()

    @staticmethod
    def _bind() -> tuple[socket.socket, socket.socket]:
        tcp, udp = bind_tcp_and_udp()
        tcp.listen(16)
        return udp, tcp

    def answer(self, name: str, *addresses: str) -> None:
        """`name` resolves to `addresses` (IPv4 ones as A records, IPv6 ones as AAAA); none: an empty answer."""
        with self._cond:
            self._zone[fqdn(name)] = [str(ipaddress.ip_address(a)) for a in addresses]

    def refuse(self, name: str, rcode: str) -> None:
        """`name` is answered with `rcode`: "nxdomain" or "servfail"."""
        assert rcode in ("nxdomain", "servfail"), rcode
        with self._cond:
            self._zone[fqdn(name)] = rcode

    def drop(self, name: str) -> None:
        """Queries for `name` get no answer at all."""
        with self._cond:
            self._zone[fqdn(name)] = "drop"

    def queries(self, name: str, qtype: str | None = None) -> int:
        """How many queries for `name` (of `qtype`, when given) arrived so far."""
        name = fqdn(name)
        with self._cond:
            return sum(1 for n, t in self._queries if n == name and (qtype is None or t == qtype))

    def wait_queries(self, name: str, above: int, timeout: float, qtype: str | None = None) -> int:
        """Waits until more than `above` queries for `name` arrived; returns how many."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                count = sum(1 for n, t in self._queries if n == fqdn(name) and (qtype is None or t == qtype))
                if count > above:
                    return count
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"no query for {name} beyond the first {above} within {timeout}s")
                self._cond.wait(left)

    def _respond(self, data: bytes) -> bytes | None:
        try:
            query = DNSRecord.parse(data)
        except Exception:  # noqa: BLE001 - anything unparsable is simply not answered
            return None
        qname = fqdn(str(query.q.qname))
        qtype = QTYPE.get(query.q.qtype)
        with self._cond:
            self._queries.append((qname, qtype))
            self._cond.notify_all()
            entry = self._zone.get(qname, "nxdomain")
        if entry == "drop":
            return None
        reply = query.reply()
        if entry == "nxdomain":
            reply.header.rcode = RCODE.NXDOMAIN
        elif entry == "servfail":
            reply.header.rcode = RCODE.SERVFAIL
        else:
            for address in entry:
                version = ipaddress.ip_address(address).version
                if qtype == "A" and version == 4:
                    reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(address), ttl=TTL))
                elif qtype == "AAAA" and version == 6:
                    reply.add_answer(RR(query.q.qname, QTYPE.AAAA, rdata=AAAA(address), ttl=TTL))
        return reply.pack()

    def _serve_udp(self) -> None:
        while True:
            try:
                data, peer = self.udp.recvfrom(65535)
            except OSError:
                return
            answer = self._respond(data)
            if answer is not None:
                try:
                    self.udp.sendto(answer, peer)
                except OSError:
                    return

    def _serve_tcp(self) -> None:
        while True:
            try:
                connection, _ = self.tcp.accept()
            except OSError:
                return
            with self._cond:
                self._connections.append(connection)
            threading.Thread(target=self._serve_connection, args=(connection,), daemon=True).start()

    def _serve_connection(self, connection: socket.socket) -> None:
        with connection:
            while True:
                head = self._read(connection, 2)
                if head is None:
                    return
                message = self._read(connection, struct.unpack("!H", head)[0])
                if message is None:
                    return
                answer = self._respond(message)
                if answer is not None:
                    try:
                        connection.sendall(struct.pack("!H", len(answer)) + answer)
                    except OSError:
                        return

    @staticmethod
    def _read(connection: socket.socket, size: int) -> bytes | None:
        data = b""
        while len(data) < size:
            try:
                chunk = connection.recv(size - len(data))
            except OSError:
                return None
            if not chunk:
                return None
            data += chunk
        return data

    def close(self) -> None:
        with self._cond:
            connections, self._connections = self._connections, []
        for sock in (self.udp, self.tcp, *connections):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
