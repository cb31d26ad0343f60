"""The dashboard type-checked against Grafana's own types (@grafana/schema) with `tsc --strict`.

monitoring/schema-check/check.mjs turns the dashboard into TypeScript (each panel typed by its panel type)
and runs tsc; scripts/test-monitoring.sh installs its node_modules with `npm ci`. Broken copies of the
dashboard prove the check finds what it is there to find.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import DASHBOARD, MONITORING
import queries

SCHEMA_CHECK = MONITORING / "schema-check"
CHECK_TIMEOUT = 300


def run_check(*dashboards: Path) -> subprocess.CompletedProcess:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node not found: scripts/test-monitoring.sh installs Node.js")
    if not (SCHEMA_CHECK / "node_modules" / "typescript").is_dir():
        pytest.fail(f"{SCHEMA_CHECK}/node_modules is missing: run scripts/test-monitoring.sh (it runs npm ci)")
    return subprocess.run(
        [node, str(SCHEMA_CHECK / "check.mjs"), *map(str, dashboards)],
        capture_output=True, text=True, timeout=CHECK_TIMEOUT,
    )


def errors_by_file(output: str, files: list[Path]) -> dict[Path, list[str]]:
    """check.mjs's error lines, each starting with the dashboard file it is about."""
    found: dict[Path, list[str]] = {file: [] for file in files}
    for line in output.splitlines():
        for file in files:
            if line.startswith(f"{file}: "):
                found[file].append(line)
    return found


def panel(dashboard: dict, title: str) -> dict:
    return next(p for p in queries.all_panels(dashboard) if p["title"] == title)


def test_installed_packages_are_the_locked_versions():
    package = json.loads((SCHEMA_CHECK / "package.json").read_text())
    lock = json.loads((SCHEMA_CHECK / "package-lock.json").read_text())
    for name, wanted in package["devDependencies"].items():
        assert lock["packages"][f"node_modules/{name}"]["version"] == wanted, name
        installed = SCHEMA_CHECK / "node_modules" / name / "package.json"
        assert installed.is_file(), f"{name} not installed: run scripts/test-monitoring.sh"
        assert json.loads(installed.read_text())["version"] == wanted, name


def test_the_dashboard_matches_grafanas_types():
    done = run_check(DASHBOARD)
    assert done.returncode == 0, f"tsc found problems in the dashboard:\n{done.stdout}{done.stderr}"
    assert f"{DASHBOARD}: matches @grafana/schema" in done.stdout


# Each broken copy: what is changed, and the panel and tsc error the check must report for it.
def legend_without_calcs(d: dict) -> None:
    # What the dashboard had before it was checked against the schema: Grafana's VizLegendOptions requires
    # `calcs`, even for a hidden legend.
    del panel(d, "Backend health over time")["options"]["legend"]["calcs"]


def unknown_panel_type(d: dict) -> None:
    panel(d, "CPU")["type"] = "cpu-graph"


def enum_value_outside_the_schema(d: dict) -> None:
    panel(d, "Memory (RSS)")["options"]["tooltip"]["mode"] = "everything"


def misspelt_custom_field_option(d: dict) -> None:
    custom = panel(d, "Request rate by method and backend")["fieldConfig"]["defaults"]["custom"]
    custom["lineWidht"] = custom.pop("lineWidth")


def custom_field_option_on_a_stat_panel(d: dict) -> None:
    panel(d, "Total requests")["fieldConfig"]["defaults"]["custom"] = {"lineWidth": 1}


def unknown_dashboard_key(d: dict) -> None:
    d["refreshInterval"] = d.pop("refresh")


BROKEN = {
    "legend-without-calcs": (
        legend_without_calcs,
        '"Backend health over time" (state-timeline)',
        "error TS2741: Property 'calcs' is missing",
    ),
    "unknown-panel-type": (
        unknown_panel_type,
        '"CPU" (cpu-graph)',
        "error TS2344: Type '\"cpu-graph\"' does not satisfy the constraint 'keyof PanelTypes'",
    ),
    "enum-value-outside-the-schema": (
        enum_value_outside_the_schema,
        '"Memory (RSS)" (timeseries)',
        "error TS2322: Type '\"everything\"' is not assignable to type '\"multi\" | \"none\" | \"single\"'",
    ),
    "misspelt-custom-field-option": (
        misspelt_custom_field_option,
        '"Request rate by method and backend" (timeseries)',
        "error TS2353: Object literal may only specify known properties, and '\"lineWidht\"' does not exist",
    ),
    "custom-field-option-on-a-stat-panel": (
        custom_field_option_on_a_stat_panel,
        '"Total requests" (stat)',
        "error TS2322: Type 'number' is not assignable to type 'never'",
    ),
    "unknown-dashboard-key": (
        unknown_dashboard_key,
        "dashboard",
        "error TS2353: Object literal may only specify known properties, and '\"refreshInterval\"' does not exist",
    ),
}


def test_the_check_reports_each_broken_copy_at_its_panel_and_passes_the_real_one(dashboard, tmp_path):
    files = []
    for name, (breaks, _where, _error) in BROKEN.items():
        broken = copy.deepcopy(dashboard)
        breaks(broken)
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(broken, indent=2))
        files.append(path)
    # One tsc run for all of them (and the real dashboard), each file's errors told apart by their prefix.
    done = run_check(DASHBOARD, *files)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    found = errors_by_file(output, [DASHBOARD, *files])
    assert not found[DASHBOARD], output
    for path, (_breaks, where, error) in zip(files, BROKEN.values()):
        matching = [line for line in found[path] if where in line and error in line]
        assert matching, f"{path.name}: expected {error!r} at {where}; the check said:\n" + "\n".join(found[path])


def test_a_file_that_is_not_json_fails(tmp_path):
    path = tmp_path / "truncated.json"
    path.write_text(DASHBOARD.read_text()[:500])
    done = run_check(path)
    assert done.returncode == 1 and f"{path}: " in done.stderr, done.stdout + done.stderr
