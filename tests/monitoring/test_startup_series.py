"""Every metric the dashboard and the alert rules query is in /metrics from start-up, before any traffic.

A series that appears with its first event carries that event's increment, which rate() and increase()
cannot see, and until then a panel shows "No data" instead of zero; an alert on it cannot tell "never
happened" from "not scraped". So the proxy registers its series when it starts.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from conftest import PROMETHEUS_DIR, http_get, load_yaml, metric_names, parse_scrape
import queries

# Series Prometheus adds to every scrape itself: the proxy cannot and need not export them.
MADE_BY_PROMETHEUS = {
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
}


def used_metrics(dashboard: dict) -> dict[str, list[str]]:
    """Metric name -> where the dashboard or the alert rules use it."""
    used: dict[str, list[str]] = {}
    for panel, target in queries.targets(dashboard):
        for name in queries.metric_names(target["expr"]):
            used.setdefault(name, []).append(f"panel {panel['title']!r}")
    for variable in queries.query_variables(dashboard):
        for name in queries.metric_names(queries.label_values_selector(variable)):
            used.setdefault(name, []).append(f"variable {variable['name']}")
    rules = load_yaml(PROMETHEUS_DIR / "alerts.yml")
    for group in rules["groups"]:
        for rule in group["rules"]:
            for name in queries.metric_names(rule["expr"]):
                used.setdefault(name, []).append(f"alert {rule['alert']}")
    return used


def test_the_extraction_finds_the_metrics_the_panels_are_about(dashboard):
    # Guards the check below against passing on an empty list.
    used = used_metrics(dashboard)
    assert {
        "quic_handshake_failures_total",
        "quic_retry_packets_sent_total",
        "http_request_duration_seconds_bucket",
        "http_request_size_bytes_sum",
        "backend_health",
        "quic_proxy_build_info",
        "tls_certificate_expiry_timestamp_seconds",
        "acme_orders_total",
        "up",
    } <= set(used), sorted(used)
    assert used["up"] == ["alert ProxyDown"]


def test_every_metric_the_dashboard_and_the_alerts_use_exists_at_start_up(dashboard, fresh_proxy):
    status, body = http_get(f"http://{fresh_proxy.admin_address}/metrics")
    assert status == 200, body
    exported = metric_names(parse_scrape(body.decode()))
    missing = {
        name: where
        for name, where in sorted(used_metrics(dashboard).items())
        if name not in exported and name not in MADE_BY_PROMETHEUS
    }
    details = "\n".join(f"  {name}: used by {', '.join(sorted(set(where)))}" for name, where in missing.items())
    assert not missing, (
        f"{len(missing)} metrics are not in the /metrics of a proxy that has served no request yet:\n{details}"
    )


def not_after(cert: Path) -> float:
    """The certificate's notAfter as a Unix time, read by Python's own ssl module (the decoder its tests use)."""
    return float(ssl.cert_time_to_seconds(ssl._ssl._test_decode_cert(str(cert))["notAfter"]))


def test_the_certificate_expiry_and_acme_order_series_are_there_at_start_up(fresh_proxy, cert_pair):
    # The monitoring proxy serves one file certificate (cert_pair: DNS name localhost and IP 127.0.0.1) and has
    # no ACME section: one expiry series for the certificate's one DNS name, holding its notAfter, and both
    # ACME order counters registered at zero all the same.
    samples = fresh_proxy.metric_samples()
    expiry = {
        (sample.labels.get("name"), sample.labels.get("source")): sample.value
        for sample in samples
        if sample.name == "tls_certificate_expiry_timestamp_seconds"
    }
    assert expiry == {("localhost", "file"): not_after(cert_pair[0])}, expiry
    orders = {sample.labels.get("result"): sample.value for sample in samples if sample.name == "acme_orders_total"}
    assert orders == {"issued": 0, "failed": 0}, orders
