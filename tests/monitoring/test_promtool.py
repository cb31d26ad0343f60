"""promtool's own checks on the real /metrics output, the alert rules and the Prometheus config."""

from __future__ import annotations

import re
import subprocess

from conftest import PROMETHEUS_DIR, tool

ALERTS = [
    "BackendDown",
    "UpstreamAllBackendsDown",
    "High5xxRatio",
    "HighP99Latency",
    "UpstreamInPanicMode",
    "CircuitBreakerRejecting",
    "ConfigReloadFailed",
    "CertificateExpiringSoon",
    "AcmeOrdersFailing",
    "ProxyDown",
]


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("promtool"), *args], input=stdin, capture_output=True, text=True, timeout=120, cwd=PROMETHEUS_DIR
    )


def test_promtool_finds_no_problems_in_a_real_scrape(live):
    stack, _prometheus, _load = live
    scrape = stack.scrape()
    done = promtool("check", "metrics", stdin=scrape)
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), (
        f"promtool check metrics (exit {done.returncode}):\n{done.stdout}{done.stderr}"
    )


def test_promtool_check_rules_is_clean():
    done = promtool("check", "rules", "alerts.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in done.stdout
    assert "WARNING" not in done.stdout + done.stderr


def test_promtool_check_config_is_clean():
    done = promtool("check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    text = (PROMETHEUS_DIR / "prometheus.yml").read_text()
    assert re.search(r'targets: \["localhost:9090"\]', text)
    interval = re.search(r"^\s*scrape_interval: (\d+)s", text, re.M)
    assert interval and 5 <= int(interval.group(1)) <= 15


def test_promtool_unit_tests_pass_and_cover_every_alert():
    done = promtool("test", "rules", "alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    rules = (PROMETHEUS_DIR / "alerts.yml").read_text()
    tests = (PROMETHEUS_DIR / "alerts_test.yml").read_text()
    assert re.findall(r"- alert: (\w+)", rules) == ALERTS
    for alert in ALERTS:
        checks = re.findall(rf"alertname: {alert}\n\s+exp_alerts:(.*)", tests)
        # At least one check expects it silent (exp_alerts: []) and one expects it firing.
        assert any(c.strip() == "[]" for c in checks), f"{alert}: no not-firing case"
        assert any(c.strip() == "" for c in checks), f"{alert}: no firing case"
