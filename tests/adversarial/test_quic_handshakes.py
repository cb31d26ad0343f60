"""QUIC handshakes as an attacker sends them: a burst of ClientHellos must not slip past Retry (address
validation), and half-open handshakes are no reason to keep SIGTERM waiting."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from h3raw import client_initials, long_header

RETRY_THRESHOLD = 128
BURST = 400
ANSWER_WITHIN = 8.0


@pytest.fixture
def retrying_proxy(raw_backend, proxy_factory):
    return proxy_factory(
        [raw_backend("raw")],
        {"quic": {"retry": "auto", "retry_threshold": RETRY_THRESHOLD, "idle_timeout": "10s"}},
    )


@pytest.fixture
def default_drain_proxy(raw_backend, proxy_factory):
    return proxy_factory([raw_backend("raw")], {"server": {"drain_timeout": None}})


class UdpPeer:
    """One UDP socket that sends datagrams and collects every answer in the background."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # The answers to a whole burst arrive at once; a default-sized buffer would drop some of them.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.received: list[bytes] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            with self._cond:
                self.received.append(data)
                self._cond.notify_all()

    def answered(self) -> dict[bytes, set[str]]:
        """Packet types received per destination connection ID (the client's source connection ID)."""
        with self._cond:
            datagrams = list(self.received)
        answers: dict[bytes, set[str]] = {}
        for datagram in datagrams:
            parsed = long_header(datagram)
            if parsed is not None:
                answers.setdefault(parsed[1], set()).add(parsed[0])
        return answers

    def wait(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            with self._cond:
                left = deadline - time.monotonic()
                if left <= 0:
                    return predicate()
                self._cond.wait(min(left, 0.2))
        return True

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(2)


def test_a_burst_of_client_hellos_gets_at_most_retry_threshold_unvalidated_handshakes(retrying_proxy):
    proxy = retrying_proxy
    initials = client_initials(proxy.quic, BURST)
    ours = {initial.source_cid for initial in initials}
    peer = UdpPeer()
    try:
        for initial in initials:
            peer.sock.sendto(initial.datagrams[0], proxy.quic)
        peer.wait(lambda: len(ours & set(peer.answered())) == BURST, ANSWER_WITHIN)
        answers = {cid: kinds for cid, kinds in peer.answered().items() if cid in ours}
    finally:
        peer.close()
    # A handshake accepted without validation answers with the server's Initial (and Handshake) packets.
    unvalidated = [cid for cid, kinds in answers.items() if kinds & {"initial", "handshake"}]
    retried = [cid for cid, kinds in answers.items() if "retry" in kinds]
    summary = (
        f"{BURST} ClientHellos from one socket: {len(answers)} answered, {len(unvalidated)} accepted without "
        f"address validation, {len(retried)} sent Retry (retry_threshold {RETRY_THRESHOLD})"
    )
    assert len(answers) > RETRY_THRESHOLD, "too few answers to judge: " + summary
    assert len(unvalidated) <= RETRY_THRESHOLD, summary
    assert proxy.metric("quic_retry_packets_sent_total") >= len(retried), summary
    # A real client still gets in (through a Retry, since the half-open handshakes are still pending).
    proxy.assert_serving()


def test_sigterm_with_half_open_handshakes_exits_promptly(default_drain_proxy):
    """Only requests are drained on SIGTERM: handshakes that will never complete must not hold the exit up
    until drain_timeout (the default, 30 s, here)."""
    proxy = default_drain_proxy
    assert proxy.config["server"].get("drain_timeout") is None
    initials = client_initials(proxy.quic, 20)
    peer = UdpPeer()
    try:
        for initial in initials:
            peer.sock.sendto(initial.datagrams[0], proxy.quic)
        ours = {initial.source_cid for initial in initials}
        assert peer.wait(lambda: len(ours & set(peer.answered())) == len(ours), ANSWER_WITHIN), (
            "the proxy did not answer every ClientHello"
        )
        started = time.monotonic()
        proxy.sigterm()
        status = proxy.wait_exit(6.0)
        took = time.monotonic() - started
    finally:
        peer.close()
        # A proxy still draining would hold teardown up for the rest of its 30 s; the verdict is in.
        if proxy.running():
            proxy.process.popen.kill()
    assert status == 0, f"SIGTERM with 20 half-open handshakes: exit status {status} after {took:.1f}s"
    assert not proxy.panics(), proxy.panics()
