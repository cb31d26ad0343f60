"""The Dockerfile passes hadolint with nothing to report, at any severity."""

from __future__ import annotations

import json

from helpers import output, run, tool
from quic_proxy_testing import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def lint(path) -> tuple[int, list[dict]]:
    done = run([tool("hadolint"), "--format", "json", "--failure-threshold", "style", path])
    try:
        return done.returncode, json.loads(done.stdout)
    except ValueError:
        raise AssertionError(output(done)) from None


def test_hadolint_reports_nothing():
    status, findings = lint(DOCKERFILE)
    assert findings == []
    assert status == 0


def test_hadolint_notices_a_root_user(tmp_path):
    """The lint above can fail: the same Dockerfile ending as root is reported (DL3002)."""
    copy = tmp_path / "Dockerfile"
    copy.write_text(DOCKERFILE.read_text() + "USER root\n")
    status, findings = lint(copy)
    assert status != 0
    assert "DL3002" in {finding["code"] for finding in findings}, findings
