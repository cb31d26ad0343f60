"""Fixtures for the console tests: the real proxy with its admin listener in front of demo backends, a real
Chromium (Debian's, driven by Playwright) looking at the console page, and traffic through the proxy.

Every process binds port 0 and reports its address in a JSON log line; starting and stopping them, and reading
those lines, is the shared quic_proxy_testing package's (tests/support), whose fixtures (proxy_bin,
demo_backend, backends, proxy_launcher) this suite uses. Each test gets its own backends, proxy and browser
profile, so tests share no state and pass in any order and in parallel.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, ConsoleMessage, Page, Playwright, expect, sync_playwright

import quic_proxy_testing
from quic_proxy_testing import Answer, DemoBackend, Process, ProxyLauncher, RunningProxy

pytest_plugins = ["quic_proxy_testing.plugin"]

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

CHROMIUM = Path(os.environ.get("CONSOLE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests run as root, where Chromium's sandbox refuses to start
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",  # containers often have a small /dev/shm, where Chromium's renderers crash
]

# How long the page may take to show a change the proxy has made: a health probe round (200 ms), a poll
# (1 s) and a debug build on a busy 2-core machine.
UI_TIMEOUT = 20.0
# Rates are averaged over a window the proxy chooses; a drained backend's rate takes that long to reach 0.
RATE_TIMEOUT = 45.0
REQUEST_TIMEOUT = 10.0

expect.set_options(timeout=UI_TIMEOUT * 1000)


# --- waiting -------------------------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = UI_TIMEOUT) -> None:
    """The shared bounded wait, with the bound of a change the page shows."""
    quic_proxy_testing.wait_until(predicate, what, timeout, interval=0.1)


# --- the proxy -----------------------------------------------------------------------------------------------


def to_yaml(value, indent: int = 0) -> str:
    """A YAML rendering of plain dicts, lists and scalars; scalars are written as JSON, which YAML reads."""
    pad = "  " * indent
    lines = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{key}:")
                lines.append(to_yaml(item, indent + 1))
            else:
                lines.append(f"{pad}{key}: {json.dumps(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and item:
                first, *rest = to_yaml(item, indent + 1).split("\n")
                lines.append(f"{pad}- {first.lstrip()}")
                lines.extend(rest)
            else:
                lines.append(f"{pad}- {json.dumps(item)}")
    return "\n".join(lines)


class ConsoleProxy:
    """quic-proxy with a plain HTTP listener and its admin listener (console, API, metrics), started by the
    shared launcher on the config its backends, token and console switch make (a test changes those and calls
    write_config to change the config). With `tls` (a certificate and key file) it also serves HTTPS and QUIC
    with that certificate."""

    def __init__(
        self,
        backends: list[DemoBackend],
        token: str | None,
        console: bool = True,
        tls: tuple[Path, Path] | None = None,
    ):
        self.backends = list(backends)
        self.token = token
        self.console = console
        self.tls = tls
        self.running: RunningProxy | None = None

    def start(self, launcher: ProxyLauncher) -> None:
        self.running = launcher.start(to_yaml(self.config()) + "\n")

    @property
    def process(self) -> Process:
        return self.running.process

    @property
    def http_address(self) -> str:
        return self.running.http_address

    @property
    def admin_address(self) -> str:
        return self.running.admin_address

    @property
    def console_url(self) -> str:
        return f"http://{self.admin_address}/"

    @property
    def admin_origin(self) -> str:
        return f"http://{self.admin_address}"

    def config(self) -> dict:
        server = {"fallback_address": "127.0.0.1:0", "drain_timeout": "2s"}
        if self.tls is not None:
            cert, key = self.tls
            server |= {"address": "127.0.0.1:0", "tls": {"cert_file": str(cert), "key_file": str(key)}}
        return {
            "server": server,
            "backends": [{"name": b.name, "url": f"http://{b.address}", "weight": 1} for b in self.backends],
            "load_balancer": {"algorithm": "round_robin"},
            # Fast enough for a test to watch a backend go down and come back within a second or two; two
            # failures in a row, so one slow probe on a busy machine does not take a backend out.
            "health_check": {
                "interval": "200ms",
                "timeout": "200ms",
                "path": "/health",
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
            },
            "admin": {
                **({} if self.token is None else {"token": self.token}),
                **({} if self.console else {"console": False}),
            },
            "telemetry": {
                "metrics": {"address": "127.0.0.1:0"},
                "logging": {"level": "info", "format": "json"},
            },
        }

    def write_config(self, text: str | None = None) -> None:
        """Writes the config for the current backends (or `text` as it is), replacing the file atomically."""
        self.running.rewrite(text if text is not None else to_yaml(self.config()) + "\n")

    def state(self) -> dict:
        answer = self.admin("GET", "/api/state", {"Accept": "application/json"})
        assert answer.status == 200, f"GET /api/state answered {answer.status}: {answer.text}"
        return answer.json()

    def backend_state(self, name: str, upstream: str = "default") -> dict:
        for candidate in self.state()["upstreams"]:
            if candidate["name"] == upstream:
                for backend in candidate["backends"]:
                    if backend["name"] == name:
                        return backend
        pytest.fail(f"{upstream}/{name} is not in /api/state")

    def admin(self, method: str, path: str, headers: dict | None = None) -> Answer:
        return self.running.admin_request(method, path, headers)


@pytest.fixture
def backend_factory(demo_backend) -> Callable[[str], DemoBackend]:
    """Starts demo backends on port 0 (the shared demo_backend fixture); every one is stopped at teardown."""
    return demo_backend


@pytest.fixture
def proxy_factory(backend_factory, proxy_launcher: ProxyLauncher) -> Callable[..., ConsoleProxy]:
    """Starts the proxy in front of `backends` (with `tls`, a certificate and key such as the shared cert_pair,
    it serves HTTPS and QUIC too); at teardown each must exit 0 on SIGTERM (the shared launcher).

    Depends on `backend_factory` first so that proxies stop before the backends they hold connections to.
    """

    def start(
        backends: list[DemoBackend], console: bool = True, token: bool = True, tls: tuple[Path, Path] | None = None
    ) -> ConsoleProxy:
        # A fresh random token per proxy, long enough for admin.token's rule and unlike anything else on the page.
        proxy = ConsoleProxy(
            backends=backends,
            token="console-test-" + secrets.token_hex(16) if token else None,
            console=console,
            tls=tls,
        )
        proxy.start(proxy_launcher)
        return proxy

    return start


@pytest.fixture
def proxy(proxy_factory, backends) -> ConsoleProxy:
    return proxy_factory(backends)


# --- traffic through the proxy -------------------------------------------------------------------------------


@dataclass
class Reply:
    sent: float  # time.monotonic() when the request was sent
    status: int
    backend: str | None


class Traffic:
    """A background thread sending GET / through the proxy's plain listener, recording who answered.

    Paced (at most one request every 20 ms) and bounded in time, so it never floods a shared machine.
    """

    def __init__(self, address: str, limit_seconds: float = 180.0):
        self.address = address
        self.replies: list[Reply] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + limit_seconds
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def __enter__(self) -> "Traffic":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(REQUEST_TIMEOUT + 5)

    def _run(self) -> None:
        host, port = self.address.rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=REQUEST_TIMEOUT)
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            sent = time.monotonic()
            try:
                connection.request("GET", "/")
                response = connection.getresponse()
                response.read()
                reply = Reply(sent, response.status, response.getheader("x-backend"))
                with self._lock:
                    self.replies.append(reply)
                if response.will_close:
                    connection.close()
            except (OSError, http.client.HTTPException) as error:
                with self._lock:
                    self.errors.append(f"{type(error).__name__}: {error}")
                connection.close()
            self._stop.wait(0.02)
        connection.close()

    def since(self, moment: float) -> list[Reply]:
        with self._lock:
            return [reply for reply in self.replies if reply.sent >= moment]

    def backends_since(self, moment: float) -> dict[str, int]:
        counts: dict[str, int] = {}
        for reply in self.since(moment):
            key = reply.backend or f"(status {reply.status}, no x-backend)"
            counts[key] = counts.get(key, 0) + 1
        return counts


# --- the browser ---------------------------------------------------------------------------------------------


class PageErrors:
    """JavaScript errors and console errors of the pages under test; each one fails the test unless the test
    said in advance that it provokes it (a refused request the browser reports, e.g. a 401)."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self._expected: list[re.Pattern] = []

    def watch(self, page: Page) -> None:
        page.on("pageerror", lambda error: self.seen.append(f"uncaught exception: {error}"))
        page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "assert"):
            url = (message.location or {}).get("url", "")
            self.seen.append(f"console.{message.type}: {message.text} (at {url})")

    def expect(self, pattern: str) -> None:
        self._expected.append(re.compile(pattern))

    def unexpected(self) -> list[str]:
        return [line for line in self.seen if not any(p.search(line) for p in self._expected)]

    def check(self) -> None:
        unexpected = self.unexpected()
        self.seen.clear()  # reported once, here, rather than again at teardown
        assert not unexpected, "the page reported errors:\n" + "\n".join(unexpected)


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: scripts/test-console.sh installs Debian's chromium package")
    with sync_playwright() as driver:
        yield driver


@pytest.fixture
def page_errors() -> Iterator[PageErrors]:
    errors = PageErrors()
    yield errors
    errors.check()


@pytest.fixture
def browser(playwright: Playwright, tmp_path: Path, page_errors: PageErrors) -> Iterator[Callable[..., Page]]:
    """Opens Chromium with a fresh profile (its own user-data-dir) and returns a page whose errors are watched.

    Keyword arguments are Playwright's context options (viewport, is_mobile, ...).
    """
    contexts: list[BrowserContext] = []

    def open_page(**options) -> Page:
        profile = tmp_path / f"chromium-profile-{len(contexts)}"
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            **({"viewport": {"width": 1280, "height": 900}} | options),
        )
        contexts.append(context)
        context.set_default_timeout(UI_TIMEOUT * 1000)
        page = context.pages[0] if context.pages else context.new_page()
        page_errors.watch(page)
        return page

    try:
        yield open_page
    finally:
        for context in contexts:
            with contextlib.suppress(Exception):
                context.close()


def save_screenshot(page: Page, name: str) -> Path:
    """A full-page screenshot kept in tests/console/artifacts/ (written whole, so parallel runs never leave a
    half-written file)."""
    ARTIFACTS.mkdir(exist_ok=True)
    target = ARTIFACTS / name
    staged = ARTIFACTS / f".{name}.{os.getpid()}.tmp"
    page.screenshot(path=str(staged), full_page=True, type="png")
    staged.replace(target)
    return target
