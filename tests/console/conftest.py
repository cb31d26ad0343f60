"""Fixtures for the console tests: the real proxy with its admin listener in front of demo backends, a real
Chromium (Debian's, driven by Playwright) looking at the console page, and traffic through the proxy.

Every process binds port 0 and reports its address in a JSON log line; the process handling and that log
parsing are the interop suite's (tests/interop/conftest.py), loaded under another module name so the two
conftest files never meet. Each test gets its own backends, proxy and browser profile, so tests share no state
and pass in any order and in parallel.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import re
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, ConsoleMessage, Page, Playwright, expect, sync_playwright

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

_spec = importlib.util.spec_from_file_location("interop_fixtures", ROOT / "tests" / "interop" / "conftest.py")
interop = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = interop  # dataclasses look their module up there
_spec.loader.exec_module(interop)
Process, binary, START_TIMEOUT = interop.Process, interop.binary, interop.START_TIMEOUT

# The interop suite's fixture for the binary under test.
proxy_bin = interop.proxy_bin

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


# --- plain HTTP -------------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self):
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def http_request(method: str, address: str, path: str, headers: dict | None = None) -> Answer:
    """One request on a fresh connection; any status is an answer, only transport failures raise."""
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=REQUEST_TIMEOUT)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        connection.close()


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = UI_TIMEOUT, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout}s")
        time.sleep(interval)


# --- demo backends and the proxy ---------------------------------------------------------------------------


@dataclass
class Backend:
    name: str
    address: str
    process: Process

    def fail_probes(self) -> None:
        """Makes the backend answer its health checks 503 (and only those: traffic is still served)."""
        answer = http_request("POST", self.address, "/control/health/503")
        assert answer.status == 200, answer.text

    def pass_probes(self) -> None:
        answer = http_request("POST", self.address, "/control/health/200")
        assert answer.status == 200, answer.text


def start_backend(proxy_bin: Path, name: str, workdir: Path) -> Backend:
    process = Process(name, [str(proxy_bin), "backend", "--listen", "127.0.0.1:0", "--name", name], cwd=workdir)
    try:
        address = process.wait_for_message("demo backend listening")["address"]
    except BaseException:
        process.stop()
        raise
    return Backend(name, address, process)


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


@dataclass
class ConsoleProxy:
    """quic-proxy with a plain HTTP listener and its admin listener (console, API, metrics)."""

    proxy_bin: Path
    workdir: Path
    backends: list[Backend]
    token: str | None
    config_path: Path
    console: bool = True
    process: Process | None = None
    http_address: str = ""
    admin_address: str = ""

    @property
    def console_url(self) -> str:
        return f"http://{self.admin_address}/"

    @property
    def admin_origin(self) -> str:
        return f"http://{self.admin_address}"

    def config(self) -> dict:
        return {
            "server": {"fallback_address": "127.0.0.1:0", "drain_timeout": "2s"},
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
        staged = self.config_path.with_suffix(".next")
        staged.write_text(text if text is not None else to_yaml(self.config()) + "\n")
        staged.replace(self.config_path)

    def start(self) -> None:
        self.write_config()
        self.process = Process("quic-proxy", [str(self.proxy_bin), "--config", str(self.config_path)], cwd=self.workdir)
        self.http_address = self.process.wait_for_message("HTTP/1.1 listener bound")["address"]
        self.admin_address = self.process.wait_for(
            lambda e: str(e.get("message", "")).startswith("admin listener bound"), "the admin listener"
        )["address"]
        self.process.wait_for_message("quic-proxy started")

    def state(self) -> dict:
        answer = http_request("GET", self.admin_address, "/api/state", {"Accept": "application/json"})
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
        return http_request(method, self.admin_address, path, headers)


@pytest.fixture
def backend_factory(proxy_bin: Path, tmp_path: Path) -> Iterator[Callable[[str], Backend]]:
    """Starts demo backends on port 0; every one started is stopped at teardown."""
    started: list[Backend] = []

    def start(name: str) -> Backend:
        backend = start_backend(proxy_bin, name, tmp_path)
        started.append(backend)
        return backend

    try:
        yield start
    finally:
        for backend in started:
            backend.process.stop()


@pytest.fixture
def backends(backend_factory) -> list[Backend]:
    return [backend_factory(f"backend{n}") for n in (1, 2, 3)]


@pytest.fixture
def proxy_factory(proxy_bin: Path, tmp_path: Path, backend_factory) -> Iterator[Callable[..., ConsoleProxy]]:
    """Starts the proxy in front of `backends`; at teardown each must exit 0 on SIGTERM.

    Depends on `backend_factory` so that proxies stop before the backends they hold connections to.
    """
    started: list[ConsoleProxy] = []

    def start(backends: list[Backend], console: bool = True, token: bool = True) -> ConsoleProxy:
        # A fresh random token per proxy, long enough for admin.token's rule and unlike anything else on the page.
        proxy = ConsoleProxy(
            proxy_bin=proxy_bin,
            workdir=tmp_path,
            backends=list(backends),
            token="console-test-" + secrets.token_hex(16) if token else None,
            config_path=tmp_path / f"proxy-{len(started)}.yaml",
            console=console,
        )
        started.append(proxy)
        proxy.start()
        return proxy

    yield start
    failures = []
    for proxy in started:
        if proxy.process is None:
            continue
        status, killed = proxy.process.stop()
        if killed or status != 0:
            failures.append(f"quic-proxy exited {status} (killed: {killed}); stderr:\n{proxy.process.stderr()}")
    assert not failures, "\n".join(failures)


@pytest.fixture
def proxy(proxy_factory, backends) -> ConsoleProxy:
    return proxy_factory(backends)


# --- traffic through the proxy -----------------------------------------------------------------------------


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


# --- the browser --------------------------------------------------------------------------------------------


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
