#!/usr/bin/env bash
# The admin console in a real browser (tests/console): Playwright from PyPI driving Debian's chromium, against
# the real quic-proxy binary and demo backends. Installs what the suite needs when it is missing (the chromium
# package, a venv with the pinned Playwright and pytest; Playwright never downloads a browser of its own),
# builds the debug binary, and runs the suite. Extra arguments go to pytest (e.g. -k drain, -x).
# Screenshots are left in tests/console/artifacts/.
#
#   CONSOLE_VENV      the venv to use (default .venv-console)
#   QUIC_PROXY_BIN    a binary to test instead of target/debug/quic-proxy (nothing is built then)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${CONSOLE_VENV:-.venv-console}
requirements=tests/console/requirements.txt
installed=$venv/.console-requirements  # the requirements file as of the last successful install

# The tests launch /usr/bin/chromium; Playwright is told never to fetch a browser, so only Debian's is used.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
if [ ! -x /usr/bin/chromium ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi

# Debian splits venv support into python3-venv; a clean machine may lack it, and a failed attempt leaves a
# venv without pip behind, so it is removed before trying again.
if [ ! -x "$venv/bin/pip" ]; then
  rm -rf "$venv"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    rm -rf "$venv"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
fi

# Installing takes a while even when nothing changed, so it runs only for new pins or a broken venv.
if ! cmp -s "$requirements" "$installed" || ! "$venv/bin/python" -c 'import playwright.sync_api, pytest' 2>/dev/null; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$installed"
fi

if [ -z "${QUIC_PROXY_BIN:-}" ]; then
  cargo build --quiet
fi

exec "$venv/bin/python" -m pytest -q tests/console "$@"
