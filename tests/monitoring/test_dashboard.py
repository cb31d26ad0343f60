"""The Grafana dashboard: importable as-is, laid out cleanly, and asking only for metrics the proxy exports."""

from __future__ import annotations

import json
import re

from conftest import BASELINE, DASHBOARD, PROMETHEUS_DIR, load_yaml, metric_names, parse_scrape
import queries

DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


def test_dashboard_is_valid_json_with_a_prometheus_input():
    dashboard = json.loads(DASHBOARD.read_text())
    inputs = {i["name"]: i for i in dashboard["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    required = {(r["type"], r["id"]) for r in dashboard["__requires"]}
    assert ("datasource", "prometheus") in required and ("grafana", "grafana") in required
    for panel in queries.all_panels(dashboard):
        assert ("panel", panel["type"]) in required, f"panel type {panel['type']} missing from __requires"
    assert dashboard["uid"] == "quic-proxy-overview"
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["refresh"] == "10s"
    assert dashboard["time"]["from"] == "now-15m"
    # An exported dashboard must not carry a database id, or an import would try to overwrite that row.
    assert dashboard.get("id") is None


def test_every_panel_and_target_uses_the_datasource_input(dashboard):
    for panel in queries.all_panels(dashboard):
        assert panel.get("datasource") == DATASOURCE, panel["title"]
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target.get("datasource") == DATASOURCE, (panel["title"], target["refId"])
    for variable in queries.query_variables(dashboard):
        assert variable.get("datasource") == DATASOURCE, variable["name"]
    # No other datasource reference anywhere, such as a uid left over from the instance it was built on.
    text = json.dumps(dashboard)
    uids = set(re.findall(r'"uid": "([^"]*)"', text)) - {dashboard["uid"], "${DS_PROMETHEUS}", "-- Grafana --"}
    assert not uids, f"hard-coded datasource uids: {uids}"


def test_variables(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert list(variables) == ["DS_PROMETHEUS", "instance", "backend"], "the data source comes first"
    instance, backend = variables["instance"], variables["backend"]
    assert instance["query"]["query"] == "label_values(quic_proxy_build_info, instance)"
    assert backend["query"]["query"] == 'label_values(http_requests_total{instance=~"$instance"}, backend)'
    assert backend["multi"] and backend["includeAll"] and backend["allValue"] == ".*"


def test_datasource_resolves_both_when_imported_and_when_provisioned(dashboard):
    # Import through the UI replaces ${DS_PROMETHEUS} with the data source picked for the input; file
    # provisioning ignores __inputs, and Grafana then resolves ${DS_PROMETHEUS} as a template variable, so a
    # datasource variable of that name must exist and offer Prometheus data sources.
    inputs = {i["name"]: i for i in dashboard["__inputs"]}
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    referenced = set(re.findall(r"\$\{(\w+)\}", json.dumps([queries.all_panels(dashboard), variables])))
    datasource_names = {name for name in referenced if name.startswith("DS_")}
    assert datasource_names == {"DS_PROMETHEUS"}, referenced
    for name in datasource_names:
        assert inputs[name]["type"] == "datasource" and inputs[name]["pluginId"] == "prometheus"
        assert variables[name]["type"] == "datasource" and variables[name]["query"] == "prometheus"
        assert not variables[name]["multi"] and not variables[name]["includeAll"]


def test_panel_ids_are_unique(dashboard):
    ids = [panel["id"] for panel in queries.all_panels(dashboard)]
    assert len(ids) == len(set(ids)), ids


def test_panels_fit_24_columns_without_overlapping(dashboard):
    boxes = []
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["y"] >= 0 and g["w"] > 0 and g["h"] > 0, panel["title"]
        assert g["x"] + g["w"] <= 24, f"{panel['title']!r} ends at column {g['x'] + g['w']}"
        boxes.append((panel["title"], g))
    for i, (title_a, a) in enumerate(boxes):
        for title_b, b in boxes[i + 1 :]:
            apart = (
                a["x"] + a["w"] <= b["x"]
                or b["x"] + b["w"] <= a["x"]
                or a["y"] + a["h"] <= b["y"]
                or b["y"] + b["h"] <= a["y"]
            )
            assert apart, f"{title_a!r} overlaps {title_b!r}"


def test_every_rate_uses_the_rate_interval(dashboard):
    for panel, target in queries.targets(dashboard):
        for match in re.finditer(r"\b(rate|irate|increase)\s*\(", target["expr"]):
            window = re.match(r"[^\[]*\[([^\]]*)\]", target["expr"][match.end() :])
            assert window and window.group(1) == "$__rate_interval", (panel["title"], target["expr"])


def test_every_query_filters_on_the_instance(dashboard):
    for panel, target in queries.targets(dashboard):
        selectors = re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*\{([^}]*)\}", target["expr"])
        assert selectors, (panel["title"], target["expr"])
        for selector in selectors:
            assert 'instance=~"$instance"' in selector, (panel["title"], target["expr"])


def test_required_panels_are_there(dashboard):
    titles = {panel["title"] for panel in queries.all_panels(dashboard)}
    for title in [
        "Request rate by method and backend",
        "Total requests",
        "Success rate",
        "Latency p50 / p95 / p99",
        "Backend request distribution",
        "Backend response time p95",
        "Request and response sizes",
        "Connections and in-flight requests by protocol",
        "Memory (RSS)",
        "CPU",
        "Backend health over time",
        "Health check failures",
        "HTTP/3 share of traffic",
        "QUIC RTT and loss",
        "Outlier ejections and circuit breaking",
        "Retry budget, panic mode, reloads and tracing",
        "Certificates",
        "ACME orders",
    ]:
        assert title in titles
    kinds = {panel["title"]: panel["type"] for panel in queries.all_panels(dashboard)}
    assert kinds["Backend health over time"] == "state-timeline"
    assert kinds["Certificates"] == "bargauge"


def test_the_certificates_panel_turns_red_where_the_expiry_alert_fires(dashboard):
    panel = next(p for p in queries.all_panels(dashboard) if p["title"] == "Certificates")
    [target] = panel["targets"]
    assert re.fullmatch(
        r"\(tls_certificate_expiry_timestamp_seconds\{[^}]*\} - time\(\)\) / 86400", target["expr"]
    ), target["expr"]
    steps = [(step["color"], step["value"]) for step in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert steps == [("red", None), ("orange", 14), ("green", 30)]
    rules = load_yaml(PROMETHEUS_DIR / "alerts.yml")
    expiring = [rule for group in rules["groups"] for rule in group["rules"]
                if rule["alert"] == "CertificateExpiringSoon"]
    assert len(expiring) == 1 and expiring[0]["expr"].endswith("- time() < 14 * 86400"), expiring


def test_every_metric_in_the_dashboard_is_in_a_real_scrape(dashboard, live):
    stack, _prometheus, _load = live
    exported = metric_names(parse_scrape(stack.scrape()))
    missing = {}
    for panel, target in queries.targets(dashboard):
        for name in queries.metric_names(target["expr"]):
            if name not in exported:
                missing.setdefault(name, []).append(panel["title"])
    for variable in queries.query_variables(dashboard):
        for name in queries.metric_names(queries.label_values_selector(variable)):
            if name not in exported:
                missing.setdefault(name, []).append(f"variable {variable['name']}")
    assert not missing, f"not in the proxy's /metrics after traffic: {missing}"
    assert BASELINE in stack.scrapes
