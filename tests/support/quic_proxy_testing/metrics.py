"""The proxy's /metrics (Prometheus text format) as samples."""

from __future__ import annotations

import re
from typing import NamedTuple

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class Sample(NamedTuple):
    name: str
    labels: dict[str, str]
    value: float


def parse_metrics(text: str) -> list[Sample]:
    """Every sample line of a scrape, comments and blank lines skipped."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        if match is None:
            continue
        labels = dict(LABEL.findall(match.group(3) or ""))
        samples.append(Sample(match.group(1), labels, float(match.group(4))))
    return samples


def metric_sum(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of every sample of `name` whose labels include `labels` (0 while there is none)."""
    return sum(
        sample.value
        for sample in samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )
