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

# The tests launch /usr/bin/chromium; Playwright is told never to fetch a browser, so only Debian's is used.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
if [ ! -x /usr/bin/chromium ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi

. scripts/lib/venv.sh
python_venv "$venv" .console-requirements 'playwright.sync_api, pytest' "$requirements"

if [ -z "${QUIC_PROXY_BIN:-}" ]; then
  cargo build --quiet
fi

exec "$venv/bin/python" -m pytest -q tests/console "$@"
