"""The admin console in a real browser: Debian's Chromium, driven by Playwright, against the real proxy binary
and demo backends. A JavaScript error or a console error on the page fails the test, except for the refused
requests a test provokes on purpose (the browser reports those as console errors)."""

from __future__ import annotations

import json
import math
import re
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path

from conftest import (
    RATE_TIMEOUT,
    ConsoleProxy,
    Traffic,
    save_screenshot,
    to_yaml,
    wait_until,
)
from playwright.sync_api import Locator, Page, Route, expect

EXPECTED_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
DESKTOP = {"viewport": {"width": 1280, "height": 900}}
# What the console shows for a backend without traffic in the proxy's rate window.
NO_TRAFFIC = re.compile(r"^(0\.0|—)$")
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True, "device_scale_factor": 2}


def row(page: Page, backend: str, upstream: str = "default") -> Locator:
    return page.locator(f'#upstreams tr[data-upstream="{upstream}"][data-backend="{backend}"]')


def cell(page: Page, backend: str, column: str) -> Locator:
    return row(page, backend).locator(f".col-{column}")


def latest_answer(page: Page) -> Locator:
    return page.locator("#answers li").first


def enter_token(page: Page, token: str) -> None:
    """Answers the console's token prompt, which must be open."""
    dialog = page.get_by_role("dialog", name="Admin token required")
    expect(dialog).to_be_visible()
    field = dialog.get_by_role("textbox", name="Admin token")
    expect(field).to_have_attribute("type", "password")
    field.fill(token)
    dialog.get_by_role("button", name="Send").click()
    expect(dialog).to_be_hidden()


def open_console(page: Page, proxy: ConsoleProxy) -> None:
    """Loads the page and waits until it shows every backend of the proxy, healthy."""
    page.goto(proxy.console_url)
    expect(page.locator("#upstreams tr[data-backend]")).to_have_count(len(proxy.backends))
    for backend in proxy.backends:
        expect(row(page, backend.name)).to_have_attribute("data-state", "healthy")
        expect(row(page, backend.name).locator(".badge")).to_have_text("healthy")


def assert_token_kept_out(page: Page, token: str) -> None:
    """The token is in no storage, no cookie and nowhere in the document."""
    stored = page.evaluate("() => [localStorage.length, sessionStorage.length, document.cookie]")
    assert stored == [0, 0, ""], f"the page stored something: {stored}"
    assert page.context.cookies() == []
    assert token not in page.content()
    assert token not in page.locator("body").inner_text()
    assert page.locator("#token-input").input_value() == ""


def csp_directives(header: str) -> dict[str, list[str]]:
    directives = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            directives[words[0].lower()] = words[1:]
    return directives


def test_three_healthy_backends_and_a_failing_one_turns_unhealthy_live(proxy, browser, page_errors):
    page = browser()
    open_console(page, proxy)
    expect(page.locator('#upstreams article[data-upstream="default"] .pill')).to_have_text("3 of 3 healthy")
    expect(page.locator("#connection")).to_contain_text("Live")
    expect(page.locator("#ready")).to_have_text("Ready")

    # Anything that reloads the page loses this marker and shows up as a navigation of the main frame.
    page.evaluate("() => { window.consoleTestMarker = 'same document'; }")
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)

    failing, steady = proxy.backends[2], proxy.backends[:2]
    failing.fail_probes()
    expect(row(page, failing.name)).to_have_attribute("data-state", "unhealthy")
    expect(row(page, failing.name).locator(".badge")).to_have_text("unhealthy")
    expect(row(page, failing.name)).to_contain_text("503")
    expect(page.locator('#upstreams article[data-upstream="default"] .pill')).to_have_text("2 of 3 healthy")
    for backend in steady:
        expect(row(page, backend.name)).to_have_attribute("data-state", "healthy")
    went_down = page.locator('#events li[data-to="unhealthy"]').filter(has_text=f"default/{failing.name}")
    expect(went_down.first).to_contain_text("healthy -> unhealthy")

    failing.pass_probes()
    expect(row(page, failing.name)).to_have_attribute("data-state", "healthy")
    came_back = page.locator('#events li[data-to="healthy"]').filter(has_text=f"default/{failing.name}")
    expect(came_back.first).to_contain_text("unhealthy -> healthy")
    expect(page.locator('#upstreams article[data-upstream="default"] .pill')).to_have_text("3 of 3 healthy")

    assert page.evaluate("() => window.consoleTestMarker") == "same document"
    assert navigations == [], f"the page navigated: {navigations}"
    page_errors.check()


def test_drain_with_the_token_moves_traffic_away_and_undrain_brings_it_back(proxy, browser, page_errors):
    page = browser()
    open_console(page, proxy)
    names = {backend.name for backend in proxy.backends}
    drained = proxy.backends[1]

    with Traffic(proxy.http_address) as traffic:
        started = time.monotonic()
        wait_until(lambda: names <= set(traffic.backends_since(started)), "traffic reaching every backend")
        expect(cell(page, drained.name, "rate")).not_to_have_text(NO_TRAFFIC, timeout=RATE_TIMEOUT * 1000)

        row(page, drained.name).get_by_role("button", name=f"Drain {drained.name}").click()
        enter_token(page, proxy.token)
        expect(latest_answer(page)).to_contain_text(f"Drain default/{drained.name}: 200")
        acknowledged = time.monotonic()
        expect(row(page, drained.name)).to_have_attribute("data-state", "draining")
        expect(row(page, drained.name).get_by_role("button", name=f"Undrain {drained.name}")).to_have_text("Undrain")
        expect(page.locator("#events li").first).to_contain_text(drained.name)

        wait_until(lambda: len(traffic.since(acknowledged)) >= 30, "30 requests after the drain")
        after_drain = traffic.backends_since(acknowledged)
        assert drained.name not in after_drain, f"answered after the drain by {after_drain}"
        assert set(after_drain) <= names - {drained.name}, f"answered after the drain by {after_drain}"
        expect(cell(page, drained.name, "rate")).to_have_text("0.0", timeout=RATE_TIMEOUT * 1000)
        in_flight = cell(page, drained.name, "in-flight")
        expect(in_flight.locator("span").first).to_have_text("0")
        # Under it, the backend's connections: the drained backend keeps its pooled ones.
        expect(in_flight.locator("span.sub")).to_have_text(re.compile(r"^\d+ conns?$"))
        for other in names - {drained.name}:
            expect(cell(page, other, "rate")).not_to_have_text(NO_TRAFFIC)
        assert drained.name not in traffic.backends_since(acknowledged)

        # The token is held for the tab's life: undrain sends it without asking again.
        row(page, drained.name).get_by_role("button", name=f"Undrain {drained.name}").click()
        expect(latest_answer(page)).to_contain_text(f"Undrain default/{drained.name}: 200")
        expect(page.get_by_role("dialog", name="Admin token required")).to_be_hidden()
        undrained = time.monotonic()
        expect(row(page, drained.name)).to_have_attribute("data-state", "healthy")
        wait_until(lambda: drained.name in traffic.backends_since(undrained), "traffic back on the undrained backend")

    assert traffic.errors == []
    assert {reply.status for reply in traffic.replies} == {200}
    assert_token_kept_out(page, proxy.token)
    page_errors.check()


def test_a_wrong_token_shows_the_401_and_reload_adds_a_backend(proxy, backend_factory, browser, page_errors):
    page_errors.expect(r"status of 401 .*/api/reload")
    page_errors.expect(r"status of 400 .*/api/reload")
    page = browser()
    open_console(page, proxy)
    reload_button = page.get_by_role("button", name="Reload configuration")

    reload_button.click()
    enter_token(page, "wrong-" + secrets.token_hex(16))
    expect(latest_answer(page)).to_contain_text("Reload configuration: 401")
    expect(latest_answer(page)).to_have_class(re.compile(r"\banswer-error\b"))
    expect(page.get_by_role("button", name="Forget token")).to_be_hidden()

    fourth = backend_factory("backend4")
    proxy.backends.append(fourth)
    proxy.write_config()
    generation = proxy.state()["generation"]

    # The refused token was dropped, so the next action asks again.
    reload_button.click()
    enter_token(page, proxy.token)
    expect(latest_answer(page)).to_contain_text("Reload configuration: 200")
    expect(page.locator("#upstreams tr[data-backend]")).to_have_count(4)
    expect(row(page, fourth.name)).to_have_attribute("data-state", "healthy")
    expect(row(page, fourth.name)).to_contain_text(fourth.address)
    assert proxy.state()["generation"] > generation
    expect(page.locator("#generation")).to_have_text(f"generation {proxy.state()['generation']}")
    expect(page.locator("#config")).to_contain_text(fourth.address)
    expect(page.locator("#events li.kind-reload").first).to_be_visible()

    # A config the proxy refuses: the answer says why, and the running configuration stays.
    proxy.write_config(to_yaml(proxy.config()) + "\nbogus_key_for_the_console_test: 1\n")
    reload_button.click()
    expect(latest_answer(page)).to_contain_text("Reload configuration: 400")
    expect(latest_answer(page)).to_contain_text("bogus_key_for_the_console_test")
    expect(page.locator("#upstreams tr[data-backend]")).to_have_count(4)
    assert_token_kept_out(page, proxy.token)
    page_errors.check()


def test_the_configuration_is_shown_without_the_token_and_the_links_work(proxy, browser, page_errors):
    page = browser()
    open_console(page, proxy)
    config = page.locator("#config")
    for backend in proxy.backends:
        expect(config).to_contain_text(backend.address)
    expect(config).to_contain_text("admin")
    assert proxy.token not in config.inner_text()
    assert proxy.token not in page.content()

    served = proxy.admin("GET", "/api/config")
    assert served.status == 200
    assert served.headers.get("content-type", "").startswith(("text/yaml", "application/yaml")), served.headers
    assert proxy.token not in served.text
    assert proxy.backends[0].address in served.text

    for name, href in (("Prometheus metrics", "/metrics"), ("Grafana dashboard (JSON)", "/dashboard.json")):
        expect(page.get_by_role("link", name=name)).to_have_attribute("href", href)
    metrics = proxy.admin("GET", "/metrics")
    assert metrics.status == 200 and "# TYPE" in metrics.text
    dashboard = proxy.admin("GET", "/dashboard.json")
    assert dashboard.status == 200
    assert isinstance(dashboard.json().get("panels"), list) and dashboard.json()["panels"]

    # Chromium asks a plain-text page's server for /favicon.ico, which the admin listener does not have.
    page_errors.expect(r"status of 404 .*/favicon\.ico")
    page.get_by_role("link", name="Prometheus metrics").click()
    page.wait_for_url(f"{proxy.console_url}metrics")
    assert "# TYPE" in page.locator("body").inner_text()
    page_errors.check()


def test_security_headers_and_the_origin_check(proxy):
    index = proxy.admin("GET", "/")
    assert index.status == 200
    assert index.headers.get("content-type", "").startswith("text/html")
    assert csp_directives(index.headers.get("content-security-policy", "")) == csp_directives(EXPECTED_CSP), (
        index.headers.get("content-security-policy")
    )
    assert index.headers.get("x-content-type-options") == "nosniff"
    assert index.headers.get("referrer-policy") == "no-referrer"
    for path, kind in (("/console.js", "javascript"), ("/console.css", "text/css")):
        asset = proxy.admin("GET", path)
        assert asset.status == 200, path
        assert kind in asset.headers.get("content-type", ""), (path, asset.headers.get("content-type"))
        assert asset.headers.get("x-content-type-options") == "nosniff", path

    target = proxy.backends[0].name
    drain = f"/api/backends/default/{target}/drain"
    bearer = {"Authorization": f"Bearer {proxy.token}"}

    for origin in ("http://evil.example", "null", f"http://{proxy.http_address}"):
        refused = proxy.admin("POST", drain, {**bearer, "Origin": origin})
        assert refused.status == 403, (origin, refused.status, refused.text)
        assert proxy.backend_state(target)["drained"] is False
    reload_refused = proxy.admin("POST", "/api/reload", {**bearer, "Origin": "http://evil.example"})
    assert reload_refused.status == 403

    assert proxy.admin("POST", drain).status == 401
    assert proxy.admin("POST", drain, {"Authorization": "Bearer wrong-token-0123456789"}).status == 401
    assert proxy.backend_state(target)["drained"] is False

    accepted = proxy.admin("POST", drain, {**bearer, "Origin": proxy.admin_origin})
    assert accepted.status == 200, accepted.text
    answer = accepted.json()
    assert (answer["upstream"], answer["name"], answer["drained"], answer["in_flight"]) == ("default", target, True, 0)
    assert proxy.backend_state(target)["drained"] is True
    undrained = proxy.admin("POST", f"/api/backends/default/{target}/undrain", bearer)
    assert undrained.status == 200 and undrained.json()["drained"] is False


def test_the_console_can_be_turned_off(proxy_factory, backends):
    proxy = proxy_factory(backends, console=False)
    for path in ("/", "/console.js", "/console.css", "/dashboard.json"):
        assert proxy.admin("GET", path).status == 404, path
    assert proxy.admin("GET", "/metrics").status == 200
    assert proxy.admin("GET", "/live").status == 200


def test_without_an_admin_token_configured_the_page_shows_the_refusal(proxy_factory, backends, browser, page_errors):
    page_errors.expect(r"status of 403 .*/api/backends/default/backend1/drain")
    proxy = proxy_factory(backends, token=False)
    page = browser()
    open_console(page, proxy)
    row(page, "backend1").get_by_role("button", name="Drain backend1").click()
    enter_token(page, "any-token-" + secrets.token_hex(8))
    expect(latest_answer(page)).to_contain_text("Drain default/backend1: 403")
    expect(latest_answer(page)).to_contain_text("admin.token")
    expect(row(page, "backend1")).to_have_attribute("data-state", "healthy")
    assert proxy.backend_state("backend1")["drained"] is False
    page_errors.check()


def test_an_unreachable_proxy_is_shown(proxy, browser, page_errors):
    page_errors.expect(r"net::ERR_CONNECTION_REFUSED .*/api/state")
    page = browser()
    open_console(page, proxy)
    status, killed = proxy.process.stop()
    assert (status, killed) == (0, False), proxy.process.stderr()

    banner = page.get_by_role("alert")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("unreachable")
    expect(page.locator("#connection")).to_contain_text("Unreachable")
    expect(page.locator("#upstreams tr[data-backend]")).to_have_count(3)
    page_errors.check()


def certificate_row(page: Page, source: str) -> Locator:
    return page.locator(f'#certificates tr[data-source="{source}"]')


def test_the_certificates_section_shows_the_file_certificate_as_the_metric_does(
    proxy_factory, backends, cert_pair, browser, page_errors
):
    cert, _key = cert_pair
    proxy = proxy_factory(backends, tls=cert_pair)
    page = browser(**DESKTOP)
    open_console(page, proxy)

    # What the proxy says: one certificate, from the file, for localhost (cert_pair's one DNS name), no ACME.
    state = proxy.state()
    assert state["acme"] is None, state["acme"]
    [served] = state["certificates"]
    assert served["source"] == "file" and "localhost" in served["names"], served
    assert Path(served["file"]).resolve() == cert.resolve(), served
    expiry = {
        sample.labels["name"]: sample.value
        for sample in proxy.running.metric_samples()
        if sample.name == "tls_certificate_expiry_timestamp_seconds" and sample.labels.get("source") == "file"
    }
    assert "localhost" in expiry and set(expiry) <= set(served["names"]), (expiry, served)
    assert set(expiry.values()) == {served["not_after"]}, (expiry, served)

    # What the page shows for it: every name, the source, the expiry date, the serial, and the days left the
    # metric gives, (expiry - now) / 86400 rounded down (one day of slack for a poll across midnight UTC).
    row = certificate_row(page, "file")
    expect(row).to_have_count(1)
    for name in served["names"]:
        expect(row.locator(".col-names")).to_contain_text(name)
    expect(row.locator(".col-source")).to_have_text("file")
    expires = datetime.fromtimestamp(served["not_after"], timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    expect(row.locator(".col-expires")).to_have_text(expires)
    expect(row.locator(".col-serial")).to_have_text(served["serial"])
    days = row.locator(".col-days-left")
    expect(days).to_have_text(re.compile(r"^\d+ days? left$"))
    shown = int(days.inner_text().split()[0])
    assert days.get_attribute("data-days") == str(shown)
    metric_days = (expiry["localhost"] - time.time()) / 86400
    assert abs(shown - math.floor(metric_days)) <= 1, (shown, metric_days)
    expect(page.locator("#acme")).to_be_hidden()
    page_errors.check()



def test_desktop_and_phone_render_and_screenshots_are_kept(proxy, browser, page_errors):
    page = browser(**DESKTOP)
    open_console(page, proxy)
    failing, drained = proxy.backends[2], proxy.backends[1]

    with Traffic(proxy.http_address) as traffic:
        started = time.monotonic()
        wait_until(lambda: len(traffic.since(started)) >= 20, "traffic through the proxy")
        failing.fail_probes()
        row(page, drained.name).get_by_role("button", name=f"Drain {drained.name}").click()
        enter_token(page, proxy.token)
        expect(row(page, failing.name)).to_have_attribute("data-state", "unhealthy")
        expect(row(page, drained.name)).to_have_attribute("data-state", "draining")
        # Only backend1 is left in rotation: the page shows it carrying all the traffic.
        expect(cell(page, proxy.backends[0].name, "rate")).not_to_have_text(NO_TRAFFIC, timeout=RATE_TIMEOUT * 1000)
        for idle in (failing, drained):
            expect(cell(page, idle.name, "rate")).to_have_text("0.0", timeout=RATE_TIMEOUT * 1000)
        assert_no_horizontal_scroll(page, DESKTOP["viewport"]["width"])
        desktop = save_screenshot(page, "console-desktop.png")

        phone = browser(**PHONE)
        phone.goto(proxy.console_url)
        expect(phone.locator("#upstreams tr[data-backend]")).to_have_count(3)
        expect(row(phone, failing.name)).to_have_attribute("data-state", "unhealthy")
        expect(row(phone, drained.name)).to_have_attribute("data-state", "draining")
        expect(phone.locator("#events li").first).to_be_visible()
        expect(phone.locator("#config")).to_contain_text(failing.address)
        assert_no_horizontal_scroll(phone, PHONE["viewport"]["width"])
        for backend in proxy.backends:
            box = row(phone, backend.name).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["viewport"]["width"], box
        mobile = save_screenshot(phone, "console-phone.png")

    for shot in (desktop, mobile):
        assert shot.stat().st_size > 10_000, shot
    page_errors.check()


def assert_no_horizontal_scroll(page: Page, width: int) -> None:
    """Nothing is wider than the `width` the viewport was given (a mobile browser would otherwise widen its
    layout viewport to fit, and the page would have to be zoomed or scrolled sideways)."""
    widths = page.evaluate(
        "() => ({ page: document.documentElement.scrollWidth, body: document.body.scrollWidth, "
        "viewport: window.innerWidth })"
    )
    assert max(widths.values()) <= width, widths
