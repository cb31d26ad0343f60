"""A static site through the proxy in a real browser (Debian's Chromium driven by Playwright): the index,
its style sheet and script load over HTTPS (HTTP/2) and over plain HTTP/1.1, compressed on the fly with a
coding Chromium asked for, and the page renders with both applied. Then the same resources revalidate
(304) instead of downloading again."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from quic_proxy_testing import ProxyLauncher, RunningProxy, tls_server

STYLES = ".banner { color: rgb(12, 34, 56); }\n" + "".join(
    f".item-{n} {{ margin: {n % 9}px; padding: {n % 5}px; }}\n" for n in range(400)
)
SCRIPT = "document.body.dataset.loaded = 'yes';\n" + "".join(f"// line {n} of a script long enough to compress\n" for n in range(200))
# The empty icon keeps the browser from asking for /favicon.ico, which this site has not got.
INDEX = """<!doctype html><html><head><title>static site</title><link rel="icon" href="data:,">
<link rel="stylesheet" href="app.css">
<script src="app.js" defer></script></head><body><p class="banner">hello</p></body></html>"""


@pytest.fixture
def site_proxy(tmp_path: Path, cert_pair: tuple[Path, Path], proxy_launcher: ProxyLauncher) -> RunningProxy:
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_text(INDEX)
    (root / "app.css").write_text(STYLES)
    (root / "app.js").write_text(SCRIPT)
    config = {
        "server": tls_server(cert_pair),
        # no-cache makes every reload revalidate. Without it, Chromium gives a response with Last-Modified and
        # no Cache-Control a tenth of the file's age as freshness: files written a moment ago may be fresh for
        # a few hundred milliseconds, and a quick reload then takes them from the cache without asking.
        "routes": [
            {
                "path": "/site/*",
                "strip_prefix": "/site",
                "static": {"root": str(root)},
                "compress": True,
                "response_headers": {"set": {"cache-control": "no-cache"}},
            }
        ],
        "telemetry": {"metrics": {"address": "127.0.0.1:0"}, "logging": {"level": "info", "format": "json"}},
    }
    return proxy_launcher.start(config)


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_the_site_renders_with_compressed_resources(site_proxy: RunningProxy, browser, scheme: str):
    address = site_proxy.https_address if scheme == "https" else site_proxy.http_address
    page = browser(ignore_https_errors=True)
    seen: dict[str, dict] = {}
    page.on("response", lambda r: seen.__setitem__(r.url.rsplit("/", 1)[-1], {"status": r.status, "headers": r.headers}))
    page.goto(f"{scheme}://{address}/site/", wait_until="load")
    page.wait_for_function("document.body.dataset.loaded === 'yes'")
    assert page.title() == "static site"
    color = page.evaluate("getComputedStyle(document.querySelector('.banner')).color")
    assert color == "rgb(12, 34, 56)"
    for name in ("app.css", "app.js"):
        response = seen[name]
        assert response["status"] == 200, (name, response)
        # Chromium offers gzip, deflate, br and zstd; the proxy prefers zstd.
        assert response["headers"].get("content-encoding") in {"zstd", "br", "gzip"}, (name, response)
        assert "accept-encoding" in response["headers"].get("vary", "").lower()

    # A reload revalidates what the browser cached: the validators answer 304.
    seen.clear()
    page.reload(wait_until="load")
    page.wait_for_function("document.body.dataset.loaded === 'yes'")
    statuses = {name: seen.get(name, {}).get("status") for name in ("app.css", "app.js")}
    assert statuses == {"app.css": 304, "app.js": 304}, statuses
    assert site_proxy.metric("route_actions_total", action="static", result="served") >= 3
    assert site_proxy.metric("route_actions_total", action="compress", result="compressed") >= 2

    # The console's route table shows the route, its target and what its actions did, revalidations included.
    page.goto(f"http://{site_proxy.admin_address}/")
    route = page.locator('#routes tr[data-route="* /site/*"]')
    expect(route.locator(".col-target")).to_have_text(re.compile(r"^static /.+/www$"))
    expect(route.locator(".col-actions")).to_have_text("strip_prefix, response_headers, compress")
    # The browser decides whether the page itself revalidates; the style sheet and the script did (above).
    served = int(site_proxy.metric("route_actions_total", action="static", result="served"))
    revalidated = int(site_proxy.metric("route_actions_total", action="static", result="not_modified"))
    assert revalidated >= 2
    expect(route.locator(".col-counts")).to_contain_text(f"static: not_modified {revalidated}, served {served}")
    expect(route.locator(".col-counts")).to_contain_text(re.compile(r"compress: compressed \d+"))
