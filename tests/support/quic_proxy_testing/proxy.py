"""The one way the suites run quic-proxy: a config file written from a dict (as JSON, which YAML reads), lines or
text; the binary started on it; its start-up waited for on its JSON log; the addresses it bound read from the
"... listener bound" lines; and at the end SIGTERM, with a clean exit required.

Every listener in a test config binds port 0; the proxy logs each listener it bound, with the address, before
it logs "quic-proxy started" (src/app.rs, src/main.rs), so once that line is in, the addresses are known.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from .http1 import REQUEST_TIMEOUT, Answer, http_request
from .metrics import Sample, metric_sum, parse_metrics
from .process import START_TIMEOUT, STOP_TIMEOUT, Process

STARTED = "quic-proxy started"
# The start of the log message of each kind of listener.
LISTENERS = {
    "http": "HTTP/1.1 listener bound",
    "https": "HTTPS listener bound (h2, http/1.1)",
    "quic": "QUIC listener bound (h3)",
    "admin": "admin listener bound",
}
PANIC = "panicked at"

Config = dict | list[str] | str


def tls_server(cert_pair: tuple[Path, Path]) -> dict:
    """The `server` section of a proxy with TLS from `cert_pair` and every listener on 127.0.0.1 port 0."""
    cert, key = cert_pair
    return {
        "address": "127.0.0.1:0",
        "fallback_address": "127.0.0.1:0",
        "tls": {"cert_file": str(cert), "key_file": str(key)},
    }


def config_text(config: Config) -> str:
    """A dict as JSON (YAML reads it, so nothing here needs a YAML library), lines joined, text as it is."""
    if isinstance(config, dict):
        return json.dumps(config, indent=1) + "\n"
    if isinstance(config, str):
        return config
    return "\n".join(config) + "\n"


def write_config(path: Path, config: Config) -> None:
    """Writes `config` to `path` atomically (staged beside it, then renamed), so a proxy watching or reloading
    the file never reads half of it."""
    staged = path.with_name(path.name + ".next")
    staged.write_text(config_text(config))
    staged.replace(path)


class RunningProxy:
    """quic-proxy started on a config file, with the addresses its listeners bound.

    Suites subclass it for what only they need; start_proxy(cls=...) makes the subclass."""

    # The bound of one request to the admin listener, unless the caller gives one.
    request_timeout: float = REQUEST_TIMEOUT
    # The admin.token of the suite's configs, which changing requests (reload, drain) carry.
    admin_token: str | None = None

    def __init__(self, process: Process, config_path: Path, config: Config):
        self.process = process
        self.config_path = config_path
        self.config = config
        # Listener kind (see LISTENERS) -> the address it bound, "127.0.0.1:port" or "[::1]:port".
        self.listeners: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} pid {self.process.popen.pid} listening on {self.listeners}>"

    @property
    def name(self) -> str:
        return self.process.name

    def wait_started(self, timeout: float = START_TIMEOUT) -> None:
        """Waits for "quic-proxy started" and reads the listeners bound before it."""
        self.process.wait_for_message(STARTED, timeout)
        for kind, prefix in LISTENERS.items():
            bound = self.process.logged(lambda e, prefix=prefix: str(e.get("message", "")).startswith(prefix))
            if bound:
                self.listeners[kind] = bound[0]["address"]

    # --- addresses --------------------------------------------------------------------------------------

    def address(self, kind: str) -> str:
        if kind not in self.listeners:
            pytest.fail(f"{self.name} bound no {kind} listener (it bound {self.listeners}); log:\n{self.tail()}")
        return self.listeners[kind]

    def port(self, kind: str) -> int:
        return int(self.address(kind).rsplit(":", 1)[1])

    @property
    def http_address(self) -> str:
        return self.address("http")

    @property
    def https_address(self) -> str:
        return self.address("https")

    @property
    def quic_address(self) -> str:
        return self.address("quic")

    @property
    def admin_address(self) -> str:
        return self.address("admin")

    @property
    def https_port(self) -> int:
        return self.port("https")

    @property
    def quic_port(self) -> int:
        return self.port("quic")

    def url(self, path: str = "/") -> str:
        """HTTPS on the shared TCP/UDP port; `localhost` because the test certificate names it and curl keys
        alt-svc entries by host name."""
        return f"https://localhost:{self.quic_port}{path}"

    # --- its log ----------------------------------------------------------------------------------------

    def access_log(self, path: str, timeout: float = 10.0) -> dict:
        """The proxy's access log line for `path` (written once the response head is out)."""
        return self.process.wait_for(
            lambda e: e.get("target") == "access" and e.get("path") == path,
            f"the access log line of {path}",
            timeout,
        )

    def panics(self) -> list[str]:
        return [line for line in self.process.stderr().splitlines() if PANIC in line]

    def tail(self, lines: int = 40) -> str:
        return self.process.tail(lines)

    # --- the admin listener -----------------------------------------------------------------------------

    def admin_request(
        self, method: str, path: str, headers: dict | None = None, timeout: float | None = None
    ) -> Answer:
        """One request to the admin listener, on a connection of its own."""
        timeout = self.request_timeout if timeout is None else timeout
        return http_request(method, self.admin_address, path, headers, timeout=timeout)

    def reload_via_api(self) -> dict:
        answer = self.admin_request("POST", "/api/reload", {"Authorization": f"Bearer {self.admin_token}"})
        assert answer.status == 200, f"POST /api/reload answered {answer.status}: {answer.text}"
        return answer.json()

    def scrape_metrics(self) -> str:
        answer = self.admin_request("GET", "/metrics")
        assert answer.status == 200, answer.text
        return answer.text

    def metric_samples(self) -> list[Sample]:
        return parse_metrics(self.scrape_metrics())

    def metric(self, name: str, **labels: str) -> float:
        """The sum of every sample of `name` on /metrics whose labels include `labels` (0 while it has none)."""
        return metric_sum(self.metric_samples(), name, **labels)

    # --- config and signals -----------------------------------------------------------------------------

    def rewrite(self, config: Config) -> None:
        """Replaces the config file atomically, for a reload to pick up."""
        write_config(self.config_path, config)
        self.config = config

    def sighup(self) -> None:
        self.process.popen.send_signal(signal.SIGHUP)

    def sigterm(self) -> None:
        self.process.popen.send_signal(signal.SIGTERM)

    def running(self) -> bool:
        return self.process.popen.poll() is None

    def wait_exit(self, timeout: float) -> int | None:
        """The exit status, or None when it still runs after `timeout`."""
        try:
            return self.process.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = STOP_TIMEOUT) -> tuple[int, bool]:
        return self.process.stop(timeout)

    def shutdown(self, timeout: float = STOP_TIMEOUT, judge_early_exit: bool = True) -> list[str]:
        """Stops the proxy (SIGTERM; SIGKILL after `timeout`) and says what was wrong with its end: it ignored
        SIGTERM, exited other than 0, or panicked. With `judge_early_exit` false, the status of a proxy that
        had exited before (the test stopped or killed it itself, and judged that) is not looked at."""
        was_running = self.running()
        status, killed = self.stop(timeout)
        problems = []
        if killed:
            problems.append(f"{self.name} ignored SIGTERM for {timeout}s; log tail:\n{self.tail()}")
        elif status != 0 and (was_running or judge_early_exit):
            when = "on SIGTERM" if was_running else "before the end of the test"
            problems.append(f"{self.name} exited {status} {when}; log tail:\n{self.tail()}")
        if self.panics():
            problems.append(f"{self.name} panicked:\n" + "\n".join(self.panics()) + f"\nlog tail:\n{self.tail()}")
        return problems


def start_proxy(
    proxy_bin: Path,
    config: Config,
    workdir: Path,
    *,
    name: str = "quic-proxy",
    config_path: Path | None = None,
    cls: type[RunningProxy] = RunningProxy,
    **attributes,
) -> RunningProxy:
    """Writes `config` (to `config_path`, default `workdir`/`name`.yaml), starts the proxy on it in `workdir`
    and waits until it has started; `attributes` go to `cls`'s constructor. A proxy that fails to start is
    stopped before the failure propagates. The caller stops it (see ProxyLauncher)."""
    path = config_path or workdir / f"{name}.yaml"
    write_config(path, config)
    process = Process(name, [str(proxy_bin), "--config", str(path)], cwd=workdir)
    try:
        proxy = cls(process, path, config, **attributes)
        proxy.wait_started()
    except BaseException:
        process.stop()
        raise
    return proxy


class ProxyLauncher:
    """Starts proxies in `workdir` and, on leaving the `with` block, stops every one and fails unless each
    exited 0 on SIGTERM without being killed and never panicked (see RunningProxy.shutdown)."""

    def __init__(
        self,
        proxy_bin: Path,
        workdir: Path,
        *,
        stop_timeout: float = STOP_TIMEOUT,
        judge_early_exit: bool = True,
    ):
        self.proxy_bin = proxy_bin
        self.workdir = workdir
        self.stop_timeout = stop_timeout
        self.judge_early_exit = judge_early_exit
        self.started: list[RunningProxy] = []

    def start(
        self,
        config: Config,
        *,
        name: str | None = None,
        config_path: Path | None = None,
        cls: type[RunningProxy] = RunningProxy,
        **attributes,
    ) -> RunningProxy:
        """See start_proxy; proxies are named quic-proxy-0, quic-proxy-1, ... unless `name` says otherwise."""
        proxy = start_proxy(
            self.proxy_bin,
            config,
            self.workdir,
            name=name or f"quic-proxy-{len(self.started)}",
            config_path=config_path,
            cls=cls,
            **attributes,
        )
        self.started.append(proxy)
        return proxy

    def stop_all(self) -> list[str]:
        """Stops every proxy started, in the order they started; what was wrong with their ends."""
        problems = []
        for proxy in self.started:
            problems += proxy.shutdown(self.stop_timeout, self.judge_early_exit)
        return problems

    def __enter__(self) -> ProxyLauncher:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        problems = self.stop_all()
        # Only when nothing else failed: a failure in the block says more than a proxy stopped because of it.
        if exc_type is None:
            assert not problems, "\n\n".join(problems)
