# Sourced by the test scripts: a Python venv with a suite's pinned packages, made and filled only when needed.

# python_venv VENV MARKER IMPORTS FILE...
#   Makes the venv VENV if it has no pip, and installs the requirements FILEs into it unless they are the same
#   as at the last successful install (kept in VENV/MARKER) and `import IMPORTS` works. Debian splits venv
#   support into python3-venv, so a clean machine may need that package first; a failed attempt leaves a venv
#   without pip behind, so it is removed before trying again. Installing takes a while even when nothing
#   changed, which is why it is skipped when nothing did.
#   Every venv also gets tests/support on its path (a .pth file in its site-packages naming that folder), so
#   the suites import the fixtures they share, the quic_proxy_testing package, from the repository as it is:
#   no copy to go stale, no network, and the file is rewritten only when the folder moved.
python_venv() {
  local venv=$1 marker=$1/$2 imports=$3
  shift 3
  if [ ! -x "$venv/bin/pip" ]; then
    rm -rf "$venv"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
      rm -rf "$venv"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$venv"
    fi
  fi
  if ! cat "$@" | cmp -s - "$marker" || ! "$venv/bin/python" -c "import $imports" 2>/dev/null; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${@/#/-r}"
    cat "$@" >"$marker"
  fi
  local support pth
  support=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../tests/support" && pwd)
  pth=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/quic_proxy_testing.pth
  if [ "$(cat "$pth" 2>/dev/null)" != "$support" ]; then
    echo "$support" >"$pth"
  fi
}
