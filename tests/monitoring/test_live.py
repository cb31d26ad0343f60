"""Every dashboard query, run through a real Prometheus that scraped the proxy while it served traffic."""

from __future__ import annotations

import json
import math
import time

from conftest import REPORT, http_get
import queries

# Long enough for a busy machine to collect 15s rate windows; the poll ends as soon as every query answers.
DATA_TIMEOUT = 120.0


def has_data(result: dict) -> bool:
    """True when the answer has at least one series (or scalar) whose value is a number, not NaN."""
    if result["resultType"] == "scalar":
        return not math.isnan(float(result["result"][1]))
    return any(not math.isnan(float(item["value"][1])) for item in result["result"])


def first_phase_with_data(prometheus, stack, expr: str) -> str:
    """The traffic phase after which `expr` first had data, evaluated as of that phase's end."""
    for phase, moment in stack.moments.items():
        if has_data(prometheus.query(expr, at=moment)):
            return phase
    return "only under the steady load"


def test_every_dashboard_query_returns_data(dashboard, live):
    stack, prometheus, load = live
    instance = stack.proxy.admin_address
    exprs = [(panel["title"], target["refId"], queries.substitute(target["expr"], instance))
             for panel, target in queries.targets(dashboard)]
    for variable in queries.query_variables(dashboard):
        # label_values(selector, label) is a series lookup; the selector must match series.
        selector = queries.label_values_selector(variable)
        exprs.append((f"variable {variable['name']}", "-", f"count({queries.substitute(selector, instance)})"))

    deadline = time.monotonic() + DATA_TIMEOUT
    while True:
        empty = [(title, ref, expr) for title, ref, expr in exprs if not has_data(prometheus.query(expr))]
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(1)

    for title, ref, expr in exprs:
        REPORT.append(f"{title} [{ref}]: {first_phase_with_data(prometheus, stack, expr)}")
    details = "\n".join(f"  {title} [{ref}]: {expr}" for title, ref, expr in empty)
    assert not empty, (
        f"{len(empty)} of {len(exprs)} queries had no data after {DATA_TIMEOUT}s "
        f"(load rounds {load.rounds}, load errors {load.errors[:3]}):\n{details}"
    )


def test_prometheus_scraped_the_proxy_and_loaded_the_alerts(live):
    stack, prometheus, _load = live
    up = prometheus.query(f'up{{job="quic-proxy", instance="{stack.proxy.admin_address}"}}')["result"]
    assert up and up[0]["value"][1] == "1", up
    status, body = http_get(f"http://{prometheus.address}/api/v1/rules")
    assert status == 200, body
    rules = {rule["name"] for group in json.loads(body)["data"]["groups"] for rule in group["rules"]}
    assert {
        "BackendDown",
        "UpstreamAllBackendsDown",
        "High5xxRatio",
        "HighP99Latency",
        "CertificateExpiringSoon",
        "AcmeOrdersFailing",
        "ProxyDown",
    } <= rules
