"""What the Python test suites under tests/ share to run the real quic-proxy binary.

- Process (process.py): a child process whose JSON log lines on stderr are read in a background thread and
  waited for with a bound.
- ROOT, target_dir, proxy_binary (binaries.py): the repository and the binary under test (QUIC_PROXY_BIN, else
  target/debug/quic-proxy under CARGO_TARGET_DIR).
- DemoBackend, start_demo_backend (backends.py): the proxy's own demo backends.
- start_proxy, ProxyLauncher, RunningProxy, tls_server (proxy.py): the one proxy launcher: config written from a dict, lines
  or text; start-up and bound addresses read from the log; SIGTERM and a clean exit at the end.
- wait_until, poll_until (waits.py): bounded polling; http_request (http1.py); parse_metrics (metrics.py);
  bind_tcp_and_udp (ports.py): one port for a test's own TCP and UDP server.
- plugin.py: the common pytest fixtures (proxy_bin, cert_pair, demo_backend, backends, proxy_launcher), loaded
  by a suite's conftest.py with `pytest_plugins = ["quic_proxy_testing.plugin"]`.

The test scripts put tests/support on every venv's path (scripts/lib/venv.sh), so `import quic_proxy_testing`
works in each suite without installing anything.
"""

from .backends import DemoBackend, start_demo_backend
from .binaries import ROOT, proxy_binary, target_dir
from .http1 import Answer, http_request
from .metrics import Sample, metric_sum, parse_metrics
from .process import START_TIMEOUT, STOP_TIMEOUT, Process
from .proxy import LISTENERS, ProxyLauncher, RunningProxy, config_text, start_proxy, tls_server, write_config
from .waits import POLL, poll_until, wait_until

__all__ = [
    "Answer",
    "DemoBackend",
    "LISTENERS",
    "POLL",
    "Process",
    "ProxyLauncher",
    "ROOT",
    "RunningProxy",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "Sample",
    "config_text",
    "http_request",
    "metric_sum",
    "parse_metrics",
    "poll_until",
    "proxy_binary",
    "start_demo_backend",
    "start_proxy",
    "tls_server",
    "target_dir",
    "wait_until",
    "write_config",
]
