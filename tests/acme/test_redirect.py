"""`server.redirect_to_https`: every plain-HTTP request is sent to HTTPS with a 308 that keeps the host, path
and query, except ACME's http-01 challenge paths, which must still reach the proxy's challenge answers.
"""

from __future__ import annotations

from clients import curl_get
from conftest import ISSUED
from quic_proxy_testing import http_request


def test_plain_requests_are_redirected_but_http01_still_validates(acme_site):
    """Proves a certificate is issued over http-01 with the redirect on, a plain GET gets 308 to the HTTPS
    listener's port with path and query kept, and a challenge path is not redirected."""
    site = acme_site(["a.test"], ["http-01"], redirect_to_https=True)
    proxy = site.proxy
    proxy.wait_logged(ISSUED, "a.test")
    assert curl_get(proxy.https_port, "a.test", site.root).status == 200

    answer = http_request("GET", proxy.http_address, "/x?y=1", {"Host": "a.test"}, timeout=proxy.request_timeout)
    assert answer.status == 308, (answer.status, answer.text)
    assert answer.headers["location"] == f"https://a.test:{proxy.https_port}/x?y=1"

    challenge = http_request(
        "GET", proxy.http_address, "/.well-known/acme-challenge/no-such-token", {"Host": "a.test"},
        timeout=proxy.request_timeout,
    )  # fmt: skip
    assert challenge.status != 308, (challenge.status, challenge.headers.get("location"))
