"""The proxy's own demo backend (`quic-proxy backend`): answers with what it received (method, path, headers,
body digest) and names itself in `x-backend`; POST /control/... changes how it behaves."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .http1 import REQUEST_TIMEOUT, http_request
from .process import START_TIMEOUT, Process

LISTENING = "demo backend listening"


@dataclass
class DemoBackend:
    name: str
    address: str
    process: Process

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def control(self, path: str, timeout: float = REQUEST_TIMEOUT) -> None:
        """Tells the backend how to behave (`/control/health/503`, ...), directly, not through the proxy."""
        answer = http_request("POST", self.address, path, timeout=timeout)
        assert answer.status == 200, f"{path} at {self.name} ({self.address}): {answer.status} {answer.text}"

    def fail_probes(self) -> None:
        """Makes the backend answer its health checks 503 (and only those: traffic is still served)."""
        self.control("/control/health/503")

    def pass_probes(self) -> None:
        self.control("/control/health/200")

    def stop(self) -> tuple[int, bool]:
        return self.process.stop()


def start_demo_backend(
    proxy_bin: Path, name: str, workdir: Path, listen: str = "127.0.0.1:0", *, may_exit: bool = False
) -> DemoBackend | None:
    """Starts a demo backend on `listen` and waits until it listens. With `may_exit`, None (the process stopped)
    when it exits instead, e.g. because that address is taken; otherwise that fails the test."""
    process = Process(name, [str(proxy_bin), "backend", "--listen", listen, "--name", name], cwd=workdir)
    try:
        if may_exit:
            event = process.wait_for_or_exit(lambda e: e.get("message") == LISTENING, repr(LISTENING), START_TIMEOUT)
        else:
            event = process.wait_for_message(LISTENING)
    except BaseException:
        process.stop()
        raise
    if event is None:
        process.stop()
        return None
    return DemoBackend(name, event["address"], process)
