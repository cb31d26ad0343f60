"""The Kubernetes base (deploy/kubernetes): `kubectl kustomize` renders it, `kubernetes-validate --strict`
accepts every object, and the objects agree with each other and with the proxy's configuration in ways no
schema checks (both protocols on port 443, probe ports, mounted files, the termination arithmetic). With no
API server here, the pod itself is played by the proxy run with the Deployment's args and volume layout."""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
from pathlib import Path, PurePosixPath

import pytest
import yaml

from helpers import (
    CHECK_TIMEOUT,
    ETC,
    etc_layout,
    in_netns,
    netns_pids,
    output,
    rebased,
    run,
    tool,
)
from quic_proxy_testing import ROOT, Process

BASE = ROOT / "deploy" / "kubernetes"
# Kubernetes 1.30 is the oldest release the base supports (the preStop `sleep` action); the newest is the
# default of kubernetes-validate.
VERSIONS = ["1.30.0", None]


@pytest.fixture(scope="module")
def rendered() -> str:
    done = run([tool("kubectl"), "kustomize", BASE])
    assert done.returncode == 0, output(done)
    return done.stdout


@pytest.fixture(scope="module")
def objects(rendered: str) -> dict[tuple[str, str], dict]:
    docs = [doc for doc in yaml.safe_load_all(rendered) if doc]
    by_key = {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}
    assert len(by_key) == len(docs), "two objects of the same kind and name"
    return by_key


@pytest.fixture(scope="module")
def deployment(objects) -> dict:
    return objects[("Deployment", "quic-proxy")]


@pytest.fixture(scope="module")
def container(deployment) -> dict:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


@pytest.fixture(scope="module")
def config(objects) -> dict:
    return yaml.safe_load(objects[("ConfigMap", "quic-proxy-config")]["data"]["proxy.yaml"])


def seconds(duration: str) -> float:
    """A config duration (`500ms`, `30s`, `5m`, `1h`) in seconds."""
    match = re.fullmatch(r"(\d+)(ms|s|m|h)", duration)
    assert match, duration
    return int(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def test_base_renders_every_object(objects):
    assert sorted(objects) == [
        ("ConfigMap", "quic-proxy-config"),
        ("Deployment", "quic-proxy"),
        ("HorizontalPodAutoscaler", "quic-proxy"),
        ("PodDisruptionBudget", "quic-proxy"),
        ("Secret", "quic-proxy-secrets"),
        ("Secret", "quic-proxy-tls"),
        ("Service", "quic-proxy"),
    ]


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v or "latest")
def test_kubernetes_validate_strict_accepts_every_object(rendered, objects, tmp_path, version):
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(rendered)
    args = [tool("kubernetes-validate"), "--strict"] + (["-k", version] if version else []) + [manifest]
    done = run(args)
    assert done.returncode == 0, output(done)
    # One "passed" line per object: none was left out as an unknown kind.
    passed = re.findall(r"passed for resource (\w+)/(\S+) against version", done.stdout + done.stderr)
    assert sorted((kind.lower(), name) for kind, name in passed) == sorted(
        (kind.lower(), name) for kind, name in objects
    ), output(done)


def test_strict_validation_rejects_a_misspelt_field(deployment, tmp_path):
    """The validation above is strict: a misspelt field, which a non-strict schema check lets through, fails."""
    broken = copy.deepcopy(deployment)
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    manifest = tmp_path / "broken.yaml"
    manifest.write_text(yaml.safe_dump(broken))
    done = run([tool("kubernetes-validate"), "--strict", manifest])
    assert done.returncode != 0, output(done)
    assert "readinesProbe" in done.stdout + done.stderr, output(done)


def test_service_carries_tcp_and_udp_on_443_and_tcp_80(objects, deployment, container, config):
    service = objects[("Service", "quic-proxy")]["spec"]
    assert service["type"] == "LoadBalancer"
    assert service["externalTrafficPolicy"] == "Local"
    assert sorted((p["port"], p["protocol"]) for p in service["ports"]) == [(80, "TCP"), (443, "TCP"), (443, "UDP")]
    assert service["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    # Each Service port reaches a container port of the same protocol, and those are the ports the
    # proxy's config listens on: server.address for both 443s, server.fallback_address for 80.
    container_ports = {p["name"]: p for p in container["ports"]}
    listens = {
        (port_of(config["server"]["address"]), "TCP"),
        (port_of(config["server"]["address"]), "UDP"),
        (port_of(config["server"]["fallback_address"]), "TCP"),
    }
    reached = set()
    for port in service["ports"]:
        target = container_ports[port["targetPort"]]
        assert target["protocol"] == port["protocol"], port
        reached.add((target["containerPort"], target["protocol"]))
    assert reached == listens


def test_probes_and_scrape_annotations_use_the_admin_port(deployment, container, config):
    admin = {p["name"]: p["containerPort"] for p in container["ports"]}["admin"]
    assert admin == port_of(config["telemetry"]["metrics"]["address"])
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/live", "port": "admin"}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(admin)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_termination_grace_covers_prestop_and_drain(deployment, container, config):
    """The grace period starts with the preStop hook; the drain starts at SIGTERM after it; the kubelet kills
    at the end of the grace period. So grace > preStop + drain_timeout, with room for the last closes."""
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = seconds(config["server"]["drain_timeout"])
    assert pre_stop > 0
    assert grace >= pre_stop + drain + 5, (grace, pre_stop, drain)


def test_pod_runs_as_the_image_user_without_privileges(deployment, container):
    pod = deployment["spec"]["template"]["spec"]
    dockerfile_user = re.search(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert dockerfile_user, "the Dockerfile sets no numeric USER"
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True
    assert (context["runAsUser"], context["runAsGroup"]) == tuple(int(n) for n in dockerfile_user.groups())
    assert {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"} in context["sysctls"]
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    own = container["securityContext"]
    assert own["allowPrivilegeEscalation"] is False
    assert own["readOnlyRootFilesystem"] is True
    assert own["capabilities"] == {"drop": ["ALL"]}
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    # The image tag follows the crate's version, so a release bumps both together.
    version = re.search(r'^version = "([^"]+)"', (ROOT / "Cargo.toml").read_text(), re.M).group(1)
    assert container["image"] == f"quic-proxy:{version}"


def test_every_file_the_config_reads_is_mounted(objects, deployment, container, config):
    """--config names the ConfigMap's file through its volume, and each file the config reads (certificate,
    key, reset key, admin token) is a key of a Secret mounted where the config looks for it."""
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {PurePosixPath(m["mountPath"]): volumes[m["name"]] for m in container["volumeMounts"]}
    assert all(m["readOnly"] for m in container["volumeMounts"])

    def source(path: str) -> tuple[str, dict, str]:
        path = PurePosixPath(path)
        volume = mounts.get(path.parent)
        assert volume is not None, f"nothing is mounted at {path.parent}"
        if "configMap" in volume:
            kind, name = "ConfigMap", volume["configMap"]["name"]
        else:
            kind, name = "Secret", volume["secret"]["secretName"]
        obj = objects.get((kind, name))
        assert obj is not None, f"{path}: the base has no {kind} {name}"
        return kind, obj, path.name

    args = container["args"]
    kind, configmap, key = source(args[args.index("--config") + 1])
    assert kind == "ConfigMap"
    assert configmap["data"][key] == (BASE / "proxy.yaml").read_text()

    read = [
        config["server"]["tls"]["cert_file"],
        config["server"]["tls"]["key_file"],
        config["quic"]["stateless_reset_key_file"],
        config["admin"]["token_file"],
    ]
    for path in read:
        kind, secret, key = source(path)
        assert kind == "Secret"
        assert key in {**secret.get("data", {}), **secret.get("stringData", {})}, (path, secret["metadata"]["name"])
    assert objects[("Secret", "quic-proxy-tls")]["type"] == "kubernetes.io/tls"


def secret_files(objects, etc: Path) -> None:
    """Writes the base's Secrets under `etc` as the kubelet mounts them: tls/ and secrets/, a file per key."""
    for mount, name in (("tls", "quic-proxy-tls"), ("secrets", "quic-proxy-secrets")):
        secret = objects[("Secret", name)]
        (etc / mount).mkdir(parents=True, exist_ok=True)
        values = {key: base64.b64decode(value) for key, value in secret.get("data", {}).items()}
        values.update({key: value.encode() for key, value in secret.get("stringData", {}).items()})
        for key, value in values.items():
            (etc / mount / key).write_bytes(value)
            (etc / mount / key).chmod(0o600)


PLACEHOLDERS = [("tls", "tls.crt"), ("tls", "tls.key"), ("secrets", "stateless-reset-key"), ("secrets", "admin-token")]


@pytest.mark.parametrize("mount, key", PLACEHOLDERS, ids=lambda v: v)
def test_each_placeholder_secret_is_refused_by_the_proxy(objects, debug_bin, cert_pair, tmp_path, mount, key):
    """The base's Secrets hold placeholders; a pod started with any one of them must not run, so no
    deployment goes live with a key published in the repository."""
    etc = etc_layout(tmp_path / "etc", cert_pair)
    placeholders = tmp_path / "placeholders"
    secret_files(objects, placeholders)
    shutil.copyfile(placeholders / mount / key, etc / mount / key)
    config = rebased(BASE / "proxy.yaml", etc, tmp_path)
    done = run([debug_bin, "check", "--config", config], timeout=CHECK_TIMEOUT, cwd=tmp_path)
    assert done.returncode == 64, output(done)
    assert ETC not in config.read_text()


def test_an_overlay_with_real_secrets_gives_a_config_the_proxy_accepts(debug_bin, cert_pair, tmp_path):
    """The overlay that secret.yaml describes: secretGenerator with behavior: replace, from local files. Its
    rendering, mounted as the Deployment mounts it, passes `quic-proxy check`."""
    overlay = tmp_path / "overlay"
    etc_layout(overlay / "files", cert_pair)
    base = os.path.relpath(BASE, overlay)
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": "edge",
                "resources": [base],
                "secretGenerator": [
                    {
                        "name": "quic-proxy-tls",
                        "behavior": "replace",
                        "type": "kubernetes.io/tls",
                        "files": ["files/tls/tls.crt", "files/tls/tls.key"],
                        "options": {"disableNameSuffixHash": True},
                    },
                    {
                        "name": "quic-proxy-secrets",
                        "behavior": "replace",
                        "files": ["files/secrets/stateless-reset-key", "files/secrets/admin-token"],
                        "options": {"disableNameSuffixHash": True},
                    },
                ],
            }
        )
    )
    done = run([tool("kubectl"), "kustomize", overlay])
    assert done.returncode == 0, output(done)
    docs = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    objects = {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}
    assert all(doc["metadata"]["namespace"] == "edge" for doc in docs)
    assert all("stringData" not in objects[("Secret", name)] for name in ("quic-proxy-tls", "quic-proxy-secrets"))
    etc = tmp_path / "etc"
    secret_files(objects, etc)
    config = tmp_path / "proxy.yaml"
    config.write_text(objects[("ConfigMap", "quic-proxy-config")]["data"]["proxy.yaml"].replace(ETC, f"{etc}/"))
    done = run([debug_bin, "check", "--config", config], timeout=CHECK_TIMEOUT, cwd=tmp_path)
    assert done.returncode == 0, output(done)


def test_disruption_budget_and_autoscaler_follow_the_deployment(objects, deployment):
    pdb = objects[("PodDisruptionBudget", "quic-proxy")]["spec"]
    hpa = objects[("HorizontalPodAutoscaler", "quic-proxy")]["spec"]
    assert pdb["selector"] == deployment["spec"]["selector"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "quic-proxy"}
    assert hpa["minReplicas"] == deployment["spec"]["replicas"]
    assert hpa["minReplicas"] > pdb["maxUnavailable"]
    assert hpa["maxReplicas"] > hpa["minReplicas"]
    # A rollout never takes a pod away before its replacement is ready.
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_config_map_keeps_a_fixed_name_for_live_reload(container, objects):
    """A hashed ConfigMap name would roll every pod on a config change; the fixed name lets the kubelet update
    the mounted file, which --watch reloads."""
    assert ("ConfigMap", "quic-proxy-config") in objects
    assert "--watch" in container["args"]
    assert all("subPath" not in m for m in container["volumeMounts"])


def configmap_volume(directory: Path, files: dict[str, str], generation: int) -> None:
    """Writes a ConfigMap volume as the kubelet does: the files in a timestamped directory, `..data` pointing
    at it, and each key a symlink through `..data`. A later generation is swapped in by renaming a new
    `..data` over the old one, so readers see either the whole old set or the whole new one."""
    directory.mkdir(parents=True, exist_ok=True)
    payload = directory / f"..2026_01_01_00_00_0{generation}.000000000"
    payload.mkdir()
    for key, text in files.items():
        (payload / key).write_text(text)
    data = directory / "..data"
    previous = data.resolve() if data.is_symlink() else None
    (directory / "..data_tmp").symlink_to(payload.name)
    os.rename(directory / "..data_tmp", data)
    for key in files:
        if not (directory / key).is_symlink():
            (directory / key).symlink_to(f"..data/{key}")
    if previous is not None:
        shutil.rmtree(previous)


GET = """
import json, sys, time, urllib.error, urllib.request
url, want, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while True:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status, body = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read().decode()
    except OSError as error:
        status, body = None, str(error)
    if status == want or time.monotonic() > deadline:
        print(json.dumps({"status": status, "body": body}))
        break
    time.sleep(0.2)
"""


def test_pod_runs_the_config_map_config_with_the_deployment_args(
    objects, container, config, debug_bin, cert_pair, netns, tmp_path
):
    """The container as the Deployment runs it: its args, the ConfigMap, TLS and secret volumes at their mount
    paths (under a temporary directory), in a network namespace of its own where the config's fixed ports are
    free. The probes' endpoints answer on the admin port, and a ConfigMap update, swapped in the way the kubelet
    does it, is applied by --watch without a restart."""
    etc = etc_layout(tmp_path / "etc", cert_pair)
    mounts = {PurePosixPath(m["mountPath"]): m["name"] for m in container["volumeMounts"]}
    config_dir = etc / PurePosixPath(next(p for p, name in mounts.items() if name == "config")).relative_to(ETC)
    text = objects[("ConfigMap", "quic-proxy-config")]["data"]["proxy.yaml"].replace(ETC, f"{etc}/")
    configmap_volume(config_dir, {"proxy.yaml": text}, generation=1)
    args = [arg.replace(ETC, f"{etc}/") for arg in container["args"]]
    assert args[args.index("--config") + 1] == str(config_dir / "proxy.yaml")

    namespace = netns(unprivileged_low_ports=False)
    proxy = Process("quic-proxy (pod)", ["ip", "netns", "exec", namespace, str(debug_bin), *args], cwd=tmp_path)
    try:
        started = proxy.wait_for_message("quic-proxy started")
        assert started["config"] == str(config_dir / "proxy.yaml"), started
        admin = {p["name"]: p["containerPort"] for p in container["ports"]}["admin"]

        def get(probe: str, want: int) -> dict:
            path = container[probe]["httpGet"]["path"]
            done = in_netns(namespace, GET, f"http://127.0.0.1:{admin}{path}", str(want), "20")
            assert done.returncode == 0, output(done)
            return json.loads(done.stdout)

        # /ready waits for the first round of health checks (the backend `web` does not resolve here).
        assert get("readinessProbe", 200)["status"] == 200
        assert get("livenessProbe", 200)["status"] == 200

        updated = yaml.safe_load(text)
        # By address: a name would have no endpoints here, where nothing resolves (see DNS discovery).
        updated["backends"].append({"name": "web-canary", "url": "http://127.0.0.1:8080"})
        configmap_volume(config_dir, {"proxy.yaml": yaml.safe_dump(updated)}, generation=2)
        reloaded = proxy.wait_for(
            lambda e: str(e.get("message", "")).startswith("watched files changed"), "the --watch reload", 20
        )
        assert "not reloaded" not in reloaded["message"], reloaded
        assert "backends added: default/web-canary" in reloaded["message"], reloaded
        done = in_netns(namespace, GET, f"http://127.0.0.1:{admin}/api/backends", "200", "10")
        assert "web-canary" in json.loads(done.stdout)["body"], output(done)
        # Applied in place: the one process in the namespace is still the one started above.
        assert netns_pids(namespace) == [proxy.popen.pid]
    finally:
        status, killed = proxy.stop()
    assert (status, killed) == (0, False), proxy.stderr()
