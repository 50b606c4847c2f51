#!/usr/bin/env bash
# Idempotent set-up of the project-local virtual environment (.venv).
# torch is installed first, alone, with the exact pin (a CPU wheel is on disk on this machine
# kind; any looser spec pulls GBs of CUDA wheels), then the project with constraints.txt.
# Re-runs are no-ops unless pyproject.toml, constraints.txt or this script changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV=.venv
# Every cache lives under .cache (Prefect creates its home without parents).
mkdir -p .cache/prefect .cache/hf .cache/logs
STAMP="$VENV/.mmmo-installed"
# Headless Chromium for the HTML-report test (Debian's package; needs root and apt).
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium (apt) for the report test" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "warning: chromium is missing and cannot be installed here; the report test fails" >&2
  fi
fi

want=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -x "$VENV/bin/mmmo" ]]; then
  exit 0
fi
echo "setting up $VENV (torch first, then the project; ~3 min on a fresh machine)" >&2
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
pip install "$(grep -E '^torch==' constraints.txt)"
pip install -c constraints.txt -e ".[test,dask]"
echo "$want" > "$STAMP"
echo "set-up done: $VENV" >&2
