"""The systemd unit (deploy/systemd): `systemd-analyze verify` finds nothing to report, `systemd-analyze
security` rates its sandbox, and the sysusers file creates the user it runs as.

verify checks that ExecStart's binary exists, so it runs on a copy whose ExecStart names the built binary;
everything else in the copy is the unit as shipped.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from helpers import output, run, tool
from quic_proxy_testing import ROOT

UNIT = ROOT / "deploy" / "systemd" / "quic-proxy.service"
SYSUSERS = ROOT / "deploy" / "systemd" / "quic-proxy.sysusers"
INSTALLED_BINARY = "/usr/local/bin/quic-proxy"
DEFAULT_DRAIN_SECONDS = 30
# systemd-analyze security rates exposure from 0 (locked down) to 10; 2 or less is a tightly sandboxed
# network service ("OK" starts below 5).
MAX_EXPOSURE = 2.0


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if match:
            found.setdefault(match.group(1), []).append(match.group(2))
    return found


@pytest.fixture
def unit_copy(debug_bin: Path, tmp_path: Path) -> Path:
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED_BINARY} " in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(f"ExecStart={INSTALLED_BINARY} ", f"ExecStart={debug_bin} "))
    return copy


def test_verify_reports_nothing(unit_copy):
    done = run([tool("systemd-analyze"), "verify", unit_copy], cwd=unit_copy.parent)
    assert done.returncode == 0, output(done)
    # verify warns about unknown or misplaced directives and still exits 0: its output must be empty.
    assert (done.stdout + done.stderr).strip() == "", output(done)


def test_verify_notices_a_misspelt_directive(unit_copy):
    """The check above can fail: a misspelt hardening directive, which systemd would ignore, is reported."""
    unit_copy.write_text(unit_copy.read_text().replace("\nProtectHome=yes\n", "\nProtectHom=yes\n"))
    done = run([tool("systemd-analyze"), "verify", unit_copy], cwd=unit_copy.parent)
    assert "Unknown key 'ProtectHom'" in done.stdout + done.stderr, output(done)


def test_verify_notices_a_missing_binary(unit_copy, tmp_path):
    unit_copy.write_text(re.sub(r"ExecStart=\S+", f"ExecStart={tmp_path}/missing/quic-proxy", unit_copy.read_text()))
    done = run([tool("systemd-analyze"), "verify", unit_copy], cwd=unit_copy.parent)
    assert done.returncode != 0, output(done)
    assert "missing/quic-proxy" in done.stdout + done.stderr, output(done)


def test_security_exposure_is_low(unit_copy):
    done = run([tool("systemd-analyze"), "security", "--offline=yes", "--no-pager", unit_copy])
    assert done.returncode == 0, output(done)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert match, output(done)
    assert float(match.group(1)) <= MAX_EXPOSURE, output(done)
    # The rating's own view of the points that matter most for an internet-facing proxy.
    for granted in (
        "NoNewPrivileges=",
        "User=/DynamicUser=",
        "ProtectSystem=",
        "SystemCallFilter=~@privileged",
        "CapabilityBoundingSet=~CAP_SYS_ADMIN",
        "RestrictAddressFamilies=~AF_PACKET",
    ):
        line = next((l for l in done.stdout.splitlines() if granted in l), None)
        assert line is not None and line.startswith("✓"), f"{granted}: {line}\n{done.stdout}"


def test_unit_runs_the_proxy_with_only_the_port_capability():
    unit = directives(UNIT.read_text())
    assert unit["ExecStart"] == [f"{INSTALLED_BINARY} --config /etc/quic-proxy/proxy.yaml"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert unit["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert unit["DynamicUser"] == ["yes"]
    assert unit["NoNewPrivileges"] == ["yes"]
    assert unit["ProtectSystem"] == ["strict"]
    assert int(unit["LimitNOFILE"][0]) >= 65536
    # SIGTERM drains for server.drain_timeout; systemd must not SIGKILL before it ends.
    stop = re.fullmatch(r"(\d+)s", unit["TimeoutStopSec"][0])
    assert stop and int(stop.group(1)) > DEFAULT_DRAIN_SECONDS, unit["TimeoutStopSec"]
    # A bad config exits 64; restarting would only repeat the error.
    assert unit["RestartPreventExitStatus"] == ["64"]


def test_sysusers_creates_the_service_user(tmp_path):
    """systemd-sysusers, on an empty root, creates the user and group the unit names."""
    unit = directives(UNIT.read_text())
    (tmp_path / "etc").mkdir()
    (tmp_path / "usr" / "lib" / "sysusers.d").mkdir(parents=True)
    shutil.copyfile(SYSUSERS, tmp_path / "usr" / "lib" / "sysusers.d" / "quic-proxy.conf")
    done = run([tool("systemd-sysusers"), f"--root={tmp_path}"])
    assert done.returncode == 0, output(done)
    users = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc" / "passwd").read_text().splitlines()}
    groups = {line.split(":")[0] for line in (tmp_path / "etc" / "group").read_text().splitlines()}
    user = users[unit["User"][0]]
    assert unit["Group"][0] in groups
    assert user[6] == "/usr/sbin/nologin"
    assert 0 < int(user[2]) < 1000, "a system user"
