"""WebSocket over HTTP/2 in a real browser (Debian's Chromium driven by Playwright): a page loaded over HTTPS
(HTTP/2) opens a WebSocket to the same origin. The proxy advertises SETTINGS_ENABLE_CONNECT_PROTOCOL, so
Chromium sends the handshake as an extended CONNECT on the page's HTTP/2 connection (RFC 8441); the proxy
carries it to the demo backend's WebSocket echo as an HTTP/1.1 upgrade, and the message comes back."""

from __future__ import annotations

from pathlib import Path

import pytest

from quic_proxy_testing import ProxyLauncher, RunningProxy, tls_server

# The empty icon keeps the browser from asking for /favicon.ico, which this site has not got.
PAGE = """<!doctype html><html><head><title>websocket</title><link rel="icon" href="data:,"></head><body>
<script>
const socket = new WebSocket(`wss://${location.host}/ws/chat`);
socket.onopen = () => socket.send("hello from the browser");
socket.onmessage = (event) => { document.body.dataset.echo = event.data; socket.close(1000); };
socket.onerror = () => { document.body.dataset.echo = "error"; };
</script></body></html>"""


@pytest.fixture
def echo_proxy(tmp_path: Path, cert_pair: tuple[Path, Path], proxy_launcher: ProxyLauncher, demo_backend) -> RunningProxy:
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_text(PAGE)
    backend = demo_backend("echo")
    config = {
        "server": tls_server(cert_pair),
        "upstreams": {"echo": {"backends": [{"name": "echo", "url": backend.url}]}},
        "routes": [
            {"path": "/ws/*", "upstream": "echo"},
            {"path": "/page/*", "strip_prefix": "/page", "static": {"root": str(root)}},
        ],
        "telemetry": {"metrics": {"address": "127.0.0.1:0"}, "logging": {"level": "info", "format": "json"}},
    }
    return proxy_launcher.start(config)


def test_a_browser_websocket_over_http2_is_echoed(echo_proxy: RunningProxy, browser):
    page = browser(ignore_https_errors=True)
    page.goto(f"https://{echo_proxy.https_address}/page/", wait_until="load")
    page.wait_for_function("document.body.dataset.echo !== undefined")
    assert page.evaluate("document.body.dataset.echo") == "hello from the browser"
    # The handshake crossed the page's HTTP/2 connection as an extended CONNECT, answered 200.
    handshake = echo_proxy.access_log("/ws/chat")
    assert (handshake["protocol"], handshake["method"], handshake["status"]) == ("h2", "CONNECT", 200), handshake
