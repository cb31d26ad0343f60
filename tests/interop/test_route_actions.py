"""Route actions as curl's own HTTP/3 stack sees them: a redirect and a direct answer rendered from their
placeholders, static files with validators and ranges, compression negotiated and decoded by libcurl itself
(zstd, brotli, gzip), and a rate limit's 429 with its RateLimit fields."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from curl_cffi import CurlHttpVersion, CurlOpt, requests
from curl_cffi.const import CurlIpResolve

from quic_proxy_testing import DemoBackend, ProxyLauncher, RunningProxy, tls_server

HTTP_3 = 30
TIMEOUT = 30
IPV4 = {CurlOpt.IPRESOLVE: CurlIpResolve.V4}

STYLES = "".join(f".item-{n} {{ color: #333; margin: 0 auto; padding: {n % 7}px; }}\n" for n in range(300))


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text("<!doctype html><title>site</title>")
    (root / "app.css").write_text(STYLES)
    (root / "data.bin").write_bytes(bytes(range(256)) * 20)
    return root


@pytest.fixture
def proxy(site: Path, backends: list[DemoBackend], cert_pair: tuple[Path, Path], proxy_launcher: ProxyLauncher) -> RunningProxy:
    config = {
        "server": tls_server(cert_pair),
        "upstreams": {"api": {"backends": [{"name": backends[0].name, "url": backends[0].url}]}},
        "routes": [
            {"path": "/old/*", "strip_prefix": "/old", "redirect": {"to": "{scheme}://{host}/new{path}?{query}", "status": 308}},
            {"path": "/maint", "respond": {"status": 503, "body": "down ({request_id})"}},
            {"path": "/static/*", "strip_prefix": "/static", "static": {"root": str(site)}, "compress": True},
            {"path": "/login", "upstream": "api", "rate_limit": {"requests_per_second": 0.1, "burst": 1, "key": "route"}},
        ],
        "telemetry": {"metrics": {"address": "127.0.0.1:0"}, "logging": {"level": "info", "format": "json"}},
    }
    return proxy_launcher.start(config)


def h3(proxy: RunningProxy, path: str, headers: dict | None = None, accept_encoding: str | None = None) -> requests.Response:
    options = dict(IPV4)
    if accept_encoding is not None:
        # libcurl offers these codings and decodes the answer itself.
        options[CurlOpt.ACCEPT_ENCODING] = accept_encoding.encode()
    return requests.get(
        proxy.url(path),
        headers=headers or {},
        http_version=CurlHttpVersion.V3ONLY,
        verify=False,
        timeout=TIMEOUT,
        allow_redirects=False,
        curl_options=options,
    )


def test_redirects_and_direct_answers(proxy: RunningProxy):
    moved = h3(proxy, "/old/a/b?x=1")
    assert moved.http_version == HTTP_3
    assert moved.status_code == 308
    assert moved.headers["location"] == "https://localhost/new/a/b?x=1"

    down = h3(proxy, "/maint")
    assert down.status_code == 503
    request_id = down.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert down.text == f"down ({request_id})"


@pytest.mark.parametrize("coding", ["zstd", "br", "gzip"])
def test_static_files_compressed_with_each_coding_and_decoded_by_curl(proxy: RunningProxy, coding: str):
    r = h3(proxy, "/static/app.css", accept_encoding=coding)
    assert r.status_code == 200, r.text
    assert r.headers["content-encoding"] == coding
    assert "accept-encoding" in r.headers["vary"].lower()
    assert r.text == STYLES


def test_static_validators_and_ranges(proxy: RunningProxy):
    whole = h3(proxy, "/static/data.bin")
    assert whole.status_code == 200
    assert len(whole.content) == 5120
    etag = whole.headers["etag"]
    assert h3(proxy, "/static/data.bin", headers={"if-none-match": etag}).status_code == 304
    part = h3(proxy, "/static/data.bin", headers={"range": "bytes=256-511"})
    assert part.status_code == 206
    assert part.headers["content-range"] == "bytes 256-511/5120"
    assert part.content == bytes(range(256))
    assert h3(proxy, "/static/%2e%2e/secret").status_code == 404
    home = h3(proxy, "/static/")
    assert "<title>site</title>" in home.text


def test_a_rate_limit_answers_429_with_its_fields(proxy: RunningProxy):
    first = h3(proxy, "/login")
    assert first.status_code == 200
    assert first.headers["ratelimit-policy"] == '"route";q=1;w=10'
    limited = h3(proxy, "/login")
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["retry-after"]) <= 10
    assert limited.headers["ratelimit"].startswith('"route";r=0;')
    assert proxy.metric("route_actions_total", route="* /login", action="rate_limit", result="limited") == 1
