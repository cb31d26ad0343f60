"""Several file certificates (`server.tls.certificates`), chosen by the name the client sends (SNI): each name
gets its own, and a name none of them has, or no name at all, gets the first. Over TCP and over QUIC alike;
a reload (SIGHUP) or `--watch` serves a file replaced in place. No ACME involved.
"""

from __future__ import annotations

import pytest
import trustme
from cryptography import x509

from clients import curl_get, h3_get, tls_certificate
from conftest import NAMES, Proxy, not_after, proxy_config
from quic_proxy_testing import Process, wait_until, write_config

# A reload reads the files at once; --watch looks at them every second or so.
RELOAD_TIMEOUT = 20


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


@pytest.mark.parametrize("how", ["sighup", "watch"])
def test_a_certificate_file_replaced_in_place_is_served_after_a_reload(
    origin, proxy_launcher, proxy_bin, file_certs, tmp_path, how: str
):
    """Proves that when the second listed certificate's files are replaced (key, then certificate, each renamed
    into place as tools that renew certificates do), SIGHUP or --watch makes new handshakes get the new one over
    TCP and QUIC, while the first name keeps its own."""
    _, certs = file_certs
    tls = {"certificates": [{"cert_file": str(c.cert_file), "key_file": str(c.key_file)} for c in certs.values()]}
    config = proxy_config(origin, tls)
    if how == "sighup":
        proxy = proxy_launcher.start(config, cls=Proxy)
    else:
        path = tmp_path / "watched.yaml"
        write_config(path, config)
        process = Process("quic-proxy-watch", [str(proxy_bin), "--config", str(path), "--watch"], cwd=tmp_path)
        proxy = Proxy(process, path, config)
    try:
        if how == "watch":
            proxy.wait_started()
        first, second = NAMES
        replaced = certs[second]
        issued = trustme.CA().issue_cert(second)
        fresh = x509.load_pem_x509_certificate(issued.cert_chain_pems[0].bytes())
        chain = b"".join(pem.bytes() for pem in issued.cert_chain_pems)
        for target, pem in ((replaced.key_file, issued.private_key_pem.bytes()), (replaced.cert_file, chain)):
            staged = target.with_name(target.name + ".next")
            staged.write_bytes(pem)
            staged.replace(target)
        if how == "sighup":
            proxy.sighup()
        wait_until(
            lambda: tls_certificate(proxy.https_port, second) == fresh,
            f"{second} served its replaced certificate over TCP",
            RELOAD_TIMEOUT,
        )
        assert h3_get(proxy.quic_port, second).certificate == fresh
        assert tls_certificate(proxy.https_port, first) == certs[first].certificate
        assert proxy.expiry(second, "file") == not_after(fresh)
    finally:
        if how == "watch":
            problems = proxy.shutdown()
            assert not problems, problems
