"""When certificates cannot be had, the proxy keeps serving: plain HTTP as before, and HTTPS and QUIC with its
self-signed fallback certificate for each name, while it counts and reports the failed orders and tries again
later. Three ways to fail: a CA that refuses the account (External Account Binding with the wrong key), a
directory nobody answers at, and one that takes the connection and never answers.
"""

from __future__ import annotations

import socket
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from clients import curl_get, dns_names, h3_get, tls_certificate
from conftest import FAILED, ISSUED, NAMES, Proxy, proxy_config
from pebble import Eab, closed_port
from quic_proxy_testing import http_request


def assert_serving_without_certificates(proxy: Proxy, workdir: Path) -> None:
    """Every name's order failed, is counted and listed with its error, and the proxy serves each name over
    plain HTTP, HTTPS and QUIC, the latter two with a self-signed certificate for that name."""
    for name in NAMES:
        failed = proxy.wait_logged(FAILED, name)
        assert failed["error"] and failed["retry_in_seconds"] > 0, failed
    assert proxy.orders("failed") >= len(NAMES) and proxy.orders("issued") == 0
    for entry in proxy.acme_names().values():
        assert entry["state"] != "valid" and entry["last_error"], entry

    for name in NAMES:
        plain = http_request("GET", proxy.http_address, "/", {"Host": name}, timeout=proxy.request_timeout)
        assert plain.status == 200 and plain.headers["x-backend"] == "origin", (plain.status, plain.text)

        fallback = tls_certificate(proxy.https_port, name)
        assert fallback.issuer == fallback.subject and name in dns_names(fallback), fallback
        # Trusting exactly that certificate, both clients verify it for the name and get an answer.
        trusted = workdir / f"fallback-{name}.pem"
        trusted.write_bytes(fallback.public_bytes(Encoding.PEM))
        over_tcp, over_quic = curl_get(proxy.https_port, name, trusted), h3_get(proxy.quic_port, name, trusted)
        assert (over_tcp.status, over_quic.status) == (200, 200)
        assert over_tcp.certificate == over_quic.certificate == fallback
        # Nobody trusts the fallback, so its expiry warns of nothing: only real certificates have a series.
        assert proxy.expiry(name, "self_signed") is None and proxy.expiry(name, "acme") is None
    assert not proxy.process.logged(lambda e: e.get("message") == ISSUED)


def test_a_ca_refusing_the_account_leaves_the_proxy_serving(acme_site, tmp_path):
    """Proves a CA that rejects the account (EAB required, the proxy's HMAC key wrong) fails every order
    without taking anything else down."""
    required, wrong = Eab.new(), Eab.new()
    site = acme_site(NAMES, ["http-01"], eab=required, acme={"eab": {"kid": required.kid, "hmac_key": wrong.hmac_key}})
    assert_serving_without_certificates(site.proxy, tmp_path)


def test_an_unreachable_directory_leaves_the_proxy_serving(origin, proxy_launcher, tmp_path):
    """Proves a directory URL where nothing listens fails every order without taking anything else down."""
    acme = {
        "directory": f"https://127.0.0.1:{closed_port()}/dir",
        "domains": NAMES,
        "storage": str(tmp_path / "storage"),
        "challenges": ["http-01"],
    }
    proxy = proxy_launcher.start(proxy_config(origin, {"acme": acme}), cls=Proxy)
    assert_serving_without_certificates(proxy, tmp_path)


def test_a_ca_that_never_answers_fails_the_order_at_request_timeout(origin, proxy_launcher, tmp_path):
    """Proves a directory that takes the connection and then says nothing (not even its TLS handshake) fails
    every order once `request_timeout` has passed, without taking anything else down."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        # Listening but never accepting: the kernel completes each connection, and nobody ever answers it.
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        acme = {
            "directory": f"https://127.0.0.1:{silent.getsockname()[1]}/dir",
            "domains": NAMES,
            "storage": str(tmp_path / "storage"),
            "challenges": ["http-01"],
            "request_timeout": "1s",
        }
        proxy = proxy_launcher.start(proxy_config(origin, {"acme": acme}), cls=Proxy)
        assert_serving_without_certificates(proxy, tmp_path)
        for name in NAMES:
            assert "did not answer in time" in proxy.wait_logged(FAILED, name)["error"]
