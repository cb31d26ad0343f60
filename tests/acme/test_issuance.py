"""Automatic HTTPS end to end: the proxy orders a certificate per name from pebble, proves control of each name
over http-01 (on its plain listener) or tls-alpn-01 (on its TLS listener), serves each certificate to clients
that trust nothing but pebble's root, over TCP (curl) and QUIC (aioquic), keeps it across restarts, renews it
before it expires, and shares one storage directory between instances.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509

from clients import curl_get, dns_names, h3_get, tls_certificate
from conftest import (
    ISSUE_TIMEOUT,
    ISSUED,
    LOADED,
    NAMES,
    Proxy,
    Site,
    launch,
    not_after,
    on_any_ports,
    serial,
    timestamp,
)
from pebble import Eab
from quic_proxy_testing import wait_until

# pebble's shortest useful lifetime here: it issues certificates valid for this many seconds less one.
SHORT_VALIDITY = 30
RENEW_BEFORE = "20s"


def wait_issued(proxy: Proxy, names: list[str]) -> dict[str, dict]:
    """The "ACME certificate issued" log line of each name, waited for."""
    return {name: proxy.wait_logged(ISSUED, name) for name in names}


def served_over_tcp_and_quic(site: Site, name: str, proxy: Proxy | None = None) -> x509.Certificate:
    """The certificate `proxy` (default the site's) serves for `name`, fetched with curl over TCP and aioquic
    over QUIC, both verifying it against pebble's root alone (so the intermediate must come along) and both
    answered by the origin; the two must be the same certificate."""
    proxy = proxy or site.proxy
    over_tcp = curl_get(proxy.https_port, name, site.root)
    over_quic = h3_get(proxy.quic_port, name, site.root)
    assert over_tcp.status == 200 and over_quic.status == 200, (over_tcp.status, over_quic.status)
    assert over_tcp.certificate == over_quic.certificate, "TCP and QUIC serve different certificates"
    intermediate = x509.load_pem_x509_certificate(site.pebble.intermediate_pem().encode())
    for served in (over_tcp, over_quic):
        assert served.chain[1:] == [intermediate], [c.subject.rfc4514_string() for c in served.chain]
    return over_tcp.certificate


@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
def test_each_name_gets_its_own_certificate(acme_site, challenge: str):
    """Proves one order per name over the one challenge type configured, each name served its own certificate
    (SAN that name only) over TCP and QUIC, and the counters, expiry gauges, /api/state and storage agreeing."""
    site = acme_site(NAMES, [challenge])
    proxy = site.proxy
    issued = wait_issued(proxy, NAMES)

    served = {name: served_over_tcp_and_quic(site, name) for name in NAMES}
    state = proxy.state()
    for name, certificate in served.items():
        assert dns_names(certificate) == [name]
        assert serial(issued[name]["serial"]) == certificate.serial_number, issued[name]
        assert timestamp(issued[name]["not_after"]) == not_after(certificate), issued[name]
        assert proxy.expiry(name, "acme") == not_after(certificate)
        # The self-signed fallback may still be listed (it serves unknown names): the ACME one is looked for.
        listed = [entry for entry in state["certificates"] if name in entry["names"] and entry["source"] == "acme"]
        assert [(entry["names"], serial(entry["serial"]), entry["not_after"]) for entry in listed] == [
            ([name], certificate.serial_number, not_after(certificate))
        ], state["certificates"]
        acme_entry = {entry["name"]: entry for entry in state["acme"]["names"]}[name]
        assert acme_entry["state"] == "valid" and acme_entry["last_error"] is None, acme_entry
        assert acme_entry["not_after"] == not_after(certificate), acme_entry

        storage = Path(site.acme()["storage"])
        stored = x509.load_pem_x509_certificates((storage / "certificates" / f"{name}.crt").read_bytes())
        assert stored[0] == certificate
        assert stat.S_IMODE((storage / "certificates" / f"{name}.key").stat().st_mode) == 0o600
    assert state["acme"]["directory"] == site.pebble.directory_url
    assert proxy.orders("issued") == len(NAMES)
    assert proxy.orders("failed") == 0
    # pebble 2.4 logs this for http-01 validations only: tls-alpn-01 must have been used when it is the only one.
    assert ("Attempting to validate w/ HTTP" in site.pebble.log()) == (challenge == "http-01"), site.pebble.log()


def test_a_restart_loads_the_stored_certificate_without_ordering(acme_site, proxy_launcher):
    """Proves a second process on the same storage serves the certificate the first one got, orders nothing,
    and says it loaded it from storage."""
    site = acme_site(["a.test"], ["http-01"])
    site.proxy.wait_logged(ISSUED, "a.test")
    first = served_over_tcp_and_quic(site, "a.test")
    problems = site.proxy.shutdown()
    assert not problems, problems

    again = launch(proxy_launcher, on_any_ports(site.proxy.config))
    assert again is not None
    loaded = again.wait_logged(LOADED, "a.test")
    assert timestamp(loaded["not_after"]) == not_after(first), loaded
    assert served_over_tcp_and_quic(site, "a.test", again).serial_number == first.serial_number
    assert again.orders("issued") == 0 and again.orders("failed") == 0
    assert not again.logged(ISSUED, "a.test")


def test_a_certificate_is_renewed_before_it_expires_without_refusing_a_connection(acme_site):
    """Proves a certificate with less than renew_before left is replaced by a new one while handshakes go on,
    each of them verified, none refused."""
    site = acme_site(["a.test"], ["tls-alpn-01"], validity=SHORT_VALIDITY, acme={"renew_before": RENEW_BEFORE})
    proxy = site.proxy
    first = serial(proxy.wait_logged(ISSUED, "a.test")["serial"])
    handshakes = 0

    def renewed() -> bool:
        nonlocal handshakes
        handshakes += 1
        return tls_certificate(proxy.https_port, "a.test", site.root).serial_number != first

    # Due 9 s after issuance (29 s of validity, renewed with 20 s left); the first one expires after 29 s.
    wait_until(renewed, lambda: f"a new certificate served after {handshakes} handshakes", SHORT_VALIDITY)
    renewal = served_over_tcp_and_quic(site, "a.test")
    assert renewal.serial_number != first
    proxy.process.wait_for(
        lambda e: e.get("message") == ISSUED and serial(e.get("serial", "0")) == renewal.serial_number,
        f"{ISSUED!r} for the renewal",
    )
    assert proxy.orders("issued") >= 2 and proxy.orders("failed") == 0
    assert proxy.expiry("a.test", "acme") == not_after(renewal)


def test_instances_sharing_storage_order_each_name_once(acme_site, proxy_launcher):
    """Proves two instances on one storage directory order each name once between them, and the second serves
    the certificates the first got (pebble validates at the first one's ports only)."""
    site = acme_site(NAMES, ["http-01"])
    first = site.proxy
    wait_until(
        lambda: {entry["state"] for entry in first.acme_names().values()} <= {"ordering", "valid"},
        lambda: f"instance 1 ordering every name: {first.acme_names()}",
        ISSUE_TIMEOUT,
    )
    second = launch(proxy_launcher, on_any_ports(first.config))
    assert second is not None
    issued = wait_issued(first, NAMES)

    for name in NAMES:
        expected = serial(issued[name]["serial"])
        # Unverified while it may still serve its self-signed fallback; verified once it serves the right one.
        wait_until(
            lambda name=name, expected=expected: tls_certificate(second.https_port, name).serial_number == expected,
            f"instance 2 serving the certificate instance 1 got for {name}",
            ISSUE_TIMEOUT,
        )
        assert served_over_tcp_and_quic(site, name, second).serial_number == expected
    assert first.orders("issued") + second.orders("issued") == len(NAMES)
    assert first.orders("failed") + second.orders("failed") == 0


def test_external_account_binding_with_the_right_key_issues(acme_site):
    """Proves the proxy binds its account to the configured EAB key when the CA requires one."""
    key = Eab.new()
    site = acme_site(["a.test"], ["http-01"], eab=key, acme={"eab": {"kid": key.kid, "hmac_key": key.hmac_key}})
    site.proxy.wait_logged(ISSUED, "a.test")
    assert dns_names(served_over_tcp_and_quic(site, "a.test")) == ["a.test"]
