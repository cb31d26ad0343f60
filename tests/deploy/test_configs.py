"""Every configuration shipped for operators passes `quic-proxy check`: the examples, the image's default and
the Kubernetes base's. Those written for the /etc/quic-proxy layout are checked against a copy of that layout
(a real certificate, a stateless reset key, an admin token) made in a temporary directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers import CHECK_TIMEOUT, ETC, etc_layout, output, rebased, run
from quic_proxy_testing import ROOT

EXAMPLES = ROOT / "configs" / "examples"
EXAMPLE_NAMES = ["minimal.yaml", "routed-production.yaml", "high-volume.yaml", "automatic-https.yaml"]
LAYOUT_CONFIGS = [
    EXAMPLES / "routed-production.yaml",
    EXAMPLES / "high-volume.yaml",
    ROOT / "deploy" / "proxy.yaml",
    ROOT / "deploy" / "kubernetes" / "proxy.yaml",
]


def test_the_examples_are_the_documented_ones():
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(EXAMPLE_NAMES)


def checked(debug_bin: Path, config: Path, cwd: Path) -> str:
    done = run([debug_bin, "check", "--config", config], timeout=CHECK_TIMEOUT, cwd=cwd)
    assert done.returncode == 0, output(done)
    # `check` names the file it read.
    assert done.stdout.splitlines()[0].startswith(f"{config}: valid"), output(done)
    return done.stdout


def test_minimal_example_runs_from_a_checkout_with_make_certs(debug_bin, cert_pair, tmp_path):
    """minimal.yaml reads certs/server.crt and certs/server.key relative to the working directory, where
    `make certs` writes them; it is checked as it is, from such a directory."""
    (tmp_path / "certs").mkdir()
    shutil.copyfile(cert_pair[0], tmp_path / "certs" / "server.crt")
    shutil.copyfile(cert_pair[1], tmp_path / "certs" / "server.key")
    (tmp_path / "certs" / "server.key").chmod(0o600)
    summary = checked(debug_bin, EXAMPLES / "minimal.yaml", tmp_path)
    assert "https+quic [::]:443" in summary, summary


def test_automatic_https_example_names_its_hosts_and_lets_encrypt(debug_bin, tmp_path):
    """The ACME example needs no file at all to pass `check`: the CA, the names (the routes' hosts) and the
    listeners are all in the summary."""
    summary = checked(debug_bin, EXAMPLES / "automatic-https.yaml", tmp_path)
    assert "acme www.example.com api.example.com from https://acme-v02.api.letsencrypt.org/directory" in summary, summary


@pytest.mark.parametrize("config", LAYOUT_CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_layout_config_passes_check(debug_bin, cert_pair, tmp_path, config):
    assert ETC in config.read_text(), f"{config} reads nothing from {ETC}"
    etc = etc_layout(tmp_path / "etc", cert_pair)
    copy = rebased(config, etc, tmp_path)
    summary = checked(debug_bin, copy, tmp_path)
    assert f"(cert {etc}/tls/tls.crt)" in summary, summary


@pytest.mark.parametrize(
    "config",
    [EXAMPLES / "routed-production.yaml", EXAMPLES / "high-volume.yaml", ROOT / "deploy" / "kubernetes" / "proxy.yaml"],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_shared_instance_configs_read_their_secrets_from_files(debug_bin, cert_pair, tmp_path, config):
    """Configs for several instances take the stateless reset key and the admin token from mounted files,
    and `check` reads those files: a missing reset key file fails the check."""
    text = config.read_text()
    assert f'stateless_reset_key_file: "{ETC}secrets/stateless-reset-key"' in text
    assert f'token_file: "{ETC}secrets/admin-token"' in text
    etc = etc_layout(tmp_path / "etc", cert_pair)
    (etc / "secrets" / "stateless-reset-key").unlink()
    done = run([debug_bin, "check", "--config", rebased(config, etc, tmp_path)], timeout=CHECK_TIMEOUT, cwd=tmp_path)
    assert done.returncode == 64, output(done)
    assert "stateless-reset-key" in done.stderr, output(done)
