"""Several file certificates (`server.tls.certificates`), chosen by the name the client sends (SNI): each name
gets its own, and a name none of them has, or no name at all, gets the first. Over TCP and over QUIC alike;
no ACME involved.
"""

from __future__ import annotations

import pytest

from clients import curl_get, h3_get, tls_certificate
from conftest import NAMES, Proxy, not_after, proxy_config


@pytest.fixture
def sni_proxy(origin, proxy_launcher, file_certs):
    ca_file, certs = file_certs
    tls = {"certificates": [{"cert_file": str(c.cert_file), "key_file": str(c.key_file)} for c in certs.values()]}
    return proxy_launcher.start(proxy_config(origin, tls), cls=Proxy), ca_file, certs


def test_each_name_is_served_its_own_file_certificate(sni_proxy):
    """Proves SNI a.test gets a.test's certificate and b.test b.test's, verified for the name, over TCP and QUIC,
    with each one's expiry exported."""
    proxy, ca_file, certs = sni_proxy
    for name in NAMES:
        expected = certs[name].certificate
        assert tls_certificate(proxy.https_port, name, ca_file) == expected
        over_tcp, over_quic = curl_get(proxy.https_port, name, ca_file), h3_get(proxy.quic_port, name, ca_file)
        assert (over_tcp.status, over_quic.status) == (200, 200)
        assert over_tcp.certificate == over_quic.certificate == expected
        assert proxy.expiry(name, "file") == not_after(expected)


@pytest.mark.parametrize("server_name", ["unknown.test", None], ids=["unknown-name", "no-sni"])
def test_an_unknown_name_or_no_sni_gets_the_first_certificate(sni_proxy, server_name: str | None):
    """Proves a handshake naming no configured name, or none at all, is served the first certificate listed
    (compared as a whole: it cannot verify for that name) over TCP and QUIC."""
    proxy, _, certs = sni_proxy
    first = certs[NAMES[0]].certificate
    assert tls_certificate(proxy.https_port, server_name) == first
    over_quic = h3_get(proxy.quic_port, server_name)
    assert over_quic.certificate == first and over_quic.status == 200
