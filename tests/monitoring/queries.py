"""The dashboard's queries: collecting them, filling in Grafana's variables, and the metric names they use."""

from __future__ import annotations

import re

# Grafana's built-in interval variables, as a 1s-scrape Prometheus would see them; $__rate_interval is
# Grafana's max(4 x scrape interval, $__interval + scrape interval) for a short time range.
INTERVALS = {
    "$__rate_interval": "15s",
    "${__rate_interval}": "15s",
    "$__interval": "5s",
    "${__interval}": "5s",
    "$__range": "15m",
    "${__range}": "15m",
}

KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
    "inf", "nan", "atan2",
}


def targets(dashboard: dict) -> list[tuple[dict, dict]]:
    """(panel, target) for every target of every panel, rows' collapsed panels included."""
    found = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                found.append((inner, target))
    return found


def all_panels(dashboard: dict) -> list[dict]:
    return [inner for panel in dashboard["panels"] for inner in [panel, *panel.get("panels", [])]]


def query_variables(dashboard: dict) -> list[dict]:
    """The template variables that run a Prometheus query (not the datasource picker)."""
    return [v for v in dashboard["templating"]["list"] if v["type"] == "query"]


def label_values_selector(variable: dict) -> str:
    """The series selector of a `label_values(selector, label)` variable query."""
    query = variable["query"]["query"]
    match = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
    assert match, f"variable {variable['name']}: not a label_values(selector, label) query: {query}"
    return match.group(1)


def promql_string(text: str) -> str:
    """`text` as the inside of a double-quoted PromQL string."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def substitute(expr: str, instance: str) -> str:
    """The query as Grafana sends it with $instance set to one instance and $backend to All."""
    for name, value in INTERVALS.items():
        expr = expr.replace(name, value)
    instance_regex = promql_string(re.escape(instance))
    for name in ("${instance}", "$instance"):
        expr = expr.replace(name, instance_regex)
    for name in ("${backend}", "$backend"):
        expr = expr.replace(name, ".*")
    leftover = re.search(r"\$\{?\w+", expr)
    assert leftover is None, f"unsubstituted variable {leftover.group(0)} in {expr}"
    return expr


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (not functions, keywords, label names or strings)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "{}", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "[]", text)  # range and subquery durations
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", text):
        name = match.group(1)
        if name.lower() not in KEYWORDS and not re.fullmatch(r"\d+[smhdwy]", name):
            names.add(name)
    return names
