"""docs/metrics.md lists exactly the metrics the proxy has: by the names in src/metrics/ (and the process
metrics src/admin/exposition.rs writes at scrape time), and by the
families, types and labels of a real proxy's /metrics after a request over each listener.

Both directions count: a metric the code or the proxy has and the page does not fails, and so does one the
page lists that the code or the proxy no longer has. Failures name every metric that differs.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from conftest import ROOT, Stack, http_get

DOC = ROOT / "docs" / "metrics.md"
# Where metric names are written: the name constants, and the process metrics rendered at scrape time.
METRIC_SOURCES = sorted((ROOT / "src" / "metrics").glob("*.rs")) + [ROOT / "src" / "admin" / "exposition.rs"]
# How long the listeners' last events may take to reach /metrics: a QUIC connection is recorded when it
# closes, the first health probe runs one interval after start-up.
SETTLE_TIMEOUT = 20.0

# | `name` | type | `label`, `label` or — | unit | meaning |
ROW = re.compile(r"^\|\s*`([a-zA-Z_:][a-zA-Z0-9_:]*)`\s*\|\s*([a-z]+)\s*\|([^|]*)\|([^|]*)\|([^|]*)\|\s*$")
TYPE_LINE = re.compile(r"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) ([a-z]+)\s*$", re.M)
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+\S+", re.M)
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*"')
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


@dataclass(frozen=True)
class Family:
    kind: str
    labels: frozenset[str]


def documented() -> dict[str, Family]:
    families: dict[str, Family] = {}
    for line in DOC.read_text().splitlines():
        match = ROW.match(line)
        if not match:
            continue
        name, kind, labels, unit, meaning = (group.strip() for group in match.groups())
        assert name not in families, f"docs/metrics.md lists {name} twice"
        assert kind in {"counter", "gauge", "histogram"}, f"docs/metrics.md: {name} has type {kind!r}"
        assert unit and meaning, f"docs/metrics.md: {name} needs a unit and a meaning"
        for suffix, word in (("_seconds", "seconds"), ("_bytes", "bytes")):
            if name.endswith(suffix) or name.endswith(f"{suffix}_total"):
                assert word in unit, f"docs/metrics.md: {name} is in {word} but its unit says {unit!r}"
        names = re.findall(r"`([a-zA-Z_][a-zA-Z0-9_]*)`", labels)
        assert names or labels == "—", f"docs/metrics.md: {name}: labels are `name`, `name` or —, not {labels!r}"
        families[name] = Family(kind, frozenset(names))
    assert families, "no metric table found in docs/metrics.md"
    return families


def defined_in_code() -> set[str]:
    """The metric names the code defines: the name constants and the process metrics written at scrape time."""
    source = "\n".join(path.read_text() for path in METRIC_SOURCES)
    names = set(re.findall(r'^pub const [A-Z0-9_]+: &str = "([^"]+)";', source, re.M))
    names |= set(re.findall(r'metric\(\s*&mut out,\s*"([a-z_:][a-z0-9_:]*)"', source))
    assert names, "no metric names found in src/metrics/ and src/admin/exposition.rs"
    return names


def exported(text: str) -> dict[str, Family]:
    """The families of a scrape: each `# TYPE` line, with the label names its samples carry."""
    kinds = dict(TYPE_LINE.findall(text))
    labels: dict[str, set[str]] = {name: set() for name in kinds}
    for match in SAMPLE.finditer(text):
        sample, label_text = match.group(1), match.group(2) or ""
        family = sample
        if sample not in kinds:
            family = next((sample[: -len(s)] for s in HISTOGRAM_SUFFIXES if sample.endswith(s)), sample)
        names = set(LABEL.findall(label_text))
        if kinds.get(family) == "histogram":
            names.discard("le")
        labels.setdefault(family, set()).update(names)
    return {name: Family(kinds.get(name, "untyped"), frozenset(labels[name])) for name in labels}


def differences(what: str, doc: dict[str, Family], other: dict[str, Family], compare_details: bool) -> list[str]:
    problems = []
    for name in sorted(set(other) - set(doc)):
        problems.append(f"  {name}: in {what}, not in docs/metrics.md")
    for name in sorted(set(doc) - set(other)):
        problems.append(f"  {name}: in docs/metrics.md, not in {what}")
    if compare_details:
        for name in sorted(set(doc) & set(other)):
            if doc[name].kind != other[name].kind:
                problems.append(f"  {name}: docs/metrics.md says {doc[name].kind}, {what} says {other[name].kind}")
            if doc[name].labels != other[name].labels:
                problems.append(
                    f"  {name}: docs/metrics.md says labels {sorted(doc[name].labels)}, "
                    f"{what} has {sorted(other[name].labels)}"
                )
    return problems


def test_the_doc_lists_exactly_the_metrics_the_code_defines():
    code = {name: Family("", frozenset()) for name in defined_in_code()}
    problems = differences("src/metrics/", documented(), code, compare_details=False)
    assert not problems, "docs/metrics.md and src/metrics/ differ:\n" + "\n".join(problems)


def test_the_doc_matches_a_running_proxy_after_a_request_on_each_listener(fresh_proxy, dead_address):
    stack = Stack(fresh_proxy, dead_address)
    assert stack.h1("GET", "/").status_code == 200  # the plain HTTP/1.1 fallback listener
    assert stack.h2("GET", "/").status_code == 200  # TLS over TCP
    assert stack.h3("GET", "/").status_code == 200  # QUIC
    stack.wait_for_series(r'^connections_open\{protocol="h3"\} 0$', "closed HTTP/3 connection")

    doc = documented()
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        status, body = http_get(f"http://{fresh_proxy.admin_address}/metrics")
        assert status == 200, body
        problems = differences("the proxy's /metrics", doc, exported(body.decode()), compare_details=True)
        if not problems or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not problems, "docs/metrics.md and a running proxy's /metrics differ:\n" + "\n".join(problems)
