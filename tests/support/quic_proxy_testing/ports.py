"""Ports for servers a test runs itself on 127.0.0.1."""

from __future__ import annotations

import socket

import pytest

# The kernel picks a TCP port; the same UDP port is usually free too, and a few tries always find one that is.
ATTEMPTS = 50


def bind_tcp_and_udp() -> tuple[socket.socket, socket.socket]:
    """A TCP and a UDP socket bound to one port the kernel chose on 127.0.0.1 (HTTPS and QUIC, or DNS, share a
    port number); the TCP socket is not listening yet."""
    for _ in range(ATTEMPTS):
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.bind(("127.0.0.1", 0))
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.bind(tcp.getsockname())
        except OSError:
            tcp.close()
            udp.close()
            continue
        return tcp, udp
    pytest.fail(f"no port free for both TCP and UDP on 127.0.0.1 in {ATTEMPTS} attempts")
