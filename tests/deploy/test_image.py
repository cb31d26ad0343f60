"""The container image: the Dockerfile's runtime stage, built offline with buildah on a Debian 12 base made
here with debootstrap, runs the proxy from the image's own default configuration as a non-root user, and the
proxy answers /live.

No container registry is reachable, so the Rust build stage is not built: the runtime stage takes the host's
release binary through the prebuilt stage (BINARY_STAGE=prebuilt), as CI does. The base image is made once
per machine and kept in buildah's storage under a name that changes with its recipe.

Every run of the image gets a network namespace of its own, so the image's fixed ports (443, 80, 9090) never
meet another test's or the host's. In it the test sets net.ipv4.ip_unprivileged_port_start=0, as Docker
does in every container and the Kubernetes base does through the pod's sysctls; the proxy holds no
capability. buildah 1.28 has no --sysctl for `buildah run`, hence the namespace made beforehand.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import in_netns, netns_pids, output, run, tool
from quic_proxy_testing import ROOT, Process, target_dir

# Debian's crun 1.8 refuses hosts with a hybrid cgroup hierarchy (v1 controllers beside a v2 mount), which
# some CI machines have; Debian's runc runs on both.
RUNTIME = "runc"
SUITE = "bookworm"
BASE_NAME = "localhost/quic-proxy-test-base"
# The base is a minimal Debian, like debian:bookworm-slim: no package lists, no downloaded packages, and no
# device nodes (the container runtime provides /dev).
BASE_EXCLUDES = ["./dev/*", "./proc/*", "./sys/*", "./var/cache/apt/*", "./var/lib/apt/lists/*"]
DEBOOTSTRAP_TIMEOUT = 900
BUILD_TIMEOUT = 600
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
CONFIG = "/etc/quic-proxy/proxy.yaml"
TLS_DIR = "/etc/quic-proxy/tls"

# --- the base image ---------------------------------------------------------------------------------------


def apt_mirror(suite: str = SUITE) -> str:
    """The Debian mirror apt uses for `suite` main, from /etc/apt (one-line and deb822 sources)."""
    apt = Path("/etc/apt")
    entries: list[tuple[set[str], list[str], set[str], set[str]]] = []
    for path in [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 4:
                entries.append(({words[0]}, [words[1]], {words[2]}, set(words[3:])))
    for path in sorted((apt / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                key, value = line.split(":", 1)
                fields[key.strip().lower()] = value.strip()
            if fields.get("enabled", "yes").lower() == "no":
                continue
            entries.append(
                (
                    set(fields.get("types", "").split()),
                    fields.get("uris", "").split(),
                    set(fields.get("suites", "").split()),
                    set(fields.get("components", "").split()),
                )
            )
    for types, uris, suites, components in entries:
        if "deb" in types and suite in suites and "main" in components and uris:
            return uris[0]
    pytest.fail(f"no apt source in {apt} serves {suite} main")


def image_exists(name: str) -> bool:
    return run([tool("buildah"), "inspect", "--type", "image", name]).returncode == 0


def unmount_below(path: Path) -> None:
    """debootstrap mounts /proc and /sys in its target; a failed run can leave them mounted."""
    inside = [
        line.split()[1]
        for line in Path("/proc/mounts").read_text().splitlines()
        if line.split()[1].startswith(f"{path}/")
    ]
    for mount in sorted(inside, key=len, reverse=True):
        run(["umount", "-l", mount])


def build_base(name: str, mirror: str, scratch: Path) -> None:
    buildah = tool("buildah")
    work = Path(tempfile.mkdtemp(prefix="base-", dir=scratch))
    try:
        rootfs, tar = work / "rootfs", work / "rootfs.tar"
        done = run(
            [tool("debootstrap"), "--variant=minbase", SUITE, rootfs, mirror], timeout=DEBOOTSTRAP_TIMEOUT
        )
        assert done.returncode == 0, output(done)
        excludes = [f"--exclude={pattern}" for pattern in BASE_EXCLUDES]
        done = run(["tar", "-C", rootfs, "--numeric-owner", *excludes, "-cf", tar, "."], timeout=300)
        assert done.returncode == 0, output(done)
        done = run([buildah, "from", "scratch"])
        assert done.returncode == 0, output(done)
        container = done.stdout.strip()
        try:
            for step in (
                [buildah, "add", container, tar, "/"],
                [buildah, "config", "--cmd", "/bin/bash", container],
                [buildah, "commit", "--quiet", container, name],
            ):
                done = run(step, timeout=300)
                assert done.returncode == 0, output(done)
        finally:
            run([buildah, "rm", container])
    finally:
        unmount_below(work)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def base_image() -> str:
    """A Debian 12 minbase image made with debootstrap from apt's own mirror; built once per machine (under a
    lock, so parallel runs build it once) and kept in buildah's storage."""
    mirror = apt_mirror()
    recipe = json.dumps({"suite": SUITE, "variant": "minbase", "mirror": mirror, "excludes": BASE_EXCLUDES})
    name = f"{BASE_NAME}:{SUITE}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"
    scratch = target_dir() / "deploy"
    scratch.mkdir(parents=True, exist_ok=True)
    with open(scratch / "base-image.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not image_exists(name):
            build_base(name, mirror, scratch)
    return name


# --- the image under test ---------------------------------------------------------------------------------


@dataclass
class Image:
    id: str
    config: dict  # the Docker image config: User, ExposedPorts, Entrypoint, Cmd, Healthcheck, StopSignal


@pytest.fixture(scope="module")
def image(base_image: str, release_bin: Path, tmp_path_factory: pytest.TempPathFactory):
    """The runtime stage, built offline (no pulls, no network in RUN) from the repository as context."""
    context_binary = ROOT / "target" / "release" / "quic-proxy"
    if release_bin != context_binary:
        pytest.fail(f"the prebuilt stage copies {context_binary} from the build context; {release_bin} is elsewhere")
    buildah = tool("buildah")
    iidfile = tmp_path_factory.mktemp("image") / "iid"
    done = run(
        [
            buildah, "bud", "--runtime", RUNTIME, "--format", "docker", "--pull=never", "--network", "none",
            "--target", "runtime", "--build-arg", "BINARY_STAGE=prebuilt", "--build-arg", f"RUNTIME_IMAGE={base_image}",
            "--iidfile", iidfile, "--file", ROOT / "Dockerfile", ROOT,
        ],
        timeout=BUILD_TIMEOUT,
    )
    # Every image the build committed (each stage's and the final one), so that all are removed afterwards.
    made = re.findall(r"Copying config sha256:([0-9a-f]{64})", done.stdout + done.stderr)
    try:
        assert done.returncode == 0, output(done)
        image_id = iidfile.read_text().strip().removeprefix("sha256:")
        inspected = run([buildah, "inspect", "--type", "image", image_id])
        assert inspected.returncode == 0, output(inspected)
        yield Image(image_id, json.loads(inspected.stdout)["Docker"]["config"])
    finally:
        remove_images(made)


def remove_images(ids: list[str]) -> None:
    """buildah 1.28 leaves a working container behind for a stage that is only a FROM (the `binary` stage)."""
    buildah = tool("buildah")
    listed = run([buildah, "containers", "--all", "--json"])
    for container in json.loads(listed.stdout or "[]") or []:
        if container["imageid"] in ids:
            run([buildah, "rm", container["id"]])
    for image_id in reversed(ids):
        run([buildah, "rmi", image_id])


@pytest.fixture(scope="module")
def container(image: Image):
    name = f"quic-proxy-deploy-test-{os.getpid()}-{secrets.token_hex(4)}"
    done = run([tool("buildah"), "from", "--pull-never", "--name", name, image.id])
    assert done.returncode == 0, output(done)
    try:
        yield name
    finally:
        run([tool("buildah"), "rm", name])


@pytest.fixture
def tls_mount(cert_pair: tuple[Path, Path], tmp_path: Path, image: Image) -> Path:
    """The host's certificate as a kubernetes.io/tls Secret volume presents it to the pod: tls.crt and tls.key,
    owned by root, the key readable by the pod's group (fsGroup) only."""
    gid = int(image.config["User"].split(":")[1])
    tls = tmp_path / "tls"
    tls.mkdir()
    shutil.copyfile(cert_pair[0], tls / "tls.crt")
    shutil.copyfile(cert_pair[1], tls / "tls.key")
    os.chown(tls, 0, gid)
    os.chown(tls / "tls.key", 0, gid)
    tls.chmod(0o750)
    (tls / "tls.crt").chmod(0o444)
    (tls / "tls.key").chmod(0o440)
    return tls


def buildah_run(container: str, namespace: str, tls: Path | None, command: list[str]) -> list[str]:
    args = [tool("buildah"), "run", "--runtime", RUNTIME, "--network", f"ns:/run/netns/{namespace}"]
    if tls is not None:
        args += ["--volume", f"{tls}:{TLS_DIR}:ro"]
    return args + [container, "--", *command]


GET_LIVE = """
import sys, urllib.request
with urllib.request.urlopen(f"http://{sys.argv[1]}:9090/live", timeout=10) as response:
    print(response.status, response.read().decode().strip())
"""

TLS_HANDSHAKE = """
import socket, ssl, sys
context = ssl.create_default_context(cafile=sys.argv[1])
context.set_alpn_protocols(["h2", "http/1.1"])
with socket.create_connection(("127.0.0.1", 443), timeout=10) as raw:
    with context.wrap_socket(raw, server_hostname="localhost") as tls:
        print(tls.version(), tls.selected_alpn_protocol())
"""


def status_of(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, value in (line.split(":", 1) for line in lines)}


# --- the tests ----------------------------------------------------------------------------------------------


def test_image_config(image: Image):
    config = image.config
    user, group = config["User"].split(":")
    assert int(user) != 0 and int(group) != 0
    assert set(config["ExposedPorts"]) == {"443/tcp", "443/udp", "80/tcp", "9090/tcp"}
    assert config["Entrypoint"] == ["/usr/local/bin/quic-proxy"]
    assert config["Cmd"] == ["--config", CONFIG]
    assert config["StopSignal"] == "SIGTERM"
    assert config["Healthcheck"]["Test"][0] == "CMD"
    assert "/live" in " ".join(config["Healthcheck"]["Test"])


def test_image_files(container: str, release_bin: Path, image: Image):
    """The binary is the host's release build, the default config is deploy/proxy.yaml, both owned by root and
    read-only to the proxy's user, which exists with no shell."""
    done = run([tool("buildah"), "mount", container])
    assert done.returncode == 0, output(done)
    root = Path(done.stdout.strip())
    try:
        binary = root / "usr/local/bin/quic-proxy"
        assert hashlib.sha256(binary.read_bytes()).digest() == hashlib.sha256(release_bin.read_bytes()).digest()
        assert (binary.stat().st_uid, binary.stat().st_mode & 0o7777) == (0, 0o755)
        config = root / CONFIG.lstrip("/")
        assert config.read_bytes() == (ROOT / "deploy" / "proxy.yaml").read_bytes()
        assert (config.stat().st_uid, config.stat().st_mode & 0o7777) == (0, 0o644)
        for directory in ("etc/quic-proxy", "etc/quic-proxy/tls", "etc/quic-proxy/secrets"):
            assert (root / directory).stat().st_uid == 0 and (root / directory).stat().st_mode & 0o022 == 0
        users = {line.split(":")[2]: line.split(":") for line in (root / "etc/passwd").read_text().splitlines()}
        user = users[image.config["User"].split(":")[0]]
        assert user[0] == "quic-proxy" and user[6] == "/usr/sbin/nologin"
        # HEALTHCHECK relies on bash's /dev/tcp because the image has no HTTP client.
        assert (root / "bin/bash").is_file()
        assert not (root / "usr/bin/curl").exists() and not (root / "usr/bin/wget").exists()
    finally:
        run([tool("buildah"), "umount", container])


def test_proxy_starts_from_the_default_config_and_answers_live(container, image, netns, tls_mount, cert_pair):
    namespace = netns(unprivileged_low_ports=True)
    healthcheck = image.config["Healthcheck"]["Test"][1:]
    before = run(buildah_run(container, namespace, None, healthcheck))
    assert before.returncode != 0, "the health check passed with nothing listening"

    # The image's own ENTRYPOINT and CMD, unchanged.
    command = image.config["Entrypoint"] + image.config["Cmd"]
    proxy = Process("quic-proxy (image)", buildah_run(container, namespace, tls_mount, command), cwd=ROOT)
    try:
        started = proxy.wait_for_message("quic-proxy started", timeout=START_TIMEOUT)
        assert started["config"] == CONFIG, started
        listeners = ("HTTPS listener bound (h2, http/1.1)", "QUIC listener bound (h3)", "HTTP/1.1 listener bound")
        bound = {proxy.wait_for_message(message, timeout=START_TIMEOUT)["address"] for message in listeners}
        assert bound == {"[::]:443", "[::]:80"}, bound

        (pid,) = netns_pids(namespace)
        status = status_of(pid)
        assert status["Uid"].split() == [image.config["User"].split(":")[0]] * 4, status["Uid"]
        assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0, status

        for host in ("127.0.0.1", "[::1]"):
            live = in_netns(namespace, GET_LIVE, host)
            assert live.returncode == 0, output(live)
            assert live.stdout.split() == ["200", "live"], output(live)
        done = run(buildah_run(container, namespace, None, healthcheck))
        assert done.returncode == 0, output(done)

        # HTTPS on 443 presents the mounted certificate (it verifies against that certificate as CA).
        handshake = in_netns(namespace, TLS_HANDSHAKE, str(cert_pair[0]))
        assert handshake.returncode == 0, output(handshake)
        assert handshake.stdout.split() == ["TLSv1.3", "h2"], output(handshake)

        # The runtime delivers STOPSIGNAL to the container's PID 1, the proxy: it drains and exits 0.
        os.kill(pid, signal.SIGTERM)
        assert proxy.popen.wait(STOP_TIMEOUT) == 0, proxy.stderr()
        proxy.wait_for_message("shutting down: draining in-flight requests")
    finally:
        proxy.stop()


def test_low_ports_need_the_sysctl_not_a_capability(container, image, netns, tls_mount):
    """In a namespace that keeps the kernel's default (unprivileged ports from 1024), the image's user cannot
    bind 80: the image grants no capability, and the sysctl is what makes the ports work."""
    namespace = netns(unprivileged_low_ports=False)
    command = image.config["Entrypoint"] + image.config["Cmd"]
    done = run(buildah_run(container, namespace, tls_mount, command), timeout=START_TIMEOUT + STOP_TIMEOUT)
    assert done.returncode != 0, output(done)
    assert re.search(r"cannot bind .*:(80|443).*Permission denied", done.stderr), output(done)


def test_build_context_holds_only_what_the_stages_copy(release_bin, tmp_path):
    """.dockerignore, as buildah applies it: the context is the sources, the default config and the prebuilt
    binary; no .git, venvs, local certificates or other build output."""
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM scratch\nCOPY . /context/\n")
    iidfile = tmp_path / "iid"
    buildah = tool("buildah")
    done = run(
        [buildah, "bud", "--runtime", RUNTIME, "--pull=never", "--network", "none", "--iidfile", iidfile,
         "--file", dockerfile, ROOT],
        timeout=BUILD_TIMEOUT,
    )
    made = re.findall(r"Copying config sha256:([0-9a-f]{64})", done.stdout + done.stderr)
    try:
        assert done.returncode == 0, output(done)
        image_id = iidfile.read_text().strip().removeprefix("sha256:")
        name = f"quic-proxy-deploy-context-{os.getpid()}-{secrets.token_hex(4)}"
        assert run([buildah, "from", "--pull-never", "--name", name, image_id]).returncode == 0
        try:
            mounted = run([buildah, "mount", name])
            assert mounted.returncode == 0, output(mounted)
            context = Path(mounted.stdout.strip()) / "context"
            found = {str(p.relative_to(context)) for p in context.rglob("*") if not p.is_dir()}
            run([buildah, "umount", name])
        finally:
            run([buildah, "rm", name])
    finally:
        remove_images(made)
    expected = {"Cargo.toml", "Cargo.lock", "deploy/proxy.yaml", "target/release/quic-proxy"}
    expected |= {str(p.relative_to(ROOT)) for p in (ROOT / "src").rglob("*") if not p.is_dir()}
    assert found == expected, (found - expected, expected - found)


def test_check_without_arguments_reads_the_image_config(container, netns, tls_mount):
    """`docker run IMAGE check` replaces CMD; the proxy then finds /etc/quic-proxy/proxy.yaml by itself."""
    namespace = netns(unprivileged_low_ports=False)
    done = run(buildah_run(container, namespace, tls_mount, ["/usr/local/bin/quic-proxy", "check"]))
    assert done.returncode == 0, output(done)
    assert CONFIG in done.stdout, output(done)
