"""monitoring/compose.yaml and Grafana's provisioning files: valid by their specifications, and wired together.

There is no Docker engine or Grafana server here, so the files are checked by what can run: the Compose
specification's JSON schema (bundled with check-jsonschema), the shapes Grafana documents for its provisioning
files, promtool on the Prometheus config, the proxy's own `check` on its config, and the references between
them (mounts, service names, ports, paths).
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from conftest import DASHBOARD, MONITORING, PROMETHEUS_DIR, ROOT, load_yaml, tool

COMPOSE = MONITORING / "compose.yaml"
PROVISIONING = MONITORING / "grafana" / "provisioning"
DATASOURCES = PROVISIONING / "datasources" / "prometheus.yaml"
PROVIDERS = PROVISIONING / "dashboards" / "quic-proxy.yaml"
QUIC_PROXY_SERVICES = ["certs", "backend1", "backend2", "backend3", "proxy"]

# The provisioning file shapes of Grafana's documentation ("Provision Grafana": data sources, dashboards),
# closed to unknown keys so a misspelt one fails here instead of being ignored by Grafana.
STRING, BOOLEAN, INTEGER = {"type": "string"}, {"type": "boolean"}, {"type": "integer"}
DURATION = {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h|d|w|y)$"}
PROMETHEUS_JSON_DATA = {
    "type": "object",
    "additionalProperties": False,
    "patternProperties": {r"^httpHeaderName[0-9]+$": STRING},
    "properties": {
        "timeInterval": DURATION,
        "queryTimeout": DURATION,
        "httpMethod": {"enum": ["GET", "POST"]},
        "customQueryParameters": STRING,
        "manageAlerts": BOOLEAN,
        "alertmanagerUid": STRING,
        "prometheusType": {"enum": ["Prometheus", "Cortex", "Mimir", "Thanos"]},
        "prometheusVersion": STRING,
        "cacheLevel": {"enum": ["Low", "Medium", "High", "None"]},
        "incrementalQuerying": BOOLEAN,
        "incrementalQueryOverlapWindow": DURATION,
        "disableRecordingRules": BOOLEAN,
        "tlsAuth": BOOLEAN,
        "tlsAuthWithCACert": BOOLEAN,
        "tlsSkipVerify": BOOLEAN,
        "serverName": STRING,
        "timeout": {"type": ["string", "integer"]},
        "keepCookies": {"type": "array", "items": STRING},
    },
}
DATASOURCES_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "datasources"],
    "properties": {
        "apiVersion": {"const": 1},
        "prune": BOOLEAN,
        "deleteDatasources": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "properties": {"name": STRING, "orgId": INTEGER, "orgName": STRING},
            },
        },
        "datasources": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "type", "access"],
                "properties": {
                    "name": STRING,
                    "type": STRING,
                    "access": {"enum": ["proxy", "direct"]},
                    "orgId": INTEGER,
                    "orgName": STRING,
                    # Grafana's rule for data source uids.
                    "uid": {"type": "string", "pattern": r"^[a-zA-Z0-9_-]{1,40}$"},
                    "url": {"type": "string", "pattern": r"^https?://[^/\s]+(/\S*)?$"},
                    "user": STRING,
                    "database": STRING,
                    "basicAuth": BOOLEAN,
                    "basicAuthUser": STRING,
                    "withCredentials": BOOLEAN,
                    "isDefault": BOOLEAN,
                    "correlations": {"type": "array", "items": {"type": "object"}},
                    "jsonData": {"type": "object"},
                    "secureJsonData": {"type": "object", "additionalProperties": STRING},
                    "version": INTEGER,
                    "editable": BOOLEAN,
                },
                "if": {"properties": {"type": {"const": "prometheus"}}},
                "then": {"properties": {"jsonData": PROMETHEUS_JSON_DATA}},
            },
        },
    },
}
PROVIDERS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "providers"],
    "properties": {
        "apiVersion": {"const": 1},
        "providers": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "options"],
                "properties": {
                    "name": STRING,
                    "orgId": INTEGER,
                    "folder": STRING,
                    "folderUid": {"type": "string", "pattern": r"^[a-zA-Z0-9_-]{1,40}$"},
                    "type": {"const": "file"},
                    "disableDeletion": BOOLEAN,
                    "updateIntervalSeconds": INTEGER,
                    "allowUiUpdates": BOOLEAN,
                    "options": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["path"],
                        "properties": {
                            "path": {"type": "string", "pattern": "^/"},
                            "foldersFromFilesStructure": BOOLEAN,
                        },
                    },
                },
            },
        },
    },
}


def schema_errors(schema: dict, document) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in validator.iter_errors(document)]


def check_compose(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True, timeout=120,
    )


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE)


def mounts(service: dict) -> dict[str, str]:
    """Container path -> source (a path relative to compose.yaml, or a volume name) of a service's mounts."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *_mode = volume.split(":")
        found[target] = source
    return found


def mounted_file(service: dict, container_path: str) -> Path:
    """The repository file a service sees at `container_path` through one of its bind mounts."""
    for target, source in mounts(service).items():
        if source.startswith(".") and (container_path == target or container_path.startswith(target + "/")):
            return (MONITORING / source / container_path[len(target) :].lstrip("/")).resolve()
    pytest.fail(f"nothing of the repository is mounted at {container_path}")


# --- the compose file ---------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification():
    done = check_compose(COMPOSE)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok -- validation done" in done.stdout


def test_compose_validation_rejects_a_misspelt_key(tmp_path):
    broken = tmp_path / "compose.yaml"
    text = COMPOSE.read_text().replace("stop_grace_period: 35s", "stop_grace_period: 35s\n    restartt: always")
    broken.write_text(text)
    done = check_compose(broken)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "'restartt' was unexpected" in done.stdout, done.stdout


def test_compose_builds_the_repositorys_image_and_mounts_only_what_exists(compose):
    services = compose["services"]
    for name in QUIC_PROXY_SERVICES:
        build = services[name]["build"]
        assert (MONITORING / build["context"]).resolve() == ROOT, name
        assert (ROOT / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']} not found"
        assert services[name]["image"] == services["proxy"]["image"], name
    for name, service in services.items():
        for target, source in mounts(service).items():
            if source.startswith("."):
                assert (MONITORING / source).exists(), f"{name}: {source} (mounted at {target}) not found"
            else:
                assert source in compose["volumes"], f"{name}: volume {source} is not declared"
        depends = service.get("depends_on", [])
        assert set(depends) <= set(services), f"{name} depends on {set(depends) - set(services)}"


def test_compose_proxy_reads_the_mounted_config_with_the_certs_services_pair(compose):
    services = compose["services"]
    proxy = services["proxy"]
    # The image's default command reads /etc/quic-proxy/proxy.yaml; compose.yaml mounts its config there.
    cmd = re.search(r"^CMD (\[.*\])$", (ROOT / "Dockerfile").read_text(), re.M)
    assert cmd and json.loads(cmd.group(1)) == ["--config", "/etc/quic-proxy/proxy.yaml"]
    assert "command" not in proxy
    config_file = mounted_file(proxy, "/etc/quic-proxy/proxy.yaml")
    config = load_yaml(config_file)
    tls = config["server"]["tls"]
    certs_volume = mounts(services["certs"])["/certs"]
    tls_dir = next(target for target, source in mounts(proxy).items() if source == certs_volume)
    assert tls == {"cert_file": f"{tls_dir}/server.crt", "key_file": f"{tls_dir}/server.key"}
    generate = " ".join(services["certs"]["command"])
    assert "quic-proxy cert generate --out /certs" in generate and "chown 10001:10001" in generate
    assert proxy["depends_on"]["certs"]["condition"] == "service_completed_successfully"


def test_compose_backends_are_the_ones_the_proxy_config_names(compose):
    services = compose["services"]
    config = load_yaml(mounted_file(services["proxy"], "/etc/quic-proxy/proxy.yaml"))
    for backend in config["backends"]:
        host, port = re.fullmatch(r"http://([\w-]+):(\d+)", backend["url"]).groups()
        assert services[host]["command"] == ["backend", "--listen", f"0.0.0.0:{port}", "--name", backend["name"]]
        assert host in services["proxy"]["depends_on"]


def test_compose_proxy_config_is_accepted_by_the_proxy(compose, proxy_bin, cert_pair, tmp_path):
    config_file = mounted_file(compose["services"]["proxy"], "/etc/quic-proxy/proxy.yaml")
    cert, key = cert_pair
    local = tmp_path / "proxy.yaml"
    local.write_text(
        config_file.read_text()
        .replace('"/etc/quic-proxy/tls/server.crt"', json.dumps(str(cert)))
        .replace('"/etc/quic-proxy/tls/server.key"', json.dumps(str(key)))
    )
    done = subprocess.run([str(proxy_bin), "check", "--config", str(local)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "backends: 3" in done.stdout and "admin: [::]:9090" in done.stdout, done.stdout


def test_compose_prometheus_scrapes_the_proxy_with_the_alert_rules(compose):
    services = compose["services"]
    prometheus = services["prometheus"]
    flags = dict(arg.split("=", 1) for arg in prometheus["command"])
    config_file = mounted_file(prometheus, flags["--config.file"])
    assert config_file.parent == PROMETHEUS_DIR
    done = subprocess.run(
        [tool("promtool"), "check", "config", str(config_file)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "alerts.yml" in done.stdout and "SUCCESS" in done.stdout, done.stdout
    config = load_yaml(config_file)
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "quic-proxy"  # the job the alert rules select
    proxy_config = load_yaml(mounted_file(services["proxy"], "/etc/quic-proxy/proxy.yaml"))
    admin_port = proxy_config["telemetry"]["metrics"]["address"].rsplit(":", 1)[1]
    assert job["static_configs"] == [{"targets": [f"proxy:{admin_port}"]}]


# --- Grafana's provisioning -----------------------------------------------------------------------------


def test_provisioning_files_have_the_shape_grafana_documents():
    for schema, path in ((DATASOURCES_SCHEMA, DATASOURCES), (PROVIDERS_SCHEMA, PROVIDERS)):
        errors = schema_errors(schema, load_yaml(path))
        assert not errors, f"{path}:\n" + "\n".join(errors)


def test_provisioning_shapes_reject_misspelt_and_missing_keys():
    datasources = load_yaml(DATASOURCES)
    misspelt = copy.deepcopy(datasources)
    misspelt["datasources"][0]["isDefualt"] = misspelt["datasources"][0].pop("isDefault")
    assert any("'isDefualt' was unexpected" in e for e in schema_errors(DATASOURCES_SCHEMA, misspelt))
    interval = copy.deepcopy(datasources)
    interval["datasources"][0]["jsonData"]["timeinterval"] = interval["datasources"][0]["jsonData"].pop("timeInterval")
    assert any("'timeinterval' does not match any" in e for e in schema_errors(DATASOURCES_SCHEMA, interval))
    providers = load_yaml(PROVIDERS)
    del providers["providers"][0]["options"]["path"]
    assert any("'path' is a required property" in e for e in schema_errors(PROVIDERS_SCHEMA, providers))


def test_grafana_in_compose_gets_the_provisioning_and_the_dashboards_where_they_point(compose):
    grafana = compose["services"]["grafana"]
    assert mounted_file(grafana, "/etc/grafana/provisioning") == PROVISIONING
    (provider,) = load_yaml(PROVIDERS)["providers"]
    dashboards = mounted_file(grafana, provider["options"]["path"])
    assert dashboards == DASHBOARD.parent and sorted(dashboards.glob("*.json")) == [DASHBOARD]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert mounted_file(grafana, home) == DASHBOARD


def test_provisioned_datasource_is_compose_prometheus_and_what_the_dashboard_resolves_to(compose, dashboard):
    (datasource,) = load_yaml(DATASOURCES)["datasources"]
    prometheus = compose["services"]["prometheus"]
    # Prometheus listens on its default port inside its container; compose.yaml publishes it elsewhere.
    assert "--web.listen-address" not in " ".join(prometheus["command"])
    assert datasource["url"] == "http://prometheus:9090"
    assert datasource["type"] == "prometheus" and datasource["isDefault"] is True
    # The dashboard's DS_PROMETHEUS variable picks the default data source of its query's type.
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "DS_PROMETHEUS")
    assert variable["type"] == "datasource" and variable["query"] == datasource["type"]
    # $__rate_interval is derived from the data source's scrape interval: it must be Prometheus's.
    flags = dict(arg.split("=", 1) for arg in prometheus["command"])
    scrape = load_yaml(mounted_file(prometheus, flags["--config.file"]))["global"]["scrape_interval"]
    assert datasource["jsonData"]["timeInterval"] == scrape

